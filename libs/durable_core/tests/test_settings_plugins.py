"""Plugins and settings that used to be wrong without a word: two packages declaring one plugin
name (the second never loaded), a plugin that fails to import or whose hook raises (a
traceback naming neither), plugins disagreeing on a service's address (one picked at random),
a DURABLE_SETTINGS_FILE that does not exist (ignored), the OpenTelemetry SDK's "Queue full"
warning (one a dropped span), and a processor that serves no workflow (ready all the same)."""

from __future__ import annotations

import asyncio
import logging
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_core import ConfigError, Context, WorkerConfig, WorkflowRegistry, hookimpl
from durable_core._transport import Transport
from durable_core.engine import Worker
from durable_core.plugins import PLUGIN_GROUP, load_plugins
from durable_core.service import logs
from durable_core.service.settings import read_settings

# -- fake installed packages -------------------------------------------------------------------


def install(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A package ``dist`` installed in ``root`` (a sys.path entry): its ``.dist-info`` declaring
    ``entry_points`` (name -> module) in the plugin group, and the ``modules`` (name -> source)."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\n{lines}")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for ``install``; module names get a per-test suffix."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def unique(name: str) -> str:
    return f"{name}_{uuid.uuid4().hex[:8]}"


WORKFLOW_MODULE = """
from durable_core import hookimpl

async def {wf}(ctx):
    return None

@hookimpl
def durable_register_workflows(registry):
    registry.register({wf})
"""


# -- 1. plugins --------------------------------------------------------------------------------


@pytest.mark.parametrize("only", [None, ["workflows"]])
def test_two_packages_declaring_one_plugin_name_is_a_config_error(
    site: Path, only: list[str] | None
) -> None:
    """pluggy skips an entry point whose name is registered: the second package's workflows
    were never loaded and the processor started without them."""
    a, b = unique("team_a_wf"), unique("team_b_wf")
    install(site, "team-a-flows", {"workflows": a}, {a: WORKFLOW_MODULE.format(wf=a)})
    install(site, "team-b-flows", {"workflows": b}, {b: WORKFLOW_MODULE.format(wf=b)})
    with pytest.raises(ConfigError) as info:
        load_plugins(only=only)
    message = str(info.value)
    assert "'workflows'" in message
    assert "team-a-flows" in message and "team-b-flows" in message


def test_a_plugin_that_fails_to_import_is_a_config_error_naming_it(site: Path) -> None:
    module = unique("broken_plugin")
    install(site, "broken-flows", {"broken": module}, {module: "import no_such_module_xyz\n"})
    with pytest.raises(ConfigError, match=r"plugin 'broken' \(broken-flows\) failed to load") as e:
        load_plugins(only=["broken"])
    assert "no_such_module_xyz" in str(e.value)
    assert isinstance(e.value.__cause__, ImportError)


def test_a_plugin_hook_that_raises_is_a_config_error_naming_it(site: Path) -> None:
    module = unique("raising_plugin")
    source = (
        "from durable_core import hookimpl\n"
        "@hookimpl\n"
        "def durable_register_workflows(registry):\n"
        "    raise RuntimeError('database unreachable')\n"
    )
    install(site, "raising-flows", {"raising": module}, {module: source})
    with pytest.raises(
        ConfigError, match=r"plugin 'raising' \(raising-flows\) failed to load"
    ) as e:
        load_plugins(only=["raising"])
    assert "RuntimeError: database unreachable" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)


def test_an_address_hook_that_raises_is_a_config_error_naming_the_plugin() -> None:
    module = types.ModuleType("bad_addresses")

    @hookimpl
    def durable_service_addresses() -> dict[str, str]:
        raise KeyError("HELLO_HOST")

    module.durable_service_addresses = durable_service_addresses  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="plugin 'bad_addresses' failed to load: KeyError"):
        load_plugins(entry_points=False, extra=[module])


def address_plugin(name: str, addresses: dict[str, str]) -> Any:
    module = types.ModuleType(name)

    @hookimpl
    def durable_service_addresses() -> dict[str, str]:
        return addresses

    module.durable_service_addresses = durable_service_addresses  # type: ignore[attr-defined]
    return module


CLOCK = "example.clock.v1.ClockService"


def test_plugins_disagreeing_on_a_service_address_need_it_configured() -> None:
    plugins = load_plugins(
        entry_points=False,
        extra=[
            address_plugin("clock_east", {CLOCK: "east:1"}),
            address_plugin("clock_west", {CLOCK: "west:2", "Other": "o:3"}),
            address_plugin("clock_same", {"Other": "o:3"}),  # agreeing: no conflict
        ],
    )
    assert set(plugins.service_addresses.conflicts) == {CLOCK}
    with pytest.raises(ConfigError) as info:
        plugins.service_addresses.check_configured({})
    message = str(info.value)
    assert CLOCK in message and "east:1 (plugin clock_east)" in message
    assert "west:2 (plugin clock_west)" in message
    assert "DURABLE_SERVICES__ClockService=host:port" in message and "\n" not in message
    # The configuration overrides the defaults: by full name, short name or the fallback.
    for configured in ({CLOCK: "c:4"}, {"ClockService": "c:4"}, {"*": "c:4"}):
        plugins.service_addresses.check_configured(configured)


async def tick(ctx: Context) -> None:
    return None


def _registry(*workflows: Any) -> WorkflowRegistry:
    registry = WorkflowRegistry()
    for wf in workflows:
        registry.register(wf)
    return registry


async def test_a_processor_refuses_to_start_on_conflicting_addresses(
    transport: Transport,
) -> None:
    plugins = load_plugins(
        entry_points=False,
        extra=[
            address_plugin("clock_east", {CLOCK: "east:1"}),
            address_plugin("clock_west", {CLOCK: "west:2"}),
        ],
    )
    worker = Worker(
        transport, _registry(tick), WorkerConfig(), service_defaults=plugins.service_addresses
    )
    with pytest.raises(ConfigError, match="different default addresses"):
        await asyncio.wait_for(worker.run(), 10)
    assert not worker.consuming.is_set()


# -- 2. DURABLE_SETTINGS_FILE ------------------------------------------------------------------


@pytest.fixture
def defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DURABLE_SETTINGS_FILE", "DURABLE_REPLICAS"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "defaults.toml"
    path.write_text("replicas = 1\n")
    return path


def test_a_settings_file_that_does_not_exist_is_a_config_error(
    defaults: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "etc" / "durable" / "settings.toml"
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(missing))
    with pytest.raises(ConfigError, match="does not exist") as info:
        read_settings(defaults)
    assert str(missing) in str(info.value)
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match="is a directory"):
        read_settings(defaults)


def test_a_settings_file_that_does_not_parse_is_a_config_error_naming_it(
    defaults: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "settings.toml"
    bad.write_text("replicas = [\n")
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(bad))
    with pytest.raises(ConfigError, match="cannot parse") as info:
        read_settings(defaults)
    assert str(bad) in str(info.value)


def test_a_settings_file_dynaconf_would_skip_is_a_config_error(
    defaults: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "settings.conf"
    conf.write_text("replicas = 3\n")
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(conf))
    with pytest.raises(ConfigError, match="settings.conf: a settings file must be"):
        read_settings(defaults)


def test_a_good_settings_file_is_read(
    defaults: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "settings.toml"
    good.write_text("replicas = 3\n")
    monkeypatch.setenv("DURABLE_SETTINGS_FILE", str(good))
    assert read_settings(defaults)["replicas"] == 3


# -- 4. the OpenTelemetry SDK's "Queue full" -----------------------------------------------------


@pytest.fixture
def otel_logger() -> Iterator[logging.Logger]:
    """The SDK's batch-processor logger, its filters put back after the test."""
    from opentelemetry.sdk import _shared_internal  # noqa: F401 - adds the SDK's own filter

    names = ("opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")
    loggers = {name: logging.getLogger(name) for name in names}
    saved = {name: list(lg.filters) for name, lg in loggers.items()}
    nats_level = logging.getLogger("nats").level
    try:
        yield loggers["opentelemetry.sdk._shared_internal"]
    finally:
        for name, lg in loggers.items():
            lg.filters[:] = saved[name]
        logging.getLogger("nats").setLevel(nats_level)


def test_queue_full_warnings_pass_once_a_minute(
    otel_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """With the collector down, every dropped span logged "Queue full, dropping Span." on the
    event loop's thread (the SDK's own filter drops a repeat only when nothing else was logged
    in between: the export thread's errors are)."""
    logs.configure_logging("INFO")
    logs.configure_logging("INFO")  # again (tests, embedding): no second filter
    caplog.set_level(logging.INFO)
    for _ in range(500):
        otel_logger.warning("Queue full, dropping %s.", "Span")
        otel_logger.error("Exception while exporting %s.", "Span")
    queue_full = [r for r in caplog.records if r.getMessage().startswith("Queue full")]
    assert len(queue_full) == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)  # never held back here


def test_the_rate_limit_says_how_many_it_held_back() -> None:
    now = [0.0]
    limit = logs.RateLimitFilter(60, clock=lambda: now[0])

    def record(level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord(
            "x", level, __file__, 1, "Queue full, dropping %s.", ("Span",), None
        )

    assert limit.filter(record())
    assert [limit.filter(record()) for _ in range(41)] == [False] * 41
    assert limit.filter(record(logging.ERROR))
    now[0] = 61.0
    passed = record()
    assert limit.filter(passed)
    assert passed.getMessage() == (
        "Queue full, dropping Span. (41 more like it in the last 60s not logged)"
    )


# -- 5. a processor with no workflows ----------------------------------------------------------


async def test_a_processor_serving_no_workflow_is_not_ready(transport: Transport) -> None:
    worker = Worker(transport, WorkflowRegistry(), WorkerConfig())
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        assert worker.not_ready() == "serves no workflows (no plugin loaded)"
    finally:
        worker.stop()
        await asyncio.wait_for(run, 20)


async def test_a_processor_serving_a_workflow_is_ready(transport: Transport) -> None:
    worker = Worker(transport, _registry(tick), WorkerConfig())
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), 20)
        assert worker.not_ready() is None
    finally:
        worker.stop()
        await asyncio.wait_for(run, 20)
