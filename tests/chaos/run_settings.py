"""The chaos run's settings from the environment, and the cluster the ``chaos_cluster``
fixture hands a run.

Settings (environment): ``CHAOS_N`` invocations (100; ``make chaos`` runs 1,000),
``CHAOS_SEED`` (random when unset; printed), ``CHAOS_DURATION`` seconds over which the N are
offered (``max(60, 0.36 * N)``), ``CHAOS_DRAIN_TIMEOUT`` seconds to wait for the last ones after
the last fault (120), ``CHAOS_SHARDS`` the engine's shards (1), ``CHAOS_KEEP`` (keep the run's
logs even when it passes), ``CHAOS_IDEMPOTENCY_STORE`` (1: the OrderService keeps its answers
and fences in JetStream, ``durable_core.idempotency``, instead of in memory).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from durable_core.testing import NatsCluster

from . import _netns


@dataclass(frozen=True)
class ChaosSettings:
    n: int
    seed: int
    duration: float
    drain_timeout: float
    shards: int = 1
    idempotency_store: bool = False

    @classmethod
    def from_env(cls) -> ChaosSettings:
        n = int(os.environ.get("CHAOS_N") or 100)
        seed_text = os.environ.get("CHAOS_SEED", "").strip()
        seed = int(seed_text) if seed_text else secrets.randbelow(2**31)
        duration = float(os.environ.get("CHAOS_DURATION") or max(60.0, 0.36 * n))
        drain = float(os.environ.get("CHAOS_DRAIN_TIMEOUT") or 120.0)
        shards = int(os.environ.get("CHAOS_SHARDS") or 1)
        store = os.environ.get("CHAOS_IDEMPOTENCY_STORE", "") not in ("", "0")
        return cls(
            n=n,
            seed=seed,
            duration=duration,
            drain_timeout=drain,
            shards=shards,
            idempotency_store=store,
        )

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
