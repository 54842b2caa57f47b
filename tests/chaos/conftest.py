"""Fixtures of the chaos suite: a 3-node cluster of its own (in network namespaces where
permitted, so partitions can be cut), and the run's settings from the environment.

Settings (environment): ``CHAOS_N`` invocations (100; ``make chaos`` runs 1,000),
``CHAOS_SEED`` (random when unset; printed), ``CHAOS_DURATION`` seconds over which the N are
offered (``max(60, 0.36 * N)``), ``CHAOS_DRAIN_TIMEOUT`` seconds to wait for the last ones after
the last fault (120), ``CHAOS_KEEP`` (keep the run's logs even when it passes).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from durable_core.testing import NatsCluster

from . import _netns


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: the chaos suite (crashes, pauses, partitions); `make chaos`"
    )


@dataclass(frozen=True)
class ChaosSettings:
    n: int
    seed: int
    duration: float
    drain_timeout: float

    @classmethod
    def from_env(cls) -> ChaosSettings:
        n = int(os.environ.get("CHAOS_N") or 100)
        seed_text = os.environ.get("CHAOS_SEED", "").strip()
        seed = int(seed_text) if seed_text else secrets.randbelow(2**31)
        duration = float(os.environ.get("CHAOS_DURATION") or max(60.0, 0.36 * n))
        drain = float(os.environ.get("CHAOS_DRAIN_TIMEOUT") or 120.0)
        return cls(n=n, seed=seed, duration=duration, drain_timeout=drain)

    @property
    def timeout(self) -> float:
        """A bound on the whole test: start-up, the workload, drain, checks, teardown."""
        return self.duration + self.drain_timeout + 240.0


SETTINGS = ChaosSettings.from_env()


@dataclass
class ChaosCluster:
    cluster: NatsCluster
    net: _netns.Netns | None
    no_partition_reason: str


@pytest.fixture
def chaos_cluster() -> Iterator[ChaosCluster]:
    """A fresh 3-node cluster for one chaos run (its nodes get killed; nobody else uses it)."""
    reason = _netns.probe()
    net: _netns.Netns | None = None
    if not reason:
        net = _netns.Netns(["n1", "n2", "n3"])
        try:
            net.setup()
        except RuntimeError as e:
            net.teardown()
            net, reason = None, f"could not set up the namespaces: {e}"
    try:
        if net is not None:
            cluster: NatsCluster = _netns.NetnsCluster(net)
        else:
            cluster = NatsCluster(size=3, startup_timeout=timedelta(seconds=60))
        cluster.start()
        try:
            yield ChaosCluster(cluster, net, reason)
        finally:
            if net is not None:
                net.heal_all()
            cluster.stop()
    finally:
        if net is not None:
            net.teardown()
