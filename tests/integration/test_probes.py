"""Issue 14: readiness you can see. Every service answers HTTP ``/livez`` (its process and
event loop are alive; never NATS) and ``/readyz`` (connected to NATS and, for the processor and
the scheduler, consuming; else 503 and why). Real processes on one real nats-server, which
is killed and started again."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_core import Client, EngineConfig
from durable_core.testing import (
    ChildProcess,
    NatsServer,
    ServiceProcess,
    assert_eventually,
    free_port,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _until(what: str, probes: dict[str, str], want: int, timeout: float = 60) -> dict[str, str]:
    """Poll every service's /readyz until each answers ``want`` (bounded); /livez must answer
    200 all along. Returns the last /readyz bodies."""
    bodies: dict[str, tuple[int, str]] = {}

    def all_answer() -> dict[str, str] | None:
        bodies.clear()
        for name, base in probes.items():
            live = _get(f"{base}/livez")
            assert live == (200, "ok\n"), f"{name} /livez answered {live} while {what}"
            bodies[name] = _get(f"{base}/readyz")
        if all(code == want for code, _ in bodies.values()):
            return {name: body for name, (_, body) in bodies.items()}
        return None

    try:
        return assert_eventually(all_answer, timeout, f"{what}: /readyz all {want}", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {bodies}") from None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(store_dir=tmp_path / "nats", work_dir=tmp_path) as s:
        yield s


async def test_readyz_follows_nats_and_consuming_while_livez_stays_up(
    server: NatsServer, tmp_path: Path
) -> None:
    prefix = "pr" + free_port().__str__()
    env = {"DURABLE_NATS_URL": server.url, "DURABLE_PREFIX": prefix, "DURABLE_LOG_LEVEL": "INFO"}
    health_port = free_port()
    service = ServiceProcess(tmp_path, {"HEALTH_PORT": str(health_port)})
    service.wait_ready()
    procs: list[ChildProcess] = [service]
    ports = {name: free_port() for name in ("processor", "scheduler", "inspector")}
    probes = {
        "hello_service": f"http://127.0.0.1:{health_port}",
        **{name: f"http://127.0.0.1:{port}" for name, port in ports.items()},
    }
    try:
        # The scheduler and the inspector first: the engine's streams do not exist yet (only
        # a processor creates them), so they wait, alive and not ready.
        procs.append(
            ChildProcess(
                "scheduler",
                ["-m", "durable_scheduler"],
                {**env, "DURABLE_METRICS_PORT": str(ports["scheduler"])},
                tmp_path,
            )
        )
        procs.append(
            ChildProcess(
                "inspector",
                ["-m", "durable_inspector", "--port", str(ports["inspector"])],
                env,
                tmp_path,
            )
        )
        procs[1].wait_log("/readyz")
        procs[2].wait_log("inspector listening")
        waiting = {k: v for k, v in probes.items() if k in ("scheduler", "inspector")}
        bodies = await asyncio.to_thread(_until, "no processor yet", waiting, 503)
        assert all("waiting for the engine's streams" in b for b in bodies.values()), bodies

        procs.append(
            ChildProcess(
                "processor",
                ["-m", "durable_processor", "--processor-id", "p-probes"],
                {
                    **env,
                    "DURABLE_METRICS_PORT": str(ports["processor"]),
                    "DURABLE_DEFAULT_SERVICE_ADDRESS": service.address,
                    "DURABLE_ACK_WAIT": "10",
                },
                tmp_path,
            )
        )
        procs[3].wait_log("/readyz")
        await asyncio.to_thread(_until, "starting", probes, 200)

        server.kill()  # NATS gone: nothing consumes, nobody is ready; everybody lives
        bodies = await asyncio.to_thread(
            _until, "NATS is down", {k: v for k, v in probes.items() if k != "hello_service"}, 503
        )
        assert all("NATS" in body for body in bodies.values()), bodies
        assert _get(f"{probes['hello_service']}/readyz")[0] == 200  # it needs no NATS

        server.start()
        await asyncio.to_thread(_until, "NATS is back", probes, 200)
        async with await Client.connect(server.url, engine=EngineConfig(prefix=prefix)) as c:
            result = await c.invoke("hello_workflow", {"name": "probe"}, timeout=60)
        assert result.status.value == "completed"  # consuming again, for real
    finally:
        logs = {p.name: p.log()[-2000:] for p in procs}
        for proc in reversed(procs):
            proc.stop()
        print("\n".join(f"--- {name}\n{log}" for name, log in logs.items()))
