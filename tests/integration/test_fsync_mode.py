"""`durable dev --fsync` / `durable demo --fsync`: the embedded NATS fsyncs every write."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from durable_core import Client
from durable_core.cli._dev import LocalStack
from durable_core.testing import free_port
from durable_core.testing._servers import render_config

pytestmark = pytest.mark.integration


def jetstream_config(monitor_url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5) as answer:
        config: dict[str, object] = json.load(answer)["jetstream"]["config"]
    return config


def test_only_the_fsync_mode_writes_sync_always() -> None:
    common = dict(
        server_name="n", listen="127.0.0.1:1", http="127.0.0.1:2", store_dir="/s",
        max_payload=1, max_memory_store=1, max_file_store=1,
    )  # fmt: skip
    assert "sync_interval: always" in render_config(**common, sync_always=True)  # type: ignore[arg-type]
    assert "sync_interval" not in render_config(**common)  # type: ignore[arg-type]


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "default"])
async def test_the_dev_stack_runs_hello_with_the_durability_asked_for(
    tmp_path: Path, fsync: bool
) -> None:
    """The running server reports the mode (its own /varz), and hello completes on it."""
    with LocalStack(tmp_path, free_port(), free_port(), fsync=fsync) as stack:
        assert bool(jetstream_config(stack.nats.monitor_url).get("sync_always")) is fsync
        async with await Client.connect(stack.nats_url) as client:
            result = await client.invoke("hello_workflow", {"name": "Fsync"}, timeout=60)
        assert result.output["message"].startswith("Hello, Fsync!")
