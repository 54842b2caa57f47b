"""The soak (issue 14, item 3): ``make soak`` runs the chaos system for 30 minutes at a steady
rate with a fault every minute, and judges whether memory and latency stay flat.

The system is the chaos suite's (``system.py``: a 3-node cluster in network namespaces where
permitted, 3 processors with a 5 s ack wait, 2 scheduler replicas, the OrderService with 50 ms
per call); the workload is the chaos mix without the BaseException-swallowing workflow
(``SOAK_MIX``), offered at ``SOAK_RATE`` per second (20); the nemesis draws one fault of every
kind per round (``nemesis.KINDS``), one every ``SOAK_FAULT_EVERY`` seconds (60). Finished
invocations expire after 4 minutes (the scheduler's retention, swept every 30 s), so the
streams and buckets reach a steady size too instead of growing for the 7 days of the default
retention.

Every 10 s the RSS of every process is sampled (``/proc/<pid>/status``), every 30 s every
stream's size and (nodes in namespaces only) each NATS node's Go memory statistics from its
pprof endpoint; each acknowledged invocation is read until it has finished (before it expires)
and its end-to-end latency noted. The report (printed and written to the run's folder) gives,
per window of ``SOAK_WINDOW`` seconds (300; a quarter of the run when shorter than 20
minutes), the p50/p99 latency of the invocations submitted in it, the largest RSS of each
process and the stream sizes at its end; ``soak.py`` states the thresholds.

Not part of ``make test``: it runs only when ``SOAK_MINUTES`` is set (``make soak`` sets 30;
``make soak SOAK_MINUTES=2`` is a quick check of the machinery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from durable_core import Client, EngineConfig
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.testing._probe import http_get

from . import soak, workload
from .nemesis import KINDS, Nemesis
from .run_settings import SETTINGS, ChaosCluster
from .runlog import RunLog
from .system import System

MINUTES = float(os.environ.get("SOAK_MINUTES") or 0)
RATE = float(os.environ.get("SOAK_RATE") or 20)
FAULT_EVERY = float(os.environ.get("SOAK_FAULT_EVERY") or 60)
WINDOW = float(os.environ.get("SOAK_WINDOW") or (300 if MINUTES >= 20 else MINUTES * 15))
RETENTION = 240  # seconds finished invocations are kept (the scheduler's retention)
SWEEP = 30  # seconds between retention sweeps
SOAK_MIX = {"order": 0.60, "keyed": 0.15, "waits": 0.15, "careless": 0.10}

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.skipif(not MINUTES, reason="the soak runs only with SOAK_MINUTES set (make soak)"),
]

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {pb.STATUS_COMPLETED, pb.STATUS_FAILED, pb.STATUS_CANCELLED}


@pytest.mark.timeout(MINUTES * 60 + 900)
async def test_soak(chaos_cluster: ChaosCluster, capsys: pytest.CaptureFixture[str]) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_dir = REPO / "test-artifacts" / "soak" / f"{stamp}-seed{SETTINGS.seed}"
    run_dir.mkdir(parents=True)
    say = RunLog(run_dir / "soak.log", "soak", capsys)

    cluster = chaos_cluster.cluster
    prefix = "soak" + uuid.uuid4().hex[:8]
    engine = EngineConfig(prefix=prefix, replicas=3)
    system = System(
        cluster,
        prefix,
        run_dir,
        run_dir / "order-service-calls.jsonl",
        service_delay_ms=50,
        ack_wait=5,
        scheduler_env={
            "DURABLE_RETENTION": str(RETENTION),
            "DURABLE_RETENTION_SWEEP": str(SWEEP),
        },
        idempotency_store=SETTINGS.idempotency_store,
    )
    transport = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    client = await Client.connect(cluster.url, engine=engine)
    try:
        await asyncio.to_thread(system.start)
        say(
            f"seed={SETTINGS.seed}: {MINUTES:g} min at {RATE:g}/s of {SOAK_MIX}, a fault every "
            f"{FAULT_EVERY:g}s, windows of {WINDOW:g}s; retention {RETENTION}s; logs in {run_dir}"
        )
        report, problems = await _soak(chaos_cluster, system, client, transport, say)
    finally:
        await asyncio.to_thread(system.stop)
        await client.close()
        await transport.close()
    (run_dir / "soak-report.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    for line in report:
        say(line)
    say.close()
    assert not problems, "\n".join(problems) + f"\n\nreport and logs: {run_dir}"


async def _soak(
    cc: ChaosCluster,
    system: System,
    client: Client,
    transport: Transport,
    say: Callable[[str], None],
) -> tuple[list[str], list[str]]:
    length = MINUTES * 60
    planned = workload.plan(int(RATE * length) + 1, random.Random(SETTINGS.seed + 1), SOAK_MIX)
    load = workload.Workload(client, planned, RATE, log=say)
    nemesis = Nemesis.seeded(SETTINGS.seed, cc, system, transport.names, kinds=KINDS, log=say)
    t0, t0_wall = time.monotonic(), time.time()
    stop = asyncio.Event()
    rss: list[tuple[float, dict[str, int]]] = []
    cpu: list[tuple[float, dict[str, tuple[int, float]]]] = []
    sizes: list[tuple[float, dict[str, tuple[int, int, int]]]] = []
    go: list[tuple[float, dict[str, dict[str, int]]]] = []
    prof_urls: dict[str, str] = getattr(cc.cluster, "prof_urls", {})  # netns clusters only
    loads: list[tuple[float, float]] = []
    done: dict[str, soak.Done] = {}
    expired: dict[str, str] = {}  # finished and expired before the reader saw them: status
    unsuccessful: set[str] = set()
    problems: list[str] = []

    async def sample_rss() -> None:
        while not stop.is_set():
            pids = dict(system.pids())
            pids |= {n.name: n.pid for n in cc.cluster.nodes if n.pid is not None}
            pids["client"] = os.getpid()  # this process: the workload and the reader
            now = time.monotonic() - t0
            sample = {name: b for name, pid in pids.items() if (b := soak.rss_bytes(pid))}
            rss.append((now, sample))
            used = {n: (pid, c) for n, pid in pids.items() if (c := soak.cpu_seconds(pid))}
            cpu.append((now, used))
            loads.append((now, os.getloadavg()[0]))
            await _pause(stop, 10)

    async def sample_sizes() -> None:
        while not stop.is_set():
            try:
                sizes.append((time.monotonic() - t0, await _stream_sizes(transport)))
            except Exception as e:  # noqa: BLE001 - a fault in progress: the next sample
                say(f"stream sizes not read: {type(e).__name__}: {e}")
            await _pause(stop, 30)

    async def sample_go() -> None:
        """Each node's Go memory figures; the last heap profile of each window kept."""
        while not stop.is_set():
            now = time.monotonic() - t0
            figures = {}
            for name, url in prof_urls.items():
                got = await asyncio.to_thread(http_get, f"{url}/debug/pprof/heap?debug=1")
                if got is None or got[0] != 200:
                    continue  # the node is down, paused or cut off: the next sample
                text = got[1].decode("utf-8", "replace")
                figures[name] = soak.go_memory(text)
                window = int(now // WINDOW)
                (system.log_dir / f"nats-heap-{name}-window{window + 1}.txt").write_text(text)
            go.append((now, figures))
            await _pause(stop, 30)

    async def reap(until: asyncio.Event) -> None:
        """Read each acknowledged, unfinished invocation until it has finished."""
        sem = asyncio.Semaphore(16)

        async def look(iid: str) -> None:
            async with sem:
                try:
                    rec = await transport.get_state(iid)
                    # Gone: expired before it was seen finished (its note says how it
                    # ended), or never stored at all (that stays "never finished").
                    note = await transport.expiry_note(iid) if rec is None else None
                except Exception:  # noqa: BLE001 - NATS recovering: next round
                    return
            if note is not None:
                expired[iid] = str(note.get("status", ""))
                if expired[iid] != "completed":
                    unsuccessful.add(iid)
                    problems.append(f"{iid}: expired as {expired[iid]}")
                done[iid] = soak.Done(-1.0, -1.0, str(note.get("workflow", "")))
                return
            if rec is None or rec.state.status not in TERMINAL:
                return
            st = rec.state
            if st.status != pb.STATUS_COMPLETED:
                unsuccessful.add(iid)
                problems.append(f"{iid}: {pb.Status.Name(st.status)} {st.failure.message}")
            done[iid] = soak.Done(
                st.created_at_ms / 1000 - t0_wall,
                (st.updated_at_ms - st.created_at_ms) / 1000,
                st.workflow,
            )

        while True:
            pending = [i for i in load.submitted if i not in done]
            await asyncio.gather(*(look(i) for i in pending))
            if until.is_set() and all(i in done for i in load.submitted):
                return
            await asyncio.sleep(2.0)

    offered_all = asyncio.Event()
    reaper = asyncio.create_task(reap(offered_all))
    samplers = [asyncio.create_task(f()) for f in (sample_rss, sample_sizes, sample_go)]
    submitting = asyncio.create_task(load.run())
    faults = asyncio.create_task(nemesis.run_every(FAULT_EVERY, stop))
    await _pause(asyncio.Event(), length)
    load.stop()
    stop.set()
    await faults
    await submitting
    offered_all.set()
    say(
        f"offered {len(load.submitted)} acknowledged ({len(load.unacknowledged)} not); "
        f"{len(nemesis.faults)} faults {nemesis.counts()}; draining"
    )
    try:
        await asyncio.wait_for(reaper, 240)
    except TimeoutError:
        left = [i for i in load.submitted if i not in done]
        problems.append(f"{len(left)} never finished")
        for iid in left[:50]:  # what each one was doing: lost, stuck, or just slow?
            try:
                rec = await transport.get_state(iid)
            except Exception as e:  # noqa: BLE001 - report what is known
                problems.append(f"  {iid}: state not read ({type(e).__name__})")
                continue
            problems.append(f"  {iid}: " + (_describe(rec.state) if rec else "no state"))
    for task in samplers:
        task.cancel()
    problems += [f"{i}: submission never acknowledged" for i in load.unacknowledged]
    problems += [f"{a}: never resolved ({why})" for a, why in load.unresolved.items()]
    problems += [f"process died on its own: {d}" for d in system.exited()]
    problems += [f"recovery: {p}" for p in nemesis.recovery_problems]

    fault_log = [(f.started - t0, f"{f.kind} {f.target}") for f in nemesis.faults]
    finished = [d for d in done.values() if d.latency >= 0]
    ws = soak.windows(length, WINDOW, rss, finished, sizes, fault_log, cpu, go)
    completed = sum(1 for i in load.submitted if i in done and i not in unsuccessful)
    warmup = RETENTION + SWEEP
    failed = soak.verdict(
        ws,
        submitted=len(load.submitted),
        completed=completed,
        problems=problems,
        warmup=warmup,
        ignore=("client",),
    )
    base = soak.baseline(ws, warmup)  # the first after the warm-up (a process may have a later one)
    load_avg = {w.index: [v for t, v in loads if w.start <= t < w.end] for w in ws}
    report = [
        f"soak report: seed {SETTINGS.seed}, {MINUTES:g} min at {RATE:g}/s, one fault every "
        f"{FAULT_EVERY:g}s ({len(nemesis.faults)}: {nemesis.counts()})",
        f"  submitted {len(load.submitted)}, completed {completed}, unacknowledged "
        f"{len(load.unacknowledged)}, awakeables resolved {len(load.resolved)}; "
        f"{len(expired)} expired before the reader saw them finished (no latency)",
        *soak.table(ws),
        "load average (1 min) per window: "
        + ", ".join(f"{sum(v) / len(v):.1f}" if v else "-" for v in load_avg.values()),
        f"thresholds: RSS of each process in the last window <= {soak.RSS_FACTOR} x its RSS in "
        + (
            f"the first window after the {warmup} s warm-up ({base.start / 60:.0f}-"
            f"{base.end / 60:.0f} min)"
            if base is not None
            else "(not judged: no window after the warm-up but the last)"
        )
        + f" + {soak.RSS_SLACK // soak.MB} MB; p50 last <= {soak.P50_FACTOR} x first; "
        "every acknowledged submission completed ('client', this process, is not judged)",
        *(
            [f"memory not judged (restarted within the warm-up of every window): {', '.join(u)}"]
            if (u := soak.unjudged(ws, warmup, ignore=("client",)))
            else []
        ),
        f"result: {'PASS' if not failed else 'FAIL'}",
        *(f"  {p}" for p in failed),
    ]
    (system.log_dir / "soak-samples.json").write_text(
        json.dumps(
            {
                "rss": rss,
                "go": go,
                "sizes": sizes,
                "loads": loads,
                "faults": fault_log,
            }
        ),
        encoding="utf-8",
    )
    return report, failed


def _describe(st: pb.ExecutionState) -> str:
    """An unfinished invocation's state, in a line."""
    return (
        f"{pb.Status.Name(st.status)} on {st.processor or '-'}, updated "
        f"{time.time() - st.updated_at_ms / 1000:.0f}s ago, journal {st.journal_length}"
        + (f", waiting for {st.waiting_for}" if st.waiting_for else "")
    )


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _stream_sizes(t: Transport) -> dict[str, tuple[int, int, int]]:
    """Bytes, messages and consumers of every stream of the account (the engine's streams
    and buckets)."""
    resp = await t.nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)
    out = {}
    for name in sorted(json.loads(resp.data).get("streams") or []):
        info = json.loads((await t.nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)).data)
        state = info.get("state") or {}
        out[name] = (
            int(state.get("bytes", 0)),
            int(state.get("messages", 0)),
            int(state.get("consumer_count", 0)),
        )
    return out
