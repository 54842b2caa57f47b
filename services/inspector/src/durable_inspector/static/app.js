// durable inspector: live updates and actions. No framework, no external assets.
//
// Each page has one live region (#live-region) rendered by the server. On every server-sent event
// the region is fetched again (data-fragment-url) and swapped in, so the HTML has one renderer.
(function () {
  "use strict";

  var body = document.body;
  var region = document.getElementById("live-region");
  var live = document.getElementById("live");
  var pending = null;

  function setLive(on) {
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.textContent = on ? "live" : "reconnecting…";
  }

  function refresh() {
    if (!region || pending) return;
    // Coalesce bursts of events into one fetch.
    pending = setTimeout(function () {
      fetch(region.dataset.fragmentUrl, { headers: { Accept: "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          pending = null;
          if (html === null) return;
          var open = {};
          region.querySelectorAll("details[data-key]").forEach(function (d) {
            open[d.dataset.key] = d.open;
          });
          region.innerHTML = html;
          region.querySelectorAll("details[data-key]").forEach(function (d) {
            if (d.dataset.key in open) d.open = open[d.dataset.key];
          });
          region.dataset.refreshes = String(Number(region.dataset.refreshes || 0) + 1);
          addWorkflows();
          var badge = document.getElementById("status-badge");
          var fresh = region.querySelector("#facts .badge");
          if (badge && fresh) badge.innerHTML = fresh.outerHTML;
        })
        .catch(function () { pending = null; });
    }, 150);
  }

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

  function connect() {
    if (!window.EventSource || !region) return;
    var url = "/api/events" + (body.dataset.id ? "?id=" + encodeURIComponent(body.dataset.id) : "");
    var es = new EventSource(url);
    es.onopen = function () { setLive(true); };
    es.onerror = function () { setLive(false); }; // EventSource reconnects by itself
    ["hello", "execution", "deleted", "ready", "reset", "steps"].forEach(function (name) {
      es.addEventListener(name, refresh);
    });
  }

  function show(el, ok, text) {
    el.className = "message " + (ok ? "ok" : "error");
    el.textContent = text;
  }

  function describe(status, data) {
    if (data && data.error) return data.error.replace(/_/g, " ") + " (" + status + "): " + data.detail;
    return "HTTP " + status;
  }

  function post(url, payload) {
    return fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: payload === undefined ? "" : JSON.stringify(payload),
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) {
        return { status: r.status, ok: r.ok, data: data };
      });
    });
  }

  // Lifecycle buttons on the execution page.
  document.querySelectorAll("[data-action]").forEach(function (button) {
    button.addEventListener("click", function () {
      var action = button.dataset.action;
      var message = document.getElementById("action-message");
      var payload;
      if (action === "fork") {
        payload = { from_step: Number(document.getElementById("fork-step").value) };
      }
      if (action === "cancel" && !window.confirm("Cancel this execution?")) return;
      button.disabled = true;
      show(message, true, action + "…");
      post("/api/executions/" + encodeURIComponent(body.dataset.id) + "/" + action, payload)
        .then(function (res) {
          if (res.ok) {
            var extra = res.data && res.data.new_invocation_id;
            show(message, true, action + " accepted" + (extra ? ": new execution " + extra : ""));
            if (extra) window.location.href = "/executions/" + encodeURIComponent(extra);
          } else {
            show(message, false, action + " failed — " + describe(res.status, res.data));
          }
        })
        .catch(function (err) { show(message, false, action + " failed — " + err); })
        .finally(function () { button.disabled = false; });
    });
  });

  // "Start an execution" on the list page.
  var form = document.getElementById("invoke-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var message = document.getElementById("invoke-message");
      var payload = { workflow: form.elements.workflow.value.trim() };
      var args = form.elements.args.value.trim();
      if (args) {
        try { payload.args = JSON.parse(args); }
        catch (err) { show(message, false, "arguments are not valid JSON: " + err.message); return; }
      }
      if (form.elements.id.value.trim()) payload.id = form.elements.id.value.trim();
      post("/api/executions", payload).then(function (res) {
        if (res.ok) {
          message.className = "message ok";
          message.innerHTML = "";
          var link = document.createElement("a");
          link.href = "/executions/" + encodeURIComponent(res.data.invocation_id);
          link.textContent = res.data.invocation_id;
          message.append("started ", link);
        } else {
          show(message, false, describe(res.status, res.data));
        }
      });
    });
  }

  connect();
})();
