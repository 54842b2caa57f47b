"""The nemesis: one fault at a time, in an order and with parameters drawn from a seeded RNG.

Each round runs every kind of fault once, shuffled:

* ``kill_processor``: SIGKILL a processor, restart it (same processor id) after a pause;
* ``pause_processor``: SIGSTOP a processor for longer than its ack wait (6-20 s: sometimes
  past its lease TTL too, so the scheduler re-drives what it held), then SIGCONT: a live
  processor that lost touch, whose runs must stop before their next step;
* ``kill_leader``: SIGKILL the node leading the command stream, the journal stream or the state
  bucket, restart it on the same store and wait until every replica has caught up;
* ``pause_node``: SIGSTOP a leader node for longer than the election timeout, then SIGCONT;
* ``kill_scheduler``: SIGKILL a scheduler replica, restart it after a pause;
* ``restart_service``: SIGKILL the OrderService while a call is in flight, restart it on the
  same port (when it was listening again is noted: the checker measures how long each
  processor took to journal a successful call after it);
* ``partition``: cut a leader node off the network (its namespace's link down), heal it later.
  Skipped, with the reason, where network namespaces are not permitted.

The RNG's draws do not depend on timing, so a seed gives the same schedule of faults (which
node leads at the time is the cluster's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import nats

from durable_core._naming import Names
from durable_core.testing import NatsCluster

from ._netns import Netns
from .system import PROCESSORS, System

if TYPE_CHECKING:
    from .run_settings import ChaosCluster

KINDS = (
    "kill_processor",
    "pause_processor",
    "kill_leader",
    "pause_node",
    "kill_scheduler",
    "restart_service",
    "partition",
)

# nats-server's Raft: election timeouts are drawn from 4-9 s; a node silent for longer is
# replaced as leader.
ELECTION_TIMEOUT = 9.0


@dataclass
class Fault:
    kind: str
    target: str
    started: float  # monotonic
    healed: float = 0.0  # monotonic: when the fault ended (restart, SIGCONT, link up)
    recovered: float = 0.0  # monotonic: when the system was whole again
    detail: str = ""
    back_wall: float = 0.0  # wall clock: when a restarted service listened again

    def describe(self, t0: float) -> str:
        return (
            f"[{self.started - t0:6.1f}s .. {self.healed - t0:6.1f}s] {self.kind} {self.target}"
            + (f" ({self.detail})" if self.detail else "")
        )


class Nemesis:
    """Injects faults until told the workload is done (and at least ``min_rounds`` rounds).

    Args:
        rng: the seeded random source; the only one the nemesis uses.
        cluster: the NATS cluster.
        system: the processes.
        leader_streams: the streams whose leaders are targets (commands, journal, state KV).
        net: network namespaces of the nodes, or None when partitions are not possible.
        no_partition_reason: why not, printed once.
        log: where to say what is happening.
        kinds: the kinds of fault to draw from (all of ``KINDS`` by default).
    """

    def __init__(
        self,
        rng: random.Random,
        cluster: NatsCluster,
        system: System,
        leader_streams: list[str],
        *,
        net: Netns | None,
        no_partition_reason: str = "",
        log: Callable[[str], None] = print,
        kinds: Sequence[str] = KINDS,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        assert not unknown, f"no such faults: {sorted(unknown)}"
        self.kinds = tuple(kinds)
        self.rng = rng
        self.cluster = cluster
        self.system = system
        self.leader_streams = leader_streams
        self.net = net
        self.no_partition_reason = no_partition_reason
        self.log = log
        self.faults: list[Fault] = []
        self.skipped: Counter[str] = Counter()
        self.recovery_problems: list[str] = []
        self.t0 = time.monotonic()

    @classmethod
    def seeded(
        cls,
        seed: int,
        cc: ChaosCluster,
        system: System,
        names: Names,
        *,
        kinds: Sequence[str] = KINDS,
        log: Callable[[str], None] = print,
    ) -> Nemesis:
        """The nemesis of one run: seeded, aimed at the leaders of the engine's command
        streams, journal streams and state buckets (one of each per shard)."""
        return cls(
            random.Random(seed),
            cc.cluster,
            system,
            [
                *names.command_streams,
                *names.journal_streams,
                *(f"KV_{b}" for b in names.state_buckets),
            ],
            net=cc.net,
            no_partition_reason=cc.no_partition_reason,
            log=log,
            kinds=kinds,
        )

    # -- the loop --------------------------------------------------------------------------

    async def run(self, offered: asyncio.Event, *, min_rounds: int = 1) -> None:
        """Fault after fault until ``min_rounds`` full rounds are done and the workload has
        offered everything (the round in progress then stops early)."""
        rounds = 0
        stop = False
        while not stop:
            for kind in self._round():
                if rounds >= min_rounds and offered.is_set():
                    stop = True
                    break
                await asyncio.sleep(self.rng.uniform(1.5, 3.0))
                await getattr(self, kind)()
            else:
                rounds += 1
        self.log(f"nemesis: done after {rounds} full round(s), {len(self.faults)} faults")

    async def run_every(self, interval: float, stop: asyncio.Event) -> None:
        """One fault every ``interval`` seconds (rounds of every kind, shuffled) until ``stop``."""
        started = time.monotonic()
        k = 0
        while not stop.is_set():
            for kind in self._round():
                k += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), started + k * interval - time.monotonic())
                if stop.is_set():
                    break
                await getattr(self, kind)()
        self.log(f"nemesis: stopped after {len(self.faults)} faults")

    def _round(self) -> list[str]:
        """Every kind once, shuffled; partitions left out (and said once) without netns."""
        kinds = list(self.kinds)
        self.rng.shuffle(kinds)
        if "partition" in kinds and self.net is None:
            if not self.skipped["partition"]:
                self.log(f"nemesis: skipping partitions: {self.no_partition_reason}")
            self.skipped["partition"] += 1
            kinds.remove("partition")
        return kinds

    @property
    def last_healed(self) -> float:
        return max((f.healed for f in self.faults), default=self.t0)

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))

    def _begin(self, kind: str, target: str, detail: str = "") -> Fault:
        fault = Fault(kind, target, time.monotonic(), detail=detail)
        self.faults.append(fault)
        self.log(f"nemesis [{fault.started - self.t0:6.1f}s]: {kind} {target} {detail}".rstrip())
        return fault

    # -- helpers ---------------------------------------------------------------------------

    async def _leader(self, stream: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            leader = await asyncio.to_thread(self.cluster.stream_leader, stream)
            if leader is not None:
                return leader
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader for {stream} within {timeout:.0f}s")
            await asyncio.sleep(0.5)

    async def _streams(self, request_timeout: float = 10.0) -> list[str]:
        """Every stream of the account (the engine's, its buckets, the schedules); an error
        answer (JetStream unavailable) raises, as no answer does."""
        nc = await nats.connect(self.cluster.urls, connect_timeout=2, max_reconnect_attempts=3)
        try:
            resp = await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=request_timeout)
            body = json.loads(resp.data)
            if body.get("error"):
                raise nats.errors.Error(f"stream names: {body['error']}")
            return sorted(body.get("streams") or [])
        finally:
            await nc.close()

    async def _stream_names(self, deadline: float) -> list[str]:
        """:meth:`_streams`, asked again until ``deadline`` (monotonic): right after a node
        comes back the meta leader may still be in election, and JetStream's API does not
        answer meanwhile (the soak of 2026-12-06 saw one such 10 s timeout at its first fault,
        with every invocation completing)."""
        while True:
            try:
                return await self._streams()
            except nats.errors.Error:
                if time.monotonic() + 1 > deadline:
                    raise
            await asyncio.sleep(1)

    async def wait_whole(self, what: str, timeout: float = 90.0) -> None:
        """Wait until every stream has a leader and all replicas caught up (bounded)."""
        started = time.monotonic()
        try:
            streams = await self._stream_names(started + timeout)
            for stream in streams:
                left = max(1.0, timeout - (time.monotonic() - started))
                await asyncio.to_thread(
                    self.cluster.wait_stream_current, stream, timeout=timedelta(seconds=left)
                )
        except (TimeoutError, AssertionError, nats.errors.Error) as e:
            problem = f"{what}: not recovered: {e}"
            self.recovery_problems.append(problem)
            self.log(f"nemesis: {problem}")

    # -- the faults ------------------------------------------------------------------------

    async def kill_processor(self) -> None:
        await self._kill_and_restart("kill_processor", PROCESSORS)

    async def kill_scheduler(self) -> None:
        await self._kill_and_restart("kill_scheduler", self.system.schedulers)

    async def pause_processor(self) -> None:
        name = self.rng.choice(PROCESSORS)
        hold = self.rng.uniform(self.system.ack_wait + 1.0, 20.0)
        fault = self._begin("pause_processor", name, f"SIGSTOP {hold:.1f}s")
        await asyncio.to_thread(self.system.pause, name)
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(self.system.resume, name)
        fault.healed = fault.recovered = time.monotonic()

    async def _kill_and_restart(self, kind: str, names: Sequence[str]) -> None:
        name = self.rng.choice(names)
        pause = self.rng.uniform(1.0, 3.0)
        fault = self._begin(kind, name, f"restart after {pause:.1f}s")
        await asyncio.to_thread(self.system.kill, name)
        await asyncio.sleep(pause)
        await asyncio.to_thread(self.system.restart, name)
        fault.healed = fault.recovered = time.monotonic()

    async def kill_leader(self) -> None:
        stream = self.rng.choice(self.leader_streams)
        down = self.rng.uniform(1.0, 3.0)
        node = await self._leader(stream)
        fault = self._begin("kill_leader", node, f"leader of {stream}, down {down:.1f}s")
        await asyncio.to_thread(self.cluster.kill_node, node)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.cluster.restart_node, node, timeout=timedelta(seconds=60))
        await self._healed(fault)

    async def pause_node(self) -> None:
        await self._hold_leader(
            "pause_node", "SIGSTOP", self.cluster.pause_node, self.cluster.resume_node
        )

    async def partition(self) -> None:
        assert self.net is not None
        await self._hold_leader("partition", "isolated", self.net.cut, self.net.heal)

    async def _hold_leader(
        self, kind: str, what: str, cut: Callable[[str], object], heal: Callable[[str], object]
    ) -> None:
        """Cut a stream leader's node off past the election timeout, then let it back."""
        stream = self.rng.choice(self.leader_streams)
        hold = ELECTION_TIMEOUT + self.rng.uniform(1.0, 3.0)
        node = await self._leader(stream)
        fault = self._begin(kind, node, f"leader of {stream}, {what} {hold:.1f}s")
        await asyncio.to_thread(cut, node)
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(heal, node)
        await self._healed(fault)

    async def _healed(self, fault: Fault) -> None:
        """The fault is over: wait until the cluster has recovered from it."""
        fault.healed = time.monotonic()
        await self.wait_whole(f"{fault.kind} {fault.target}")
        fault.recovered = time.monotonic()

    async def restart_service(self) -> None:
        down = self.rng.uniform(0.5, 2.0)
        in_flight = await self._call_in_flight(timeout=10.0)
        fault = self._begin(
            "restart_service",
            "service",
            f"{'a call in flight' if in_flight else 'no call seen in flight'}, down {down:.1f}s",
        )
        await asyncio.to_thread(self.system.kill, "service")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.system.restart, "service")
        fault.back_wall = time.time()
        fault.healed = fault.recovered = time.monotonic()

    async def _call_in_flight(self, timeout: float) -> bool:
        """Wait until the service's latest recorded call is younger than its delay."""
        delay = self.system.service_delay_ms / 1000
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = await asyncio.to_thread(_last_call_ts, self.system.record_file)
            if last is not None and time.time() - last < delay * 0.7:
                return True
            await asyncio.sleep(0.02)
        return False


def _last_call_ts(path: object) -> float | None:
    try:
        with open(path, "rb") as f:  # type: ignore[call-overload]
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
            if not rec.get("refused"):  # a refused call is not in flight
                return float(rec["ts"])
        except (ValueError, KeyError, AttributeError):
            continue
    return None
