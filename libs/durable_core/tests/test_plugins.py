"""Plugin discovery through entry points, and the workflow registry."""

from __future__ import annotations

import logging
import types
from importlib.metadata import entry_points
from typing import Any

import pytest

from durable_core import (
    PLUGIN_GROUP,
    ConfigError,
    Context,
    Interceptor,
    InvalidInputError,
    NotFoundError,
    WorkflowRegistry,
    hookimpl,
    load_plugins,
)
from durable_core.errors import DurableError

HELLO_SERVICE = "durable_examples.hello.v1.HelloService"
ORDER_SERVICE = "durable_examples.order.v1.OrderService"


async def greet(ctx: Context, args: Any) -> str:
    return "hi"


async def tick(ctx: Context) -> None:
    return None


def plugin_module(name: str, *workflows: Any, addresses: dict[str, str] | None = None) -> Any:
    """A module-shaped plugin, as a workflow package's top-level module would be."""
    module = types.ModuleType(name)

    @hookimpl
    def durable_register_workflows(registry: WorkflowRegistry) -> None:
        for fn in workflows:
            registry.register(fn)

    module.durable_register_workflows = durable_register_workflows  # type: ignore[attr-defined]
    if addresses is not None:

        @hookimpl
        def durable_service_addresses() -> dict[str, str]:
            return addresses

        module.durable_service_addresses = durable_service_addresses  # type: ignore[attr-defined]
    return module


# -- discovery ---------------------------------------------------------------------------------


def test_the_entry_point_group_is_durable_plugins() -> None:
    assert PLUGIN_GROUP == "durable.plugins"
    names = {ep.name for ep in entry_points(group=PLUGIN_GROUP)}
    assert {"hello_workflow", "order_processing"} <= names


def test_installed_plugins_are_found_through_entry_points() -> None:
    plugins = load_plugins()
    assert {"hello_workflow", "order_processing"} <= set(plugins.registry.names())
    assert {"hello_workflow", "order_processing"} <= set(plugins.plugins)

    hello = plugins.registry.get("hello_workflow")
    assert hello.plugin == "hello_workflow"
    assert hello.takes_input
    assert plugins.registry.get("order_processing").plugin == "order_processing"


def test_installed_plugins_contribute_service_addresses() -> None:
    addresses = load_plugins().service_addresses
    assert addresses[HELLO_SERVICE] == "127.0.0.1:9090"
    assert addresses[ORDER_SERVICE] == "127.0.0.1:9090"


def test_without_entry_points_only_the_extra_plugins_load() -> None:
    plugins = load_plugins(entry_points=False, extra=[plugin_module("mine", greet)])
    assert plugins.registry.names() == ["greet"]
    assert plugins.plugins == ["mine"]
    assert plugins.registry.get("greet").plugin == "mine"


def test_extra_plugins_add_to_the_installed_ones() -> None:
    plugins = load_plugins(extra=[plugin_module("mine", tick, addresses={"Clock": "h:1"})])
    assert {"tick", "hello_workflow", "order_processing"} <= set(plugins.registry.names())
    assert plugins.service_addresses["Clock"] == "h:1"
    assert plugins.service_addresses[HELLO_SERVICE] == "127.0.0.1:9090"


def test_an_object_with_hook_methods_is_a_plugin_too() -> None:
    class Plugin:
        @hookimpl
        def durable_register_workflows(self, registry: WorkflowRegistry) -> None:
            registry.register(greet, name="greeting")

        @hookimpl
        def durable_interceptors(self) -> list[Interceptor]:
            return [marker]

    marker = Interceptor()
    plugins = load_plugins(entry_points=False, extra=[Plugin()])
    assert plugins.registry.names() == ["greeting"]
    assert plugins.registry.get("greeting").fn is greet
    assert plugins.interceptors == [marker]


def test_a_plugin_that_contributes_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Misnamed:  # no @hookimpl and a misspelled name: pluggy sees no hook at all
        def durable_register_workflow(self, registry: WorkflowRegistry) -> None:
            registry.register(greet, name="greeting")

    class Fine:
        @hookimpl
        def durable_register_workflows(self, registry: WorkflowRegistry) -> None:
            registry.register(greet, name="greeting")

    with caplog.at_level(logging.WARNING, logger="durable_core.plugins"):
        plugins = load_plugins(entry_points=False, extra=[Misnamed(), Fine()])
    assert plugins.registry.names() == ["greeting"]
    idle = [r.getMessage() for r in caplog.records]
    assert len(idle) == 1 and "registers no workflow" in idle[0], idle


# -- registration errors -----------------------------------------------------------------------


def test_two_plugins_registering_one_name_is_a_config_error() -> None:
    async def impostor(ctx: Context, args: Any) -> str:
        return "hello"

    class Second:
        @hookimpl
        def durable_register_workflows(self, registry: WorkflowRegistry) -> None:
            registry.register(impostor, name="greet")

    first = plugin_module("first_plugin", greet)
    with pytest.raises(ConfigError, match="greet is registered twice") as info:
        load_plugins(entry_points=False, extra=[first, Second()])
    assert "first_plugin" in str(info.value)
    # Neither failed: the one found second was named as the plugin that "failed to load",
    # the innocent one when it happened to come second (outside-in).
    assert "failed to load" not in str(info.value)


def test_registering_the_same_function_twice_is_harmless() -> None:
    registry = WorkflowRegistry()
    registry.register(greet)
    registry.register(greet)
    assert len(registry) == 1


def test_a_plain_function_is_rejected() -> None:
    def not_async(ctx: Context) -> None:
        return None

    with pytest.raises(ConfigError, match="not_async must be an async def"):
        WorkflowRegistry().register(not_async)  # type: ignore[arg-type]


def test_a_plain_function_from_a_plugin_is_rejected() -> None:
    def sync_workflow(ctx: Context) -> None:
        return None

    with pytest.raises(ConfigError, match="async def"):
        load_plugins(entry_points=False, extra=[plugin_module("p", sync_workflow)])


@pytest.mark.parametrize("arity", [0, 3])
def test_a_workflow_takes_ctx_and_at_most_one_input(arity: int) -> None:
    async def zero() -> None:
        return None

    async def three(ctx: Context, a: Any, b: Any) -> None:
        return None

    with pytest.raises(ConfigError, match=f"not {arity} arguments"):
        WorkflowRegistry().register(zero if arity == 0 else three)


def test_an_invalid_workflow_name_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="invalid workflow name"):
        WorkflowRegistry().register(greet, name="has space")


def test_an_unknown_workflow_lists_the_known_ones() -> None:
    registry = WorkflowRegistry()
    registry.register(tick)
    registry.register(greet)
    with pytest.raises(NotFoundError) as info:
        registry.get("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "greet, tick" in message
    assert "Install the plugin" in message
    assert isinstance(info.value, DurableError) and isinstance(info.value, LookupError)


def test_an_unknown_workflow_in_an_empty_registry_says_none() -> None:
    assert "known workflows: none" in WorkflowRegistry().unknown_message("x")


def test_registry_reports_takes_input_and_iterates() -> None:
    registry = WorkflowRegistry()
    registry.register(greet)
    registry.register(tick)
    assert {w.name: w.takes_input for w in registry} == {"greet": True, "tick": False}
    assert "greet" in registry and "other" not in registry


def test_a_hook_can_query_the_registry_it_is_given() -> None:
    seen: list[bool] = []

    class Plugin:
        @hookimpl
        def durable_register_workflows(self, registry: WorkflowRegistry) -> None:
            registry.register(greet)
            seen.append("greet" in registry)

    load_plugins(entry_points=False, extra=[Plugin()])
    assert seen == [True]


def test_a_workflow_knows_the_package_version_and_source_it_runs_on(tmp_path, monkeypatch):
    """Issue 16: the registry names each workflow's code: package, version, fingerprint, and
    the routing token of package==version (the pinned route)."""
    import importlib
    import sys

    from durable_core._code import version_token

    def load(source: str, module: str):
        (tmp_path / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop(module, None)
        return importlib.import_module(module)

    body = "__version__ = '{v}'\nasync def wf(ctx):\n    return {r}\n"
    one = load(body.format(v="1.2.0", r=1), "code_id_one")
    two = load(body.format(v="1.2.0", r=2), "code_id_two")
    reg = WorkflowRegistry()
    reg.register(one.wf, name="one")
    reg.register(two.wf, name="two")
    reg.register(two.wf, name="three", version="9")
    a, b, c = reg.get("one").code, reg.get("two").code, reg.get("three").code
    assert (a.package, a.version) == ("code_id_one", "1.2.0")
    assert a.token == version_token("code_id_one", "1.2.0") != b.token
    assert a.token.startswith("v-") and "." not in a.token
    assert a.fingerprint != b.fingerprint  # different source, same version
    assert c.version == "9" and c.token != b.token and c.fingerprint == b.fingerprint


def test_only_the_chosen_installed_plugins_load() -> None:
    plugins = load_plugins(only=["hello_workflow"])
    assert plugins.registry.names() == ["hello_workflow"]
    assert load_plugins(only=[]).registry.names() == []
    with pytest.raises(ConfigError, match="plugin 'no_such_plugin' is not installed"):
        load_plugins(only=["no_such_plugin"])
