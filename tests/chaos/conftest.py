"""Fixtures of the chaos suite: a 3-node cluster of its own (in network namespaces where
permitted, so partitions can be cut). The run's settings are in ``run_settings.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from durable_core.testing import NatsCluster

from . import _netns
from .run_settings import ChaosCluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: the chaos suite (crashes, pauses, partitions); `make chaos`"
    )


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
