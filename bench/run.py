"""Benchmarks of the engine against the floor NATS sets, measured in the same run.

``make bench`` (= ``.venv/bin/python bench/run.py $(BENCH_ARGS)``) starts an embedded single
node, the same with fsync on every write (``durable dev --fsync``; parts a to c only) and a
3-node R3 cluster, and on each measures:

(a) the floor: JetStream publish+ack latency (one at a time) and pipelined publishes/s
    (``publish_async``, at most 1,000 in flight), 128-byte messages, from this process, on a
    scratch stream with the engine's replicas;
(b) ``hello_workflow`` (one gRPC step): sequential invoke-and-wait p50/p99, then completions/s
    with ``--inflight`` invocations in flight;
(c) ``order_processing`` (three gRPC steps), the same two ways;
(d) ``many_steps`` (1,000 cheap ``ctx.run`` steps): cost per step against the 3-step
    workflow's (its sequential p50 / 3);
(e) processor memory (VmRSS) idle, with 100 in flight, and with 10,000 sleeping workflows
    (needs ``ctx.sleep``; recorded as skipped without it);
(f) a 100 MB value's round trip through the engine (``echo_blob``: streamed up as the argument,
    returned, read back in chunks) in MB/s, against nats-py's object store put+get of the same
    size from this process (issue 18);
and the bare path (``_bench/bare.py``): the messages and calls of (b) and (c) with no engine,
sequential p50, completions/s and Python CPU per invocation; the table ends with the engine
over it.

Workflows run in real processor subprocesses (``python -m durable_processor``, a fresh engine
prefix per scenario) calling the real hello_service subprocess; this process is the client.
Each figure is measured ``--repeat`` times and the median reported beside its ratio to the
floor. The table goes to stdout, progress to stderr, everything (with per-component CPU per
invocation) to ``bench/results/<UTC timestamp>.json``. Only processes started here are signalled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench.measure import Setup, run_setup
from _bench.options import Options
from _bench.procs import progress
from _bench.report import table, write_json

from durable_core.testing import NatsCluster, NatsServer, ServiceProcess, stop_all_children


SETUPS = ("single", "single-fsync", "cluster")


async def bench(opts: Options, log_dir: Path, setups: list[Setup]) -> None:
    """Measure each NATS setup in turn, appending it to ``setups`` as it starts."""
    for name in SETUPS:
        if opts.only not in (None, name):
            continue
        progress(f"starting {name} NATS")
        server: Any
        setup_opts = opts
        if name.startswith("single"):
            fsync = name == "single-fsync"
            server = NatsServer(name=f"bench-{name}", sync_always=fsync)
            server = await asyncio.to_thread(server.start)
            urls, replicas, pids = [server.url], 1, {"nats": server.pid}
            if fsync:  # what fsync costs shows in the floor and the short workflows
                parts = tuple(p for p in opts.parts if p in ("floor", "bare", "hello", "order"))
                if not parts:
                    continue
                setup_opts = dataclasses.replace(opts, parts=parts)
        else:
            server = await asyncio.to_thread(NatsCluster(backend="process").start)
            urls, replicas = server.urls, 3
            pids = {f"nats-{n.name}": n.pid for n in server.nodes}
        setup = Setup(name, urls, replicas, pids, log_dir, setup_opts)
        setups.append(setup)
        try:
            setup.service = ServiceProcess(log_dir, name=f"{name}-service")
            setup.service_address = setup.service.address
            await asyncio.to_thread(setup.service.wait_ready, 30)
            await run_setup(setup)
        finally:
            if setup.service is not None:
                await asyncio.to_thread(setup.service.stop, 15)
            await asyncio.to_thread(server.stop)


def main(argv: Sequence[str] | None = None) -> int:
    opts = Options.parse(argv, description=__doc__.split("\n\n")[0])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so finally blocks and atexit run
    started, t0 = datetime.now(UTC), time.monotonic()
    load_at_start = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="durable-bench-"))
    progress(f"logs in {log_dir}; options {opts.to_json()}")
    setups: list[Setup] = []
    failed = True
    try:
        asyncio.run(asyncio.wait_for(bench(opts, log_dir, setups), opts.max_minutes * 60))
        failed = any(s.errors for s in setups)
    except TimeoutError:
        progress(f"aborted: the run took longer than {opts.max_minutes:.0f} minutes")
    finally:
        stop_all_children()
    elapsed = time.monotonic() - t0
    for setup in setups:
        print("\n".join(table(setup)) + "\n")
    print(f"elapsed: {elapsed:.0f} s")
    print(f"results: {write_json(opts, setups, started, elapsed, load_at_start)}")
    if failed:
        print(f"logs kept in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
