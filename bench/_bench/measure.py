"""The measurements: (a) the NATS floor, (b)-(c) latency and throughput of two workflows,
(d) the many-step workflow, (e) processor memory, (f) a large value's round trip against the
object store's own put+get, and the bare path (the messages of (b) and (c) with no engine:
``bare.py``).

Each NATS setup gets a :class:`Setup`; each workflow scenario runs its own processors on a fresh
engine prefix (:meth:`Setup.scenario`). A part that fails is recorded and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.api import ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig

import durable_core
from durable_core import Client, EngineConfig
from durable_core.testing import ChildProcess

from . import bare
from .options import Options
from .procs import CpuMeter, progress, rss_mb
from .profile import Profiler

MESSAGE = b"x" * 128
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
SLEEP_FIGURES = ("rss_sleeping_mb", "rss_sleeping_inflight_mb")
SLEEP_SKIPPED = "skipped: ctx.sleep not available yet"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Figure:
    """Every run's value of one figure; the median is what is reported."""

    runs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None


@dataclass
class Setup:
    """One NATS setup under test, the processes serving it, and what was measured on it."""

    name: str
    urls: list[str]
    replicas: int
    nats_pids: dict[str, int]
    log_dir: Path
    opts: Options
    service: ChildProcess | None = None
    service_address: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    invoke_errors: Counter[str] = field(default_factory=Counter)

    def fig(self, key: str) -> Figure:
        return self.figures.setdefault(key, Figure())

    def detail(self, key: str, value: Any) -> None:
        self.details.setdefault(key, []).append(value)

    @contextlib.asynccontextmanager
    async def scenario(self, name: str) -> AsyncIterator[Scenario]:
        """Processors on a fresh engine prefix and a client of it, all stopped on exit."""
        prefix = "b" + uuid.uuid4().hex[:12]
        env = {
            "NATS_URL": ",".join(self.urls),
            "DURABLE_NATS_URL": ",".join(self.urls),
            "DURABLE_PREFIX": prefix,
            "DURABLE_REPLICAS": str(self.replicas),
            "DURABLE_DEFAULT_SERVICE_ADDRESS": self.service_address,
            "DURABLE_SHUTDOWN_GRACE": "3",
            "DURABLE_SHARDS": str(self.opts.shards),
        }
        procs: list[ChildProcess] = []
        client: Client | None = None
        try:
            for i in range(self.opts.processors):
                proc_name = f"{self.name}-{name}-p{i + 1}"
                args = ["-m", "durable_processor", "--processor-id", proc_name]
                procs.append(ChildProcess(proc_name, args, env, self.log_dir))
                if i == 0:  # the first creates the streams, so the others only bind them
                    await asyncio.to_thread(procs[0].wait_log, "consuming", 30)
            for proc in procs[1:]:
                await asyncio.to_thread(proc.wait_log, "consuming", 30)
            # shards only when asked: an A/B's base may predate the setting (bench/ab.py
            # --harness head runs this harness on the base's code)
            sharded = {"shards": self.opts.shards} if self.opts.shards > 1 else {}
            engine = EngineConfig(prefix=prefix, replicas=self.replicas, **sharded)
            client = await Client.connect(self.urls, engine=engine)
            yield Scenario(self, name, prefix, client, procs)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            for proc in procs:
                await asyncio.to_thread(proc.stop, 15)


@dataclass
class Scenario:
    """Processors serving one engine prefix, and the client that drives them."""

    setup: Setup
    name: str
    prefix: str
    client: Client
    processors: list[ChildProcess]

    def cpu_meter(self) -> CpuMeter:
        pids = {"client": os.getpid(), **self.setup.nats_pids}
        if self.setup.service is not None:
            pids["service"] = self.setup.service.pid
        for proc in self.processors:
            pids[proc.name.rpartition("-")[2]] = proc.pid  # p1, p2, ...
        return CpuMeter(pids)

    async def invoke(self, workflow: str, args: Any, timeout: float = 60.0) -> Any:
        """Invoke and wait; the output, or an exception if it did not complete."""
        result = await self.client.invoke(workflow, args, timeout=timeout)
        if result.status.value != "completed":
            raise RuntimeError(f"{workflow} ended {result.status.value}: {result.failure}")
        return result.output

    async def try_invoke(self, workflow: str, args: Any) -> bool:
        """Invoke and wait; count an error instead of raising it."""
        try:
            await self.invoke(workflow, args)
            return True
        except Exception as e:  # noqa: BLE001 - counted and reported with the figures
            message = _HEX_ID.sub("<id>", str(e))[:100]
            self.setup.invoke_errors[f"{workflow}: {type(e).__name__}: {message}"] += 1
            return False


# -- (a) the floor ------------------------------------------------------------------------------


async def measure_floor(setup: Setup) -> None:
    """Publish+ack latency and pipelined publish rate on a scratch stream, R times each."""
    opts = setup.opts
    nc = await nats.connect(servers=setup.urls, name="durable-bench-floor")
    try:
        js = nc.jetstream(timeout=10.0, publish_async_max_pending=1000)
        tag = uuid.uuid4().hex[:10]
        stream, subject = f"BENCH_FLOOR_{tag}", f"benchfloor.{tag}"
        config = StreamConfig(
            name=stream, subjects=[subject], num_replicas=setup.replicas, storage=StorageType.FILE
        )
        await retry_placement(lambda: js.add_stream(config))
        for _ in range(50):  # warm the routes, the stream leader and this client
            await js.publish(subject, MESSAGE)
        for _ in range(opts.repeat):
            meter = CpuMeter(setup.nats_pids)
            latencies = []
            deadline = time.perf_counter() + opts.floor_seconds
            while (t0 := time.perf_counter()) < deadline:
                await js.publish(subject, MESSAGE)
                latencies.append((time.perf_counter() - t0) * 1000)
            setup.fig("floor_publish_p50_ms").runs.append(percentile(latencies, 50))
            setup.fig("floor_publish_p99_ms").runs.append(percentile(latencies, 99))
            sync_cpu = sum(meter.used().values())
            meter = CpuMeter(setup.nats_pids)
            t0 = time.perf_counter()
            futures = [await js.publish_async(subject, MESSAGE) for _ in range(opts.floor_messages)]
            await asyncio.gather(*futures)
            rate = opts.floor_messages / (time.perf_counter() - t0)
            setup.fig("floor_pipelined_per_s").runs.append(rate)
            setup.detail(
                "floor_runs",
                {
                    "sync_publishes": len(latencies),
                    "sync_nats_cpu_ms_per_publish": round(1000 * sync_cpu / len(latencies), 3),
                    "pipelined_per_s": round(rate),
                    "pipelined_nats_cpu_ms_per_publish": round(
                        1000 * sum(meter.used().values()) / opts.floor_messages, 3
                    ),
                },
            )
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def bare_path(setup: Setup) -> None:
    """The hello's and the 3-step's messages with no engine (``bare.py``): sequential p50,
    then completions/s and Python CPU per invocation (this process and the bare processor)
    with ``--inflight`` in flight, R times each, in the floor's windows (it varies little):
    the design's own floor on this machine."""
    opts = setup.opts
    tag = uuid.uuid4().hex[:10]
    n = bare.names(tag)
    nc = await nats.connect(servers=setup.urls, name="durable-bench-bare")
    proc: ChildProcess | None = None
    try:
        js = nc.jetstream(timeout=10.0)
        file, r = StorageType.FILE, setup.replicas
        commands = StreamConfig(
            name=n["commands"],
            subjects=[n["command_subject"]],
            retention=RetentionPolicy.WORK_QUEUE,
            num_replicas=r,
            storage=file,
        )
        journal = StreamConfig(
            name=n["journal"],
            subjects=[n["journal_subjects"]],
            num_replicas=r,
            storage=file,
            allow_direct=True,
            allow_atomic=r > 1,
        )
        await retry_placement(lambda: js.add_stream(commands))
        await retry_placement(lambda: js.add_stream(journal))
        await retry_placement(lambda: js.create_key_value(bare.state_bucket(tag, r)))
        script = bare.__file__
        urls = ",".join(setup.urls)
        args = [script, urls, setup.service_address, tag, str(r), str(opts.inflight)]
        proc = ChildProcess(f"{setup.name}-bare", args, {}, setup.log_dir)
        await asyncio.to_thread(proc.wait_log, "consuming", 30)
        waiting: dict[str, asyncio.Future[None]] = {}

        async def heard(msg: nats.aio.msg.Msg) -> None:
            future = waiting.pop(msg.data.decode(), None)
            if future is not None and not future.done():
                future.set_result(None)

        reply = nc.new_inbox()
        await nc.subscribe(reply, cb=heard)
        count = iter(range(10**9))

        async def invoke(kind: str) -> bool:
            iid = f"{kind}-{next(count)}"
            waiting[iid] = done = asyncio.get_running_loop().create_future()
            headers = {"Nats-Msg-Id": iid, "Bare-Id": iid, "Bare-Kind": kind, "Bare-Reply": reply}
            await js.publish(n["command_subject"], b"{}", headers=headers)
            await asyncio.wait_for(done, 30)
            return True

        for kind in ("hello", "order") * 10:  # warm up
            await invoke(kind)
        for _ in range(opts.repeat):
            for kind in ("hello", "order"):
                attempt = functools.partial(_ignore_index, invoke, kind)
                latencies = await timed_sequential(attempt, opts.floor_seconds)
                setup.fig(f"bare_{kind}_p50_ms").runs.append(percentile(latencies, 50))
                meter = CpuMeter({"client": os.getpid(), "p1": proc.pid, **setup.nats_pids})
                completed = len(await timed_closed_loop(attempt, opts.floor_seconds, opts.inflight))
                per = cpu_per_invocation(meter.used(), completed)
                setup.fig(f"bare_{kind}_per_s").runs.append(completed / opts.floor_seconds)
                setup.fig(f"bare_{kind}_cpu_python_ms").runs.append(per["python"])
                progress(
                    f"{setup.name} bare {kind}: p50 {percentile(latencies, 50):.2f} ms, "
                    f"{completed / opts.floor_seconds:.0f}/s, Python CPU {per['python']:.2f} ms"
                )
        await js.publish(n["command_subject"], b"", headers={"Bare-Id": "-", "Bare-Kind": "stop"})
        await asyncio.to_thread(proc.proc.wait, 15)
        for stream in (n["commands"], n["journal"], f"KV_{n['bucket']}"):
            await js.delete_stream(stream)
    finally:
        if proc is not None:
            await asyncio.to_thread(proc.stop, 5)
        await nc.close()


def _ignore_index(invoke: Callable[[str], Awaitable[bool]], kind: str, _i: int) -> Awaitable[bool]:
    return invoke(kind)


async def retry_placement(fn: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """A fresh cluster may refuse to place a stream for a moment: retry that, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# -- (b), (c) latency and throughput ------------------------------------------------------------


def hello_args(i: int) -> dict[str, str]:
    return {"name": f"bench-{i}"}


def order_args(i: int) -> dict[str, Any]:
    return {"order_id": f"o-{uuid.uuid4().hex[:8]}-{i}", "amount_cents": 1250}


async def timed_sequential(
    attempt: Callable[[int], Awaitable[bool]], seconds: float
) -> list[float]:
    """Call ``attempt(i)`` one at a time for ``seconds``; each success's latency in ms."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while (t0 := time.perf_counter()) < deadline:
        if await attempt(i):
            latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    return latencies


async def timed_closed_loop(
    attempt: Callable[[int], Awaitable[bool]], seconds: float, inflight: int
) -> list[float]:
    """Keep ``inflight`` calls of ``attempt`` going for ``seconds``: the latencies in ms of the
    successes that ended inside the window (those still running at its end are awaited,
    bounded, but not counted)."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        while (t0 := time.perf_counter()) < deadline:
            ok = await attempt(next(counter))
            if ok and (t1 := time.perf_counter()) <= deadline:
                latencies.append((t1 - t0) * 1000)

    await asyncio.wait_for(asyncio.gather(*(loop() for _ in range(inflight))), seconds + 90)
    return latencies


async def sequential(
    sc: Scenario, workflow: str, make_args: Callable[[int], Any], seconds: float
) -> list[float]:
    """Invoke and wait, one at a time, for ``seconds``; each success's latency in ms."""
    latencies = await timed_sequential(lambda i: sc.try_invoke(workflow, make_args(i)), seconds)
    if not latencies:
        raise RuntimeError(f"no {workflow} invocation completed: {dict(sc.setup.invoke_errors)}")
    return latencies


async def throughput(
    sc: Scenario, workflow: str, make_args: Callable[[int], Any], seconds: float, inflight: int
) -> tuple[float, list[float]]:
    """Keep ``inflight`` invocations going for ``seconds``: completions/s and their latencies
    (:func:`timed_closed_loop`)."""
    latencies = await timed_closed_loop(
        lambda i: sc.try_invoke(workflow, make_args(i)), seconds, inflight
    )
    if not latencies:
        raise RuntimeError(f"no {workflow} invocation completed: {dict(sc.setup.invoke_errors)}")
    return len(latencies) / seconds, latencies


def cpu_per_invocation(cpu: dict[str, float], done: int) -> dict[str, float]:
    """CPU ms per invocation: each process, and the sums for Python (the client and the
    processors), NATS (every node) and all of them."""
    per = {k: 1000 * v / max(1, done) for k, v in cpu.items()}
    python = sum(v for k, v in per.items() if k == "client" or re.fullmatch(r"p\d+", k))
    nats_ = sum(v for k, v in per.items() if k.startswith("nats"))
    return {**per, "python": python, "nats": nats_, "all": sum(per.values())}


async def at_rate(
    sc: Scenario, workflow: str, make_args: Callable[[int], Any], rate: float, seconds: float
) -> tuple[dict[str, float], list[float], int]:
    """Start invocations at a fixed ``rate`` for ``seconds`` (open loop, whatever the earlier
    ones are doing, at most 1,024 at once) and wait for them all: CPU per completed invocation
    (:func:`cpu_per_invocation`), their latencies in ms, and how many started late (the cap
    was reached: the rate was beyond what the setup holds).

    The CPU window runs to 0.3 s after the last result, so the final state writes and acks
    that follow a result are counted too. Both sides of an A/B do the same work here at the
    same pace: "CPU per invocation at the same throughput".
    """
    total = max(1, round(rate * seconds))
    slots = asyncio.Semaphore(1024)
    latencies: list[float] = []
    late = 0

    async def one(i: int) -> None:
        try:
            t0 = time.perf_counter()
            if await sc.try_invoke(workflow, make_args(i)):
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    meter = sc.cpu_meter()
    start = time.perf_counter()
    while len(tasks) < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while len(tasks) < due:
            if slots.locked():
                late += 1
            await slots.acquire()
            tasks.append(asyncio.create_task(one(10**6 + len(tasks))))
        await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 90)
    await asyncio.sleep(0.3)
    if not latencies:
        raise RuntimeError(f"no {workflow} invocation completed: {dict(sc.setup.invoke_errors)}")
    return cpu_per_invocation(meter.used(), len(latencies)), latencies, late


async def latency_and_throughput(
    sc: Scenario, workflow: str, make_args: Callable[[int], Any], key: str, profile: bool = False
) -> None:
    """Sequential p50/p99 R times, then completions/s with K in flight R times."""
    setup, opts = sc.setup, sc.setup.opts
    for i in range(10):  # warm up: channels, streams' leaders, caches
        await sc.invoke(workflow, make_args(i))
    await asyncio.gather(*(sc.invoke(workflow, make_args(i)) for i in range(opts.inflight)))
    for r in range(opts.repeat):
        lat = await sequential(sc, workflow, make_args, opts.seconds)
        setup.fig(f"{key}_seq_p50_ms").runs.append(percentile(lat, 50))
        setup.fig(f"{key}_seq_p99_ms").runs.append(percentile(lat, 99))
        progress(f"{setup.name} {workflow} sequential #{r + 1}: p50 {percentile(lat, 50):.2f} ms")
    for r in range(opts.repeat):
        meter = sc.cpu_meter()
        profiler = (
            Profiler.start(sc.setup.name, sc.name, sc.processors[0].pid, opts)
            if (profile and r == 0)
            else None
        )
        try:
            rate, lat = await throughput(sc, workflow, make_args, opts.seconds, opts.inflight)
        finally:
            if profiler is not None:
                setup.details.setdefault("profile", {})[workflow] = profiler.finish()
        cpu = meter.used()
        per = cpu_per_invocation(cpu, len(lat))
        setup.fig(f"{key}_per_s").runs.append(rate)
        setup.fig(f"{key}_cpu_python_ms").runs.append(per["python"])
        setup.detail(
            f"{key}_throughput_runs",
            {
                "per_s": round(rate, 1),
                "completed": len(lat),
                "p50_ms": round(percentile(lat, 50), 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "cpu_cores": meter.shares(),
                "cpu_ms_per_invocation": {k: round(per[k], 2) for k in cpu},
                "profiled": profiler is not None,
            },
        )
        progress(
            f"{setup.name} {workflow} x{opts.inflight} #{r + 1}: {rate:.0f}/s; "
            f"cpu cores {meter.shares()}"
        )
    if not opts.rate:
        return
    fixed = opts.rate if key == "hello" else opts.rate / 2
    for r in range(opts.repeat):
        per, lat, late = await at_rate(sc, workflow, make_args, fixed, opts.seconds)
        for what in ("python", "nats", "all"):
            setup.fig(f"{key}_at_rate_cpu_{what}_ms").runs.append(per[what])
        setup.fig(f"{key}_at_rate_p50_ms").runs.append(percentile(lat, 50))
        setup.detail(
            f"{key}_at_rate_runs",
            {
                "rate_per_s": fixed,
                "completed": len(lat),
                "started_late": late,
                "p50_ms": round(percentile(lat, 50), 2),
                "p99_ms": round(percentile(lat, 99), 2),
                "cpu_ms_per_invocation": {k: round(v, 3) for k, v in per.items()},
            },
        )
        progress(
            f"{setup.name} {workflow} at {fixed:g}/s #{r + 1}: CPU per invocation "
            f"python {per['python']:.2f} ms, nats {per['nats']:.2f} ms, all {per['all']:.2f} ms"
            + (f"; {late} started late (rate beyond capacity)" if late else "")
        )


# -- (d) many steps -----------------------------------------------------------------------------


async def many_steps(sc: Scenario) -> None:
    """Wall time of the many-step workflow, per step, R times."""
    setup, opts = sc.setup, sc.setup.opts
    await sc.invoke("many_steps", {"steps": 10})
    for r in range(opts.repeat):
        meter = sc.cpu_meter()
        t0 = time.perf_counter()
        out = await sc.invoke("many_steps", {"steps": opts.steps}, timeout=600)
        wall = time.perf_counter() - t0
        if out != {"steps": opts.steps, "sum": opts.steps}:
            raise RuntimeError(f"many_steps returned {out!r}")
        setup.fig("many_steps_per_step_ms").runs.append(wall * 1000 / opts.steps)
        cpu = meter.used()
        setup.detail(
            "many_steps_runs",
            {
                "steps": opts.steps,
                "wall_s": round(wall, 3),
                "cpu_cores": meter.shares(),
                "cpu_ms_per_step": {k: round(1000 * v / opts.steps, 3) for k, v in cpu.items()},
            },
        )
        progress(f"{setup.name} many_steps #{r + 1}: {opts.steps} steps in {wall:.2f}s")


# -- (e) memory ---------------------------------------------------------------------------------


async def sample_rss(procs: list[ChildProcess], seconds: float, interval: float = 0.25) -> float:
    """Peak RSS of the largest processor over ``seconds``, in MB."""
    peak = 0.0
    deadline = time.monotonic() + seconds
    while True:
        peak = max(peak, *(rss_mb(p.pid) for p in procs))
        if time.monotonic() >= deadline:
            return peak
        await asyncio.sleep(interval)


async def rss_under_load(sc: Scenario, inflight: int, seconds: float) -> float:
    """Peak processor RSS while ``inflight`` hello invocations keep going for ``seconds``."""
    load = asyncio.create_task(throughput(sc, "hello_workflow", hello_args, seconds, inflight))
    peak = 0.0
    while not load.done():
        peak = max(peak, await sample_rss(sc.processors, 0.0))
        await asyncio.sleep(0.25)
    await load
    return peak


async def memory(sc: Scenario) -> None:
    """Processor RSS idle, with 100 in flight, and with many sleepers (if ctx.sleep exists)."""
    setup, opts = sc.setup, sc.setup.opts
    window = max(2.0, opts.seconds / 2)
    for i in range(10):
        await sc.invoke("hello_workflow", hello_args(i))
    await asyncio.sleep(1.0)
    for _ in range(opts.repeat):
        setup.fig("rss_idle_mb").runs.append(await sample_rss(sc.processors, 1.0))
        peak = await rss_under_load(sc, opts.memory_inflight, window)
        setup.fig("rss_inflight_mb").runs.append(peak)
    progress(
        f"{setup.name} memory: idle {setup.fig('rss_idle_mb').median:.0f} MB, "
        f"{opts.memory_inflight} in flight {setup.fig('rss_inflight_mb').median:.0f} MB"
    )
    if not hasattr(durable_core.Context, "sleep"):
        for key in SLEEP_FIGURES:
            setup.fig(key).note = SLEEP_SKIPPED
        return

    t0 = time.perf_counter()
    gate = asyncio.Semaphore(256)

    async def submit(i: int) -> str:
        async with gate:
            return await sc.client.invoke_async("sleeper", {"seconds": 3600}, id=f"sleeper-{i}")

    ids = await asyncio.gather(*(submit(i) for i in range(opts.sleepers)))
    submitted = time.perf_counter() - t0
    settled, pending = await wait_consumer_idle(setup, sc.prefix, opts.settle_timeout)
    sample = ids[:: max(1, len(ids) // 20)]
    statuses = Counter([(await sc.client.get_result(i)).status.value for i in sample])
    setup.details["sleepers"] = {
        "count": opts.sleepers,
        "submit_s": round(submitted, 2),
        "settle_s": round(time.perf_counter() - t0 - submitted, 2),
        "settled": settled,
        "consumer": pending,
        "sampled_statuses": dict(statuses),
    }
    if not settled or set(statuses) & {"failed", "completed"}:
        raise RuntimeError(f"the sleepers are not all asleep: {setup.details['sleepers']}")
    for _ in range(opts.repeat):
        setup.fig("rss_sleeping_mb").runs.append(await sample_rss(sc.processors, 1.0))
        peak = await rss_under_load(sc, opts.memory_inflight, window)
        setup.fig("rss_sleeping_inflight_mb").runs.append(peak)
    progress(f"{setup.name} memory with {opts.sleepers} sleepers: {peak:.0f} MB")


async def wait_consumer_idle(
    setup: Setup, prefix: str, timeout: float
) -> tuple[bool, dict[str, int]]:
    """Wait (bounded) until the processors hold no command: every sleeper has suspended."""
    nc = await nats.connect(servers=setup.urls, name="durable-bench-probe")
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            # One consumer per workflow and route (issue 16): sum them.
            pending = {"num_pending": 0, "num_ack_pending": 0}
            for info in await js.consumers_info(f"{prefix.upper()}_COMMANDS"):
                if (info.config.metadata or {}).get("group") == "processor":
                    pending["num_pending"] += info.num_pending or 0
                    pending["num_ack_pending"] += info.num_ack_pending or 0
            if not any(pending.values()):
                return True, pending
            if time.monotonic() > deadline:
                return False, pending
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


# -- (f) large values ---------------------------------------------------------------------------


class _Zeros:
    """``size`` bytes read in pieces (a file-like source that holds nothing in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = bytes(1024 * 1024)

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.block[:n] if n <= len(self.block) else bytes(n)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Sink:
    """Where nats-py's ObjectStore.get writes (counts; its own get would gather it all)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


async def object_store_floor(setup: Setup, size: int) -> float:
    """MB/s of one put and one get of ``size`` bytes with nats-py's object store, R3 like the
    engine's bucket, from this process (seconds of the put plus the get)."""
    nc = await nats.connect(servers=setup.urls, name="durable-bench-objects")
    try:
        js = nc.jetstream(timeout=30.0)
        bucket = f"bench_obj_{uuid.uuid4().hex[:10]}"
        config = ObjectStoreConfig(bucket=bucket, replicas=setup.replicas, storage=StorageType.FILE)
        obs = await retry_placement(lambda: js.create_object_store(bucket, config=config))
        t0 = time.perf_counter()
        await obs.put("value", _Zeros(size))  # type: ignore[arg-type]
        sink = _Sink()
        await obs.get("value", writeinto=sink)  # type: ignore[arg-type]
        took = time.perf_counter() - t0
        if sink.size != size:
            raise RuntimeError(f"object store get returned {sink.size} of {size} bytes")
        await js.delete_object_store(bucket)
        return size / 1e6 / took
    finally:
        await nc.close()


async def payload_round_trip(sc: Scenario) -> None:
    """(f) ``echo_blob``: a ``payload_mb`` argument streamed up by the client, returned by the
    workflow (shared, not copied), read back by the client in chunks: MB/s against the object
    store's own put+get of the same size, measured right before each run."""
    opts = sc.setup.opts
    size = opts.payload_mb * 1024 * 1024
    await sc.invoke("echo_blob", _Zeros(1024 * 1024))  # warm the processor and the bucket
    for _ in range(opts.repeat):
        floor = await object_store_floor(sc.setup, size)
        t0 = time.perf_counter()
        blob = await sc.invoke("echo_blob", _Zeros(size), timeout=600)
        got = 0
        async for chunk in blob.chunks():
            got += len(chunk)
        took = time.perf_counter() - t0
        if got != size:
            raise RuntimeError(f"echo_blob returned {got} of {size} bytes")
        rate = size / 1e6 / took
        sc.setup.fig("floor_object_mb_per_s").runs.append(floor)
        sc.setup.fig("payload_mb_per_s").runs.append(rate)
        sc.setup.detail("payload_runs", {"mb": opts.payload_mb, "floor": floor, "engine": rate})


# -- everything on one setup --------------------------------------------------------------------


async def run_setup(setup: Setup) -> None:
    """(a) to (e) on one NATS setup; a part that fails is recorded and the rest go on."""
    opts = setup.opts

    async def part(name: str, fn: Callable[[], Awaitable[None]]) -> None:
        if name not in opts.parts and not (name == "many_steps" and "steps" in opts.parts):
            return
        progress(f"{setup.name}: {name}")
        try:
            await fn()
        except Exception as e:  # noqa: BLE001 - report it, measure the rest
            setup.errors.append(f"{name}: {type(e).__name__}: {e}")
            progress(f"{setup.name}: {name} FAILED: {type(e).__name__}: {e}")

    def scenario(name: str, fn: Callable[[Scenario], Awaitable[None]]) -> Any:
        async def go() -> None:
            async with setup.scenario(name) as sc:
                await fn(sc)

        return go

    await part("floor", lambda: measure_floor(setup))
    await part("bare", lambda: bare_path(setup))
    await part(
        "hello",
        scenario(
            "hello",
            lambda sc: latency_and_throughput(
                sc, "hello_workflow", hello_args, "hello", opts.profile
            ),
        ),
    )
    await part(
        "order",
        scenario(
            "order",
            lambda sc: latency_and_throughput(
                sc, "order_processing", order_args, "order", opts.profile
            ),
        ),
    )
    await part("many_steps", scenario("steps", many_steps))
    await part("memory", scenario("memory", memory))
    await part("payload", scenario("payload", payload_round_trip))
    setup.fig("order_per_step_ms").runs.extend(v / 3 for v in setup.fig("order_seq_p50_ms").runs)
