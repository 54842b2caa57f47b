"""The fleet registry, intake's refusal of workflows nobody serves, and payloads read without
their plugin (issue 16), on the 3-node cluster with real processes.

Processors with a chosen plugin set run the library's ``Worker`` in a child process
(``PROCESSOR`` below) with only the named plugin modules loaded; the rest of each stack is the
real services and the real ``durable`` CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
import pytest

from durable_core import Client, NotFoundError, Status, UnknownWorkflowError
from durable_core._code import version_token
from durable_core.testing import ChildProcess, ProcessStack, assert_eventually_async

pytestmark = pytest.mark.integration

# A processor serving only the plugin modules named in argv[2] (comma-separated), its lease
# (and so its fleet record) lasting argv[3] seconds.
PROCESSOR = textwrap.dedent(
    """
    import asyncio, importlib, logging, os, signal, sys
    from datetime import timedelta
    from durable_core import EngineConfig, NatsConfig, Worker, WorkerConfig, load_plugins

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    async def main() -> None:
        modules = [importlib.import_module(m) for m in sys.argv[2].split(",") if m]
        plugins = load_plugins(entry_points=False, extra=modules)
        worker = await Worker.connect(
            NatsConfig.from_url(os.environ["NATS_URL"]),
            EngineConfig(prefix=os.environ["DURABLE_PREFIX"], replicas=3),
            plugins.registry,
            WorkerConfig(
                processor_id=sys.argv[1],
                lease_ttl=timedelta(seconds=float(sys.argv[3])),
                services={"*": os.environ["DURABLE_DEFAULT_SERVICE_ADDRESS"]},
            ),
            service_defaults=plugins.service_addresses,
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
        try:
            await worker.run()
        finally:
            await worker.close()

    asyncio.run(main())
    """
)

# Imported by every child Python of the status test: the order plugin and the generated code
# of its protos (and every other example proto) cannot be imported there.
BLOCKER = textwrap.dedent(
    """
    import sys

    class _Blocked:
        BLOCKED = ("order_processing", "durable_examples", "hello_workflow")

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, _Blocked())
    """
)


def start_processor(
    stack: ProcessStack, name: str, plugins: str, lease: float = 3.0
) -> ChildProcess:
    """A processor serving only ``plugins`` (module names), once it consumes."""
    assert stack.service is not None, "start the service first"
    env = {"DURABLE_DEFAULT_SERVICE_ADDRESS": stack.service.address}
    return stack.start(
        name, ["-c", PROCESSOR, name, plugins, str(lease)], env, ready="consuming", timeout=30
    )


class Inspector:
    """The inspector process (no token) and its base URL."""

    def __init__(self, stack: ProcessStack) -> None:
        env = {"DURABLE_JAEGER_URL": "http://jaeger.invalid:16686"}
        args = ["-m", "durable_inspector", "--port", "0"]
        self.proc = stack.start("inspector", args, env, ready="inspector listening on", timeout=30)
        match = re.search(r"inspector listening on (http://\S+)", self.proc.log())
        assert match, self.proc.log()
        self.url = match.group(1)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20)


async def test_registry_shows_each_processors_workflows_and_drops_a_killed_one(
    stack: ProcessStack, client: Client
) -> None:
    stack.start_service()
    start_processor(stack, "fleet-hello", "hello_workflow")
    orders = start_processor(stack, "fleet-orders", "order_processing,delayed_greeting")
    start_processor(stack, "fleet-none", "")

    view = await client.fleet()
    assert [p.processor for p in view.processors] == ["fleet-hello", "fleet-none", "fleet-orders"]
    by_processor = {p.processor: p for p in view.processors}
    assert [w.name for w in by_processor["fleet-hello"].workflows] == ["hello_workflow"]
    assert [w.name for w in by_processor["fleet-orders"].workflows] == [
        "cancellable_order",
        "delayed_greeting",
        "greet_later",
        "order_processing",
    ]
    assert by_processor["fleet-none"].workflows == ()
    for p in view.processors:
        assert p.pid > 0 and p.host and p.core_version and p.ttl == 3.0
        for w in p.workflows:
            assert w.package and w.version and len(w.fingerprint) == 64
            assert w.token == version_token(w.package, w.version)
    served = view.by_workflow()
    assert [p.processor for p, _ in served["order_processing"]] == ["fleet-orders"]
    assert served["order_processing"][0][1].package == "durable-order-processing"
    assert [p.processor for p, _ in served["hello_workflow"]] == ["fleet-hello"]

    # The CLI, both ways, and as JSON.
    cp = await asyncio.to_thread(stack.cli, "plugins", "--fleet", "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc == view.to_dict() | {"processors": doc["processors"]}  # renewals move on
    assert [p["processor"] for p in doc["processors"]] == [
        "fleet-hello",
        "fleet-none",
        "fleet-orders",
    ]
    assert [s["processor"] for s in doc["workflows"]["delayed_greeting"]] == ["fleet-orders"]
    cp = await asyncio.to_thread(stack.cli, "plugins", "--fleet")
    assert cp.returncode == 0, cp.stderr
    assert "order_processing" in cp.stdout and "fleet-orders" in cp.stdout
    assert "fleet-none" in cp.stdout

    # The inspector: the JSON API and the page.
    inspector = Inspector(stack)
    async with inspector.http() as http:
        resp = await http.get("/api/fleet")
        assert resp.status_code == 200, resp.text
        assert sorted(resp.json()["workflows"]) == sorted(served)
        page = await http.get("/fleet")
        assert page.status_code == 200
        assert "fleet-orders" in page.text and "delayed_greeting" in page.text

    # A processor killed outright drops out by itself within its lease (3 s) and the grace
    # that covers a NATS failover (20 s): no scheduler runs here, the server expires its record.
    orders.kill()

    async def dropped() -> bool:
        names = [p.processor for p in (await client.fleet()).processors]
        return names == ["fleet-hello", "fleet-none"]

    await assert_eventually_async(dropped, 40, "the killed processor to drop out")
    cp = await asyncio.to_thread(stack.cli, "plugins", "--fleet", "--json")
    assert "order_processing" not in json.loads(cp.stdout)["workflows"]


async def test_unknown_workflow_is_refused_at_every_intake_unless_queued(
    stack: ProcessStack, client: Client
) -> None:
    stack.start_service()
    hello_processor = start_processor(stack, "intake-hello", "hello_workflow")
    args = {"order_id": "o-1", "amount_cents": 500}

    # The client: a typed error naming what is served; nothing is stored.
    with pytest.raises(UnknownWorkflowError) as err:
        await client.invoke_async("order_processing", args, id="refused-1")
    assert err.value.workflow == "order_processing"
    assert err.value.served == ("hello_workflow",)
    assert "hello_workflow" in str(err.value)
    assert isinstance(err.value, NotFoundError)  # existing `except NotFoundError` still catch it
    with pytest.raises(NotFoundError):
        await client.get_summary("refused-1")
    with pytest.raises(UnknownWorkflowError):
        await client.invoke("no_such_workflow", {}, timeout=5)
    with pytest.raises(UnknownWorkflowError):
        await client.create_schedule("refused-sched", "order_processing", args, every=_hour())

    # The CLI: exit 2, the served workflows on stderr.
    cp = await asyncio.to_thread(
        stack.cli, "invoke", "order_processing", "--args", json.dumps(args), "--id", "refused-2"
    )
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "no live processor serves workflow 'order_processing'" in cp.stderr
    assert "hello_workflow" in cp.stderr
    cp = await asyncio.to_thread(
        stack.cli, "schedule", "create", "refused-cli", "--workflow", "order_processing",
        "--every", "1h", "--args", json.dumps(args),
    )  # fmt: skip
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "no live processor serves" in cp.stderr

    # The inspector's API: 404 with the served workflows.
    inspector = Inspector(stack)
    async with inspector.http() as http:
        resp = await http.post(
            "/api/executions", json={"workflow": "order_processing", "args": args}
        )
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"] == "not_found"
        assert "hello_workflow" in resp.json()["detail"]
        resp = await http.post(
            "/api/schedules",
            json={"name": "refused-api", "workflow": "order_processing", "every": 3600},
        )
        assert resp.status_code == 404, resp.text
        names = [s.name for s in await client.list_schedules()]
        assert not {"refused-sched", "refused-cli", "refused-api"} & set(names)
        # A served workflow needs no option.
        hello = await client.invoke("hello_workflow", {"name": "Ada"}, timeout=30)
        assert hello.status == Status.COMPLETED

        # Without routing (issue 16's other half) a processor lacking a workflow would take
        # its commands: the hello processor leaves (a clean exit removes its record at once).
        hello_processor.stop()
        assert (await client.fleet()).processors == ()

        # Queued on request, by each way in.
        queued = [await client.invoke_async("order_processing", args, queue_unserved=True)]
        cp = await asyncio.to_thread(
            stack.cli, "invoke", "order_processing", "--args", json.dumps(args), "--queue",
            "--no-wait",
        )  # fmt: skip
        assert cp.returncode == 0, cp.stderr
        queued.append(cp.stdout.strip())
        resp = await http.post(
            "/api/executions",
            json={"workflow": "order_processing", "args": args, "queue_unserved": True},
        )
        assert resp.status_code == 202, resp.text
        queued.append(resp.json()["invocation_id"])
        resp = await http.post(
            "/api/executions", json={"workflow": "order_processing", "queue_unserved": "yes"}
        )
        assert resp.status_code == 400, resp.text
    await client.create_schedule(
        "queued-sched", "order_processing", args, every=_hour(), paused=True, queue_unserved=True
    )
    for iid in queued:
        assert (await client.get_summary(iid)).status == Status.PENDING

    # A processor with the workflow starts: the queued invocations run.
    start_processor(stack, "intake-orders", "order_processing")
    results = await asyncio.gather(*(client.wait(iid, timeout=60) for iid in queued))
    assert [r.status for r in results] == [Status.COMPLETED] * 3
    # ... and the workflow is accepted without the option now.
    done = await client.invoke("order_processing", args, timeout=60)
    assert done.status == Status.COMPLETED


async def test_status_decodes_every_step_where_the_plugin_cannot_be_imported(
    stack: ProcessStack, client: Client, tmp_path: Path
) -> None:
    stack.start_service()
    stack.start_processor("status-p")  # every installed plugin: publishes their descriptors
    result = await client.invoke(
        "order_processing", {"order_id": "o-7", "amount_cents": 700}, timeout=60
    )
    assert result.status == Status.COMPLETED
    iid = result.invocation_id

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, **stack.env, "PYTHONPATH": str(blocked), "COLUMNS": "250"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60
        )

    def cli(*args: str) -> tuple[int, str, str]:
        cp = run("-m", "durable_core.cli", *args)
        return cp.returncode, cp.stdout, cp.stderr

    # The blocker works: neither the plugin nor its protos import in such a child.
    probe = await asyncio.to_thread(run, "-c", "import durable_examples.order.v1.order_pb2")
    assert probe.returncode != 0 and "blocked in this test" in probe.stderr
    probe = await asyncio.to_thread(run, "-c", "import order_processing")
    assert probe.returncode != 0

    code, out, err = await asyncio.to_thread(cli, "status", iid, "--json")
    assert code == 0, err
    doc = json.loads(out)
    steps = doc["steps"]
    assert [s["name"] for s in steps] == [
        "/durable_examples.order.v1.OrderService/Validate",
        "/durable_examples.order.v1.OrderService/Charge",
        "/durable_examples.order.v1.OrderService/Ship",
    ]
    for s in steps:
        assert isinstance(s["output"], dict), s  # decoded messages, not hex strings
    assert steps[0]["output"] == {"valid": True}
    assert steps[1]["output"]["charge_id"]
    assert steps[2]["output"]["tracking_number"]
    assert doc["args"] == {"order_id": "o-7", "amount_cents": 700}
    assert doc["output"]["charge_id"] == steps[1]["output"]["charge_id"]

    code, out, err = await asyncio.to_thread(cli, "status", iid)
    assert code == 0, err
    assert steps[1]["output"]["charge_id"] in out
    assert "tracking_number" in out and '"valid": true' in out


def _hour() -> timedelta:
    return timedelta(hours=1)
