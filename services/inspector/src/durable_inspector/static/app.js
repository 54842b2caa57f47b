// durable inspector: what htmx does not do for us. htmx (static/vendor) keeps each page's live
// region fresh from the event stream; this file posts the actions and forms to the JSON API and
// keeps a few things across a swap (open <details>, the header badge, the workflow filter).
(function () {
  "use strict";

  var body = document.body;

  // -- live updates (htmx + its SSE extension) ---------------------------------------------------

  function setLive(on) {
    var live = document.getElementById("live");
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.textContent = on ? "live" : "reconnecting…";
  }
  document.addEventListener("htmx:sseOpen", function () { setLive(true); });
  document.addEventListener("htmx:sseError", function () { setLive(false); });

  // What a swap would lose: which <details> are open, what is typed into a form, and focus.
  var kept = null;
  document.addEventListener("htmx:beforeSwap", function (e) {
    var region = e.detail.target;
    if (region.id !== "live-region") return;
    kept = { open: {}, values: {}, focus: null };
    region.querySelectorAll("details[data-key]").forEach(function (d) {
      kept.open[d.dataset.key] = d.open;
    });
    region.querySelectorAll("form[id] input[name], form[id] textarea[name]").forEach(function (el) {
      if (el.value) kept.values[el.form.id + "/" + el.name] = el.value;
    });
    var active = document.activeElement;
    if (active && region.contains(active) && active.form && active.form.id && active.name) {
      kept.focus = active.form.id + "/" + active.name;
    }
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    var region = e.detail.target;
    if (region.id !== "live-region" || !kept) return;
    region.querySelectorAll("details[data-key]").forEach(function (d) {
      if (d.dataset.key in kept.open) d.open = kept.open[d.dataset.key];
    });
    region.querySelectorAll("form[id] input[name], form[id] textarea[name]").forEach(function (el) {
      var key = el.form.id + "/" + el.name;
      if (key in kept.values) el.value = kept.values[key];
      if (key === kept.focus) el.focus();
    });
    region.dataset.refreshes = String(Number(region.dataset.refreshes || 0) + 1);
    var badge = document.getElementById("status-badge");
    var fresh = region.querySelector("#facts .badge");
    if (badge && fresh) badge.innerHTML = fresh.outerHTML;
    addWorkflows();
  });

  // The workflow filter lists the workflows the index knows; new ones arrive with the region.
  function addWorkflows() {
    var data = document.getElementById("workflow-names");
    var select = document.getElementById("f-workflow");
    var suggestions = document.getElementById("known-workflows");
    if (!data || !select) return;
    var have = {};
    Array.prototype.forEach.call(select.options, function (o) { have[o.value] = true; });
    JSON.parse(data.dataset.workflows || "[]").forEach(function (name) {
      if (have[name]) return;
      select.add(new Option(name, name));
      if (suggestions) suggestions.appendChild(new Option(name, name));
    });
  }

  // -- talking to the API --------------------------------------------------------------------

  function show(el, ok, text) {
    if (!el) return;
    el.className = "message " + (ok ? "ok" : "error");
    el.textContent = text;
  }

  function describe(status, data) {
    if (data && data.error) return data.error.replace(/_/g, " ") + " (" + status + "): " + data.detail;
    return "HTTP " + status;
  }

  function send(method, url, payload) {
    return fetch(url, {
      method: method,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: payload === undefined ? "" : JSON.stringify(payload),
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) {
        return { status: r.status, ok: r.ok, data: data };
      });
    });
  }

  function jsonField(form, name, message) {
    var text = (form.elements[name] && form.elements[name].value || "").trim();
    if (!text) return { ok: true, value: undefined };
    try { return { ok: true, value: JSON.parse(text) }; }
    catch (err) { show(message, false, name + " is not valid JSON: " + err.message); return { ok: false }; }
  }

  function refresh() {
    var region = document.getElementById("live-region");
    if (region && window.htmx) window.htmx.trigger(region, "refresh");
  }

  // Lifecycle buttons (offered only where the transition is legal; the region re-renders them).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-action]");
    if (!button) return;
    var action = button.dataset.action;
    var message = document.getElementById("action-message");
    var payload;
    if (action === "fork") payload = { from_step: Number(document.getElementById("fork-step").value) };
    if (action === "cancel" && !window.confirm("Cancel this execution?")) return;
    button.disabled = true;
    show(message, true, action + "…");
    send("POST", "/api/executions/" + encodeURIComponent(body.dataset.id) + "/" + action, payload)
      .then(function (res) {
        if (!res.ok) { show(message, false, action + " failed — " + describe(res.status, res.data)); return; }
        var extra = res.data && res.data.new_invocation_id;
        show(message, true, action + " accepted" + (extra ? ": new execution " + extra : ""));
        if (extra) window.location.href = "/executions/" + encodeURIComponent(extra);
      })
      .catch(function (err) { show(message, false, action + " failed — " + err); })
      .finally(function () { button.disabled = false; });
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.querySelector(".message");
    var submitter = event.submitter;
    var request = null;
    if (form.id === "invoke-form") {
      var args = jsonField(form, "args", message);
      if (!args.ok) { event.preventDefault(); return; }
      var start = { workflow: form.elements.workflow.value.trim() };
      if (args.value !== undefined) start.args = args.value;
      if (form.elements.id.value.trim()) start.id = form.elements.id.value.trim();
      request = ["POST", "/api/executions", start, function (data) {
        message.className = "message ok";
        message.textContent = "started ";
        var link = document.createElement("a");
        link.href = "/executions/" + encodeURIComponent(data.invocation_id);
        link.textContent = data.invocation_id;
        message.append(link);
      }];
    } else if (form.classList.contains("awakeable-form")) {
      var id = form.dataset.awakeable;
      if (submitter && submitter.value === "reject") {
        var reason = form.elements.reason.value.trim() || "rejected";
        request = ["POST", "/api/awakeables/" + encodeURIComponent(id) + "/reject", { reason: reason }];
      } else {
        var payload = jsonField(form, "payload", message);
        if (!payload.ok) { event.preventDefault(); return; }
        request = ["POST", "/api/awakeables/" + encodeURIComponent(id) + "/resolve",
          payload.value === undefined ? {} : { payload: payload.value }];
      }
    } else if (form.classList.contains("signal-form")) {
      // The name goes in the body: in a path, "/" would split it and "." or ".." would vanish.
      // Taken as typed (a name may start or end with a space).
      var signal = { name: form.dataset.signal || form.elements.name.value };
      var signalPayload = jsonField(form, "payload", message);
      if (!signalPayload.ok) { event.preventDefault(); return; }
      if (signalPayload.value !== undefined) signal.payload = signalPayload.value;
      request = ["POST", "/api/executions/" + encodeURIComponent(body.dataset.id) + "/signals", signal];
    } else if (form.id === "schedule-form") {
      var schedule = { name: form.elements.name.value.trim(), workflow: form.elements.workflow.value.trim() };
      var cron = form.elements.cron.value.trim(), every = form.elements.every.value.trim();
      if (cron) schedule.cron = cron;
      if (every) schedule.every = Number(every);
      if (form.elements.timezone.value.trim()) schedule.timezone = form.elements.timezone.value.trim();
      schedule.overlap = form.elements.overlap.value;
      var scheduleArgs = jsonField(form, "args", message);
      if (!scheduleArgs.ok) { event.preventDefault(); return; }
      if (scheduleArgs.value !== undefined) schedule.args = scheduleArgs.value;
      request = ["POST", "/api/schedules", schedule, function () {
        show(message, true, "schedule " + schedule.name + " created");
        form.reset();
        refresh();
      }];
    }
    if (!request) return;
    event.preventDefault();
    show(message, true, "sending…");
    send(request[0], request[1], request[2]).then(function (res) {
      if (!res.ok) { show(message, false, describe(res.status, res.data)); return; }
      if (request[3]) request[3](res.data); else show(message, true, "accepted");
    }).catch(function (err) { show(message, false, String(err)); });
  });

  // Schedule rows: pause, resume, delete.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-schedule-action]");
    if (!button) return;
    var row = button.closest("[data-schedule]");
    var name = row.dataset.schedule, action = button.dataset.scheduleAction;
    var message = document.getElementById("schedules-message");
    if (action === "delete" && !window.confirm("Delete schedule " + name + "?")) return;
    var url = "/api/schedules/" + encodeURIComponent(name) + (action === "delete" ? "" : "/" + action);
    button.disabled = true;
    send(action === "delete" ? "DELETE" : "POST", url).then(function (res) {
      if (!res.ok) { show(message, false, action + " failed — " + describe(res.status, res.data)); return; }
      show(message, true, "schedule " + name + ": " + action + " done");
      refresh();
    }).finally(function () { button.disabled = false; });
  });
})();
