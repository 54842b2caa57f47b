"""The soak's bookkeeping: samples in, a per-window report and a verdict out (pure, no I/O but
``/proc`` in :func:`rss_bytes`). ``test_soak.py`` runs the soak; ``test_soak_report.py`` shows
the verdict fails on growing memory, growing latency and a lost invocation.

Thresholds (the soak passes when all hold):

* **memory flat**: for every process (each processor, scheduler replica, the service, each NATS
  node, by name across restarts), the largest RSS sampled in the last window is at most the
  largest in its baseline window × ``RSS_FACTOR`` (1.2) + ``RSS_SLACK`` (10 MB). The baseline
  is the first window that starts after the warm-up (the retention period plus one sweep:
  until then the streams are still filling, and a NATS node's memory grows with what it
  stores, which is no leak) in which the nemesis did not restart that process (a process
  killed in its baseline window starts again from nothing there and climbs back to its
  plateau: the first 30-minute soak on the retention fix judged a NATS node's 163 MB
  plateau against the 125 MB of the window it was killed in), and that starts the warm-up
  after that process's own last restart (a process restarted during the warm-up climbs to its
  plateau in its own first minutes just as at the start: soak 3 judged a processor restarted at
  63 s by its 83 MB at 5-10 min, while its never-restarted peer held 109-110 MB from 5 min to
  the end, and the restarted one reached the same plateau later). A process without such a
  window is reported as not judged (restarted too often to show a trend). A run too short to
  have a window after the baseline does not judge memory;
* **latency flat**: the median end-to-end latency (submission to final state) of the
  invocations submitted in the last window is at most ``P50_FACTOR`` (1.5) × the first
  window's; p99 is reported, not judged (a fault every minute decides it);
* **nothing lost**: every acknowledged submission ended COMPLETED.

Where the NATS nodes run in network namespaces, every 30 s the soak also reads each node's Go
memory statistics from its pprof endpoint (``/debug/pprof/heap?debug=1``, see
:func:`go_memory`): the heap the server uses, the heap it has freed but the Go runtime still
holds, and what the runtime has returned to the system. They are reported per window beside the
RSS (not judged) and say whether a rising RSS is memory in use or memory the runtime keeps; the
last heap profile of each node in each window is kept in the run's folder.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

RSS_FACTOR = 1.2
RSS_SLACK = 10 * 1024 * 1024
P50_FACTOR = 1.5
MB = 1024 * 1024


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used so far (user + system), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size (``VmRSS``), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


GO_FIELDS = ("HeapInuse", "HeapIdle", "HeapReleased", "Sys")


def go_memory(profile: str) -> dict[str, int]:
    """The ``runtime.MemStats`` figures (:data:`GO_FIELDS`, bytes) at the end of a Go heap
    profile in text form (``/debug/pprof/heap?debug=1``); those missing are left out."""
    out: dict[str, int] = {}
    for line in profile.splitlines():
        key, sep, value = line.removeprefix("# ").partition(" = ")
        if sep and key in GO_FIELDS and value.strip().isdigit():
            out[key] = int(value)
    return out


@dataclass(frozen=True, slots=True)
class Done:
    """One finished invocation: when it was submitted (s since the soak began) and how long it
    took until its final state (s)."""

    submitted: float
    latency: float
    workflow: str = ""


@dataclass
class Window:
    index: int
    start: float
    end: float
    rss: dict[str, int] = field(default_factory=dict)  # process -> largest RSS sampled
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds used in it
    latencies: list[float] = field(default_factory=list)
    # stream -> bytes, messages, consumers
    sizes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    fault_times: list[float] = field(default_factory=list)  # seconds, one per fault
    go: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> last go_memory()

    @property
    def p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    @property
    def p99(self) -> float | None:
        return _percentile(self.latencies, 0.99)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def windows(
    length: float,
    window: float,
    rss: Iterable[tuple[float, Mapping[str, int]]],
    done: Iterable[Done],
    sizes: Iterable[tuple[float, Mapping[str, tuple[int, int, int]]]],
    faults: Iterable[tuple[float, str]] = (),
    cpu: Iterable[tuple[float, Mapping[str, tuple[int, float]]]] = (),
    go: Iterable[tuple[float, Mapping[str, Mapping[str, int]]]] = (),
) -> list[Window]:
    """Cut ``length`` seconds into windows of ``window`` seconds and sort the samples in: RSS
    samples and stream sizes by when they were taken (each window keeps its last sizes and
    each node's last Go memory figures),
    latencies by when the invocation was submitted, CPU time (``name -> (pid, seconds)``) as
    the growth between one sample of a process and its next one with the same PID."""
    count = max(1, round(length / window))
    out = [Window(k, k * window, min((k + 1) * window, length)) for k in range(count)]

    def at(t: float) -> Window:
        return out[min(count - 1, max(0, int(t // window)))]

    for t, sample in rss:
        w = at(t)
        for name, value in sample.items():
            w.rss[name] = max(w.rss.get(name, 0), value)
    for d in done:
        at(d.submitted).latencies.append(d.latency)
    for t, streams in sorted(sizes, key=lambda s: s[0]):
        at(t).sizes = dict(streams)
    for t, nodes in sorted(go, key=lambda s: s[0]):
        at(t).go.update({name: dict(figures) for name, figures in nodes.items()})
    for t, what in faults:
        at(t).faults.append(what)
        at(t).fault_times.append(t)
    last: dict[str, tuple[int, float]] = {}
    for t, sample in sorted(cpu, key=lambda s: s[0]):
        w = at(t)
        for name, (pid, used) in sample.items():
            before = last.get(name)
            if before is not None and before[0] == pid:
                w.cpu[name] = w.cpu.get(name, 0.0) + max(0.0, used - before[1])
            last[name] = (pid, used)
    return out


RESTARTS = ("kill_leader", "kill_processor", "kill_scheduler", "restart_service")
"""Faults (``"<kind> <process> ..."``) after which the named process starts from nothing."""


def baseline(ws: list[Window], warmup: float, name: str = "") -> Window | None:
    """The window ``name``'s memory is compared against: the first one, before the last,
    starting after the warm-up, and at least the warm-up after the last restart of that
    process, in which it was not restarted; None if there is none (without ``name``: the
    first window after the warm-up, if another follows it)."""
    steady = [w for w in ws[:-1] if w.start >= warmup]
    if not name:
        return steady[0] if steady else None
    restarts = [
        t for w in ws for t, f in zip(w.fault_times, w.faults, strict=True) if restarted(f, name)
    ]
    # Neither restarted in the window nor less than the warm-up before it.
    eligible = (w for w in steady if not any(w.start - warmup < t < w.end for t in restarts))
    return next(eligible, None)


def unjudged(ws: list[Window], warmup: float, ignore: Iterable[str] = ()) -> list[str]:
    """The processes whose memory the verdict cannot judge: no window after their own
    warm-up without a restart (see ``baseline``)."""
    if len(ws) < 2 or baseline(ws, warmup) is None:
        return []
    names = set(ws[-1].rss) - set(ignore)
    return sorted(n for n in names if baseline(ws, warmup, n) is None)


def restarted(fault: str, name: str) -> bool:
    """Whether the fault described by ``fault`` restarted the process ``name``."""
    kind, _, rest = fault.partition(" ")
    return kind in RESTARTS and rest.split(" ", 1)[0] == name


def verdict(
    ws: list[Window],
    *,
    submitted: int,
    completed: int,
    problems: Iterable[str] = (),
    warmup: float = 0.0,
    ignore: Iterable[str] = (),
) -> list[str]:
    """What breaks the thresholds (empty: the soak passed); processes in ``ignore`` are
    reported but not judged."""
    found = list(problems)
    if completed != submitted:
        found.append(
            f"{submitted - completed} of {submitted} submitted invocations did not complete"
        )
    if len(ws) < 2:
        found.append("fewer than two windows: nothing to compare")
        return found
    first, last = ws[0], ws[-1]
    judged = set(last.rss) if baseline(ws, warmup) is not None else set()
    for name in sorted(judged - set(ignore)):
        base = baseline(ws, warmup, name)
        if base is None:
            continue  # restarted too often to show a trend (see unjudged)
        before, after = base.rss.get(name), last.rss.get(name)
        if before is None or after is None:
            continue  # not running in one of them (a process killed at the edge)
        limit = before * RSS_FACTOR + RSS_SLACK
        if after > limit:
            found.append(
                f"{name}: RSS {after / MB:.1f} MB in the last window > {limit / MB:.1f} MB "
                f"({RSS_FACTOR} x {before / MB:.1f} MB + {RSS_SLACK // MB} MB, "
                f"window {_label(base).strip()})"
            )
    if first.p50 is None or last.p50 is None:
        found.append("no latencies in the first or the last window")
    elif last.p50 > P50_FACTOR * first.p50:
        found.append(
            f"p50 latency {last.p50:.3f}s in the last window > {P50_FACTOR} x "
            f"{first.p50:.3f}s (the first's)"
        )
    return found


def table(ws: list[Window]) -> list[str]:
    """The report: one block per window."""
    names = sorted({n for w in ws for n in w.rss})
    streams = sorted({s for w in ws for s in w.sizes})
    lines = [
        f"{'window':13} |  done | p50 s | p99 s | "
        + " | ".join(f"{n:>7}" for n in names)
        + "  (RSS MB, largest sample)",
    ]
    for w in ws:
        p50 = "-" if w.p50 is None else f"{w.p50:.3f}"
        p99 = "-" if w.p99 is None else f"{w.p99:.3f}"
        lines.append(
            f"{_label(w)} | {len(w.latencies):5d} | {p50:>5} | "
            f"{p99:>5} | "
            + " | ".join(f"{w.rss[n] / MB:7.1f}" if n in w.rss else f"{'-':>7}" for n in names)
        )
    lines.append("CPU per window (% of one core, averaged over the window):")
    for w in ws:
        seconds = max(w.end - w.start, 1e-9)
        cells = [f"{n} {100 * used / seconds:.0f}" for n, used in sorted(w.cpu.items())]
        total = 100 * sum(w.cpu.values()) / seconds
        lines.append(f"  {_label(w)}: {', '.join(cells) or '-'}; all {total:.0f}")
    nodes = sorted({n for w in ws for n in w.go})
    if nodes:
        lines.append(
            "NATS Go memory at the end of each window (MB): heap in use / freed, still held by "
            "the runtime / returned to the system"
        )
        for w in ws:
            cells = [f"{n} {_go_cell(w.go[n])}" for n in nodes if n in w.go]
            lines.append(f"  {_label(w)}: {'; '.join(cells) or '-'}")
    lines.append("stream sizes at the end of each window (MB / messages / consumers):")
    for s in streams:
        cells = [
            f"{w.sizes[s][0] / MB:7.2f} / {w.sizes[s][1]:6d} / {w.sizes[s][2]:3d}"
            if s in w.sizes
            else f"{'-':>22}"
            for w in ws
        ]
        lines.append(f"  {s:28} " + " | ".join(cells))
    # Each KV watch is an ordered consumer that is recreated after two missed heartbeats (1 s
    # apart), the old one left to its inactivity threshold: a count that keeps rising means
    # watches recreated faster than the server lets old ones go.
    lines.append(
        "consumers at the end of each window (all streams): "
        + ", ".join(str(sum(v[2] for v in w.sizes.values())) if w.sizes else "-" for w in ws)
    )
    lines.append("faults per window:")
    for w in ws:
        lines.append(f"  {_label(w)}: {', '.join(w.faults) or '-'}")
    return lines


def _go_cell(m: Mapping[str, int]) -> str:
    inuse, idle, released = (m.get(k) for k in ("HeapInuse", "HeapIdle", "HeapReleased"))
    if inuse is None or idle is None or released is None:
        return "-"
    return f"{inuse / MB:.1f} / {(idle - released) / MB:.1f} / {released / MB:.1f}"


def _label(w: Window) -> str:
    return f"{w.start / 60:4.1f}-{w.end / 60:<4.1f} min"
