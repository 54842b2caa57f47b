"""Issue 8, parts 1 and 2: N order workflows under crashes, pauses, partitions; then the checker.

A client offers N ``order_processing`` invocations (Validate, Charge, Ship against the example
OrderService) at a steady rate, and a schedule starts one every 2 s through the scheduler
replicas, while the nemesis (``nemesis.py``, seeded) kills processors, leader nodes, scheduler
replicas and the service, pauses nodes and partitions them. After the last fault the test waits
(bounded) for everything to finish and hands the final state, the journals and the service's
own records to the checker (``checker.py``), which must find nothing lost, nothing done twice,
no committed step executed again, one effect per idempotency key and journals that replay.

``make test`` runs N = 100 (about 1.5 to 2 minutes); ``make chaos`` runs N = 1,000 (7 to 9
minutes). ``CHAOS_SEED`` replays a fault schedule; see ``run_settings.py`` for the other settings.
Each run writes its process logs, the service's call records and the summary to
``test-artifacts/chaos/<time>-seed<seed>-*/``, removed when the run passes (``CHAOS_KEEP=1``
keeps it) and completed with ``evidence.json`` (state, journal, calls, commands and log lines of
every invocation a violation names) and ``code.txt`` (the code that ran) when it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from durable_core import Client, EngineConfig
from durable_core import schedules as sched
from durable_core._transport import Transport
from durable_core.config import NatsConfig

from . import checker
from .nemesis import Nemesis
from .run_settings import SETTINGS, ChaosCluster
from .system import System
from .workload import Workload

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

SCHEDULE = "chaostick"
REPO = Path(__file__).resolve().parents[2]


def _artifacts(seed: int) -> Path:
    """test-artifacts/chaos/<time>-seed<seed>: the run's logs, kept when it fails."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = REPO / "test-artifacts" / "chaos" / f"{stamp}-seed{seed}-{uuid.uuid4().hex[:4]}"
    path.mkdir(parents=True)
    return path


def _code_version() -> str:
    def git(*args: str) -> str:
        cp = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        return cp.stdout.strip()

    return f"HEAD {git('rev-parse', 'HEAD')}\n{git('status', '--short')}\n\n{git('diff', 'HEAD')}"


@pytest.mark.timeout(SETTINGS.timeout)
async def test_nothing_lost_or_done_twice_under_chaos(
    chaos_cluster: ChaosCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    s = SETTINGS
    run_dir = _artifacts(s.seed)
    (run_dir / "code.txt").write_text(_code_version(), encoding="utf-8")
    log_file = (run_dir / "chaos.log").open("a", encoding="utf-8")
    began = time.monotonic()

    def say(message: str) -> None:
        line = f"[chaos {time.monotonic() - began:6.1f}s] {message}"
        log_file.write(line + "\n")
        log_file.flush()
        with capsys.disabled():
            print(line, flush=True)

    cluster = chaos_cluster.cluster
    say(
        f"seed={s.seed} (CHAOS_SEED={s.seed} replays this schedule) N={s.n} "
        f"offered over {s.duration:.0f}s; cluster {cluster.url}; logs in {run_dir}"
    )
    prefix = "chaos" + uuid.uuid4().hex[:8]
    engine = EngineConfig(prefix=prefix, replicas=3)
    record_file = run_dir / "order-service-calls.jsonl"
    system = System(cluster, prefix, run_dir, record_file, service_delay_ms=200, ack_wait=5)
    # The streams are created as the processors will (R3); clients only use them.
    transport = await Transport.connect(NatsConfig.from_url(cluster.url), engine, create=True)
    client = await Client.connect(cluster.url, engine=engine)
    try:
        await asyncio.to_thread(system.start)
        say("service, 3 processors and 2 scheduler replicas running")
        await sched.create_schedule(
            transport,
            SCHEDULE,
            "order_processing",
            {"order_id": "tick", "amount_cents": 1},
            every=timedelta(seconds=2),
            overlap="allow",
        )
        report, summary = await _run(chaos_cluster, system, client, transport, say)
    finally:
        await asyncio.to_thread(system.stop)
        await client.close()
        await transport.close()
        log_file.close()
    if report.ok and not os.environ.get("CHAOS_KEEP"):
        shutil.rmtree(run_dir, ignore_errors=True)
    assert report.ok, f"{report.describe()}\n\n{summary}\n\nlogs and evidence: {run_dir}"


async def _run(
    cc: ChaosCluster,
    system: System,
    client: Client,
    transport: Transport,
    say: Callable[[str], None],
) -> tuple[checker.Report, str]:
    settings = SETTINGS
    names = transport.names
    nemesis = Nemesis(
        random.Random(settings.seed),
        cc.cluster,
        system,
        [names.command_stream, names.journal_stream, f"KV_{names.state_bucket}"],
        net=cc.net,
        no_partition_reason=cc.no_partition_reason,
        log=say,
    )
    workload = Workload(client, settings.n, settings.n / settings.duration, log=say)
    tap = checker.CommandTap()
    await tap.start(transport)
    await asyncio.gather(workload.run(), nemesis.run(workload.offered))
    say(
        f"workload: {len(workload.submitted)} acknowledged, {len(workload.unacknowledged)} "
        f"not, {workload.retries} needed retries; nemesis: {nemesis.counts()}"
    )
    await sched.pause_schedule(transport, SCHEDULE)

    # Drain: every invocation finishes, bounded; measured from the end of the last fault.
    states = await transport.list_states()
    ids = set(workload.submitted) | {
        st.invocation_id for st in states if st.invocation_id.startswith(f"{SCHEDULE}-")
    }
    unfinished, _ = await checker.wait_finished(transport, ids, settings.drain_timeout)
    drained_at = time.monotonic()
    drain = drained_at - nemesis.last_healed
    say(f"drain: {len(unfinished)} unfinished, {drain:.1f}s after the last fault ended")

    # Read the final state once every replica of every stream is current.
    await nemesis.wait_whole("the final check")
    await asyncio.sleep(1.0)  # calls abandoned by a dying run land in the record file
    obs = checker.Observation(
        submitted=dict(workload.submitted),
        states=await checker.read_states(transport, ids),
        journals=await checker.read_journals(transport),
        calls=checker.read_calls(system.record_file),
        unacknowledged=set(workload.unacknowledged),
        scheduled_prefix=f"{SCHEDULE}-",
    )
    await tap.stop()
    report = checker.check(obs)
    await checker.replay_all(obs, report)
    if not report.ok:
        evidence = checker.evidence(obs, checker.involved(report), system.log_dir, tap.seen)
        path = system.log_dir / "evidence.json"
        path.write_text(json.dumps(evidence, indent=1), encoding="utf-8")
        say(f"evidence of {len(evidence)} invocations in {path}")
    died = system.exited()
    if died:
        report.effect_violations.extend(f"process died on its own: {d}" for d in died)
    if workload.unacknowledged:
        report.lost.extend(f"{i}: submission never acknowledged" for i in workload.unacknowledged)

    summary = "\n".join(
        [
            "chaos summary",
            f"  seed                     {settings.seed}",
            f"  N offered                {settings.n} over {settings.duration:.0f}s",
            f"  submitted (acknowledged) {report.submitted}",
            f"  started by the scheduler {report.scheduled}",
            f"  completed                {report.completed}",
            f"  duplicates               {len(report.duplicates)}",
            f"  lost                     {len(report.lost)}",
            f"  stuck                    {len(report.stuck)}",
            f"  failed                   {len(report.failed)}",
            f"  re-executed steps        {len(report.reexecuted)}",
            f"  effect violations        {len(report.effect_violations)}",
            f"  replayed journals        {report.replayed} ({len(report.replay_failures)} failed)",
            f"  service calls            {report.calls} ({report.retried_keys} keys more than "
            "once, answered the same by the service)",
            f"  faults done              {len(nemesis.faults)} {nemesis.counts()}"
            + (
                f"; partitions skipped: {cc.no_partition_reason}"
                if nemesis.skipped["partition"]
                else ""
            ),
            f"  recovery problems        {len(nemesis.recovery_problems)}",
            f"  drain after last fault   {drain:.1f}s"
            + (f" ({len(unfinished)} still unfinished)" if unfinished else ""),
            "  fault timeline:",
            *(f"    {f.describe(nemesis.t0)}" for f in nemesis.faults),
            *(f"  recovery: {p}" for p in nemesis.recovery_problems),
            f"  result: {'PASS' if report.ok else 'FAIL'}",
        ]
    )
    for line in summary.splitlines():
        say(line)
    if not report.ok:
        say(report.describe())
    return report, summary
