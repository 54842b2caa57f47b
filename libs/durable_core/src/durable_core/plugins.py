"""Plugins: workflow packages discovered through pluggy entry points.

A workflow package declares, in its ``pyproject.toml``::

    [project.entry-points."durable.plugins"]
    my_workflows = "my_package"

and implements hooks in that module::

    from durable_core import hookimpl

    @hookimpl
    def durable_register_workflows(registry):
        registry.register(my_workflow)
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from durable_core._code import CodeIdentity, code_identity
from durable_core._naming import check_workflow_name
from durable_core.errors import ConfigError, NotFoundError
from durable_core.interceptors import Interceptor
from durable_core.retry import RetryPolicy

__all__ = [
    "PLUGIN_GROUP",
    "PluginSet",
    "ServiceDefaults",
    "WorkflowRegistry",
    "hookimpl",
    "hookspec",
    "load_plugins",
]

PLUGIN_GROUP = "durable.plugins"
"""The entry-point group in which workflow packages register their plugin module."""

log = logging.getLogger(__name__)

hookspec = pluggy.HookspecMarker("durable")
hookimpl = pluggy.HookimplMarker("durable")

WorkflowFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Workflow:
    """A registered workflow: its name, function, and its declared input and output types."""

    name: str
    fn: WorkflowFn
    takes_input: bool
    plugin: str = ""
    input_type: Any = None
    output_type: Any = None
    retry: RetryPolicy | None = None
    version: str = ""  # the registration's version, if it gave one (see ``code``)

    @property
    def code(self) -> CodeIdentity:
        """The code it runs on: package, version, source fingerprint (``durable_core._code``;
        worked out on first use, not at registration: a CLI or a client that loads plugins
        never needs it)."""
        return code_identity(self.fn, version=self.version)


def _positional(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    return [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def workflow_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` takes (a workflow: 1 or 2, ``(ctx[, input])``)."""
    return len(_positional(fn))


def workflow_signature(fn: Callable[..., Any]) -> tuple[bool, Any, Any]:
    """Whether ``fn(ctx[, input])`` takes an input, and its input and output type hints."""
    params = _positional(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: treat as untyped
        hints = {}
    takes_input = len(params) == 2
    input_type = hints.get(params[1].name) if takes_input else None
    return takes_input, input_type, hints.get("return")


class _RegisteredTwiceError(ConfigError):
    """Two functions registered under one workflow name (``first`` and ``second``: the
    plugins that registered them)."""

    def __init__(self, workflow: str, first: str, second: str) -> None:
        super().__init__(
            f"workflow {workflow} is registered twice (by {first or '?'} and {second or '?'})"
        )
        self.workflow, self.first, self.second = workflow, first, second


class WorkflowRegistry:
    """Workflows by name."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def register(
        self,
        fn: WorkflowFn,
        *,
        name: str | None = None,
        plugin: str = "",
        retry: RetryPolicy | None = None,
        version: str = "",
    ) -> WorkflowFn:
        """Register ``async def fn(ctx[, input])`` under ``name`` (default: its __name__).

        ``retry`` is the workflow's default RetryPolicy for its steps (a step's own ``retry=``
        wins; without either, RetryPolicy() applies). ``version`` overrides the version of the
        code (default: the installed package's; see ``durable_core._code``).
        """
        wf_name = check_workflow_name(name or fn.__name__)
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"workflow {wf_name} must be an async def function")
        arity = workflow_arity(fn)
        if arity not in (1, 2):
            raise ConfigError(
                f"workflow {wf_name} must take (ctx) or (ctx, input), not {arity} arguments"
            )
        takes_input, input_type, output_type = workflow_signature(fn)
        existing = self._workflows.get(wf_name)
        if existing is not None and existing.fn is not fn:
            raise _RegisteredTwiceError(wf_name, existing.plugin, plugin)
        self._workflows[wf_name] = Workflow(
            wf_name,
            fn,
            takes_input,
            plugin,
            input_type,
            output_type,
            retry,
            version,
        )
        if wf_name != fn.__name__:
            fn.__durable_workflow__ = wf_name  # type: ignore[attr-defined] # client.invoke(fn)
        return fn

    def get(self, name: str) -> Workflow:
        """The workflow named ``name``, or NotFoundError listing the known ones."""
        try:
            return self._workflows[name]
        except KeyError:
            raise NotFoundError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The NotFoundError message for an unknown workflow ``name`` (names the known ones)."""
        known = ", ".join(sorted(self._workflows)) or "none"
        return (
            f"unknown workflow {name!r}; known workflows: {known}. "
            "Install the plugin package that provides it."
        )

    def names(self) -> list[str]:
        """The registered workflow names, sorted."""
        return sorted(self._workflows)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows

    def __iter__(self) -> Iterator[Workflow]:
        return iter(self._workflows.values())

    def __len__(self) -> int:
        return len(self._workflows)


class DurableHookSpecs:
    """The hooks a plugin may implement (all optional)."""

    @hookspec
    def durable_register_workflows(self, registry: WorkflowRegistry) -> None:
        """Register the plugin's workflows with ``registry.register(fn)``."""

    @hookspec
    def durable_service_addresses(self) -> Mapping[str, str]:  # type: ignore[empty-body]
        """Default gRPC addresses (service name -> host:port); configuration overrides them."""

    @hookspec
    def durable_interceptors(self) -> Iterable[Interceptor]:  # type: ignore[empty-body]
        """Interceptors to wrap workflow runs and steps with."""


class ServiceDefaults(dict[str, str]):
    """The default service addresses the plugins contributed (service name -> host:port).

    ``conflicts`` holds the services for which two plugins gave different addresses (service
    -> {plugin: address}): none of them may be guessed, so a processor refuses to start unless
    its configuration gives the address (``check_configured``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conflicts: dict[str, dict[str, str]] = {}

    def check_configured(self, configured: Mapping[str, str]) -> None:
        """ConfigError (one line) naming every service whose plugins disagree on its default
        address and that ``configured`` (the settings' ``services``: full name, short name
        or the ``"*"`` fallback, as ``ChannelPool`` looks them up) does not cover."""
        unresolved = []
        for service, by_plugin in sorted(self.conflicts.items()):
            short = service.rsplit(".", 1)[-1]
            if any(key in configured for key in (service, short, "*")):
                continue
            given = ", ".join(f"{addr} (plugin {plugin})" for plugin, addr in by_plugin.items())
            unresolved.append(
                f"{service}: {given}; set services.{short} in settings or "
                f"DURABLE_SERVICES__{short}=host:port"
            )
        if unresolved:
            raise ConfigError(
                "plugins give different default addresses for gRPC service " + "; ".join(unresolved)
            )


@dataclass(slots=True)
class PluginSet:
    """What the loaded plugins contributed."""

    registry: WorkflowRegistry
    service_addresses: ServiceDefaults = field(default_factory=ServiceDefaults)
    interceptors: list[Interceptor] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    """The name of the distribution (package) that declares ``ep``, or "?"."""
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else "?"


def _installed_plugins() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The entry points of PLUGIN_GROUP by name, one per distribution that declares it."""
    by_name: dict[str, dict[str, importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        by_name.setdefault(ep.name, {}).setdefault(_dist_name(ep), ep)
    return {name: list(dists.values()) for name, dists in by_name.items()}


def _one_entry_point(
    name: str, eps: list[importlib.metadata.EntryPoint]
) -> importlib.metadata.EntryPoint:
    """The entry point of plugin ``name``; ConfigError if two packages declare that name
    (pluggy would load the first one found and silently skip the other's workflows)."""
    if len(eps) > 1:
        packages = " and ".join(sorted(_dist_name(ep) for ep in eps))
        raise ConfigError(
            f"plugin name {name!r} (entry-point group {PLUGIN_GROUP}) is declared by two "
            f"packages: {packages}; only one of them would load: rename the entry point in "
            "one package or uninstall one"
        )
    return eps[0]


def _failed(name: str, dist: str | None, e: BaseException) -> ConfigError:
    where = f"plugin {name!r} ({dist})" if dist else f"plugin {name!r}"
    detail = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
    return ConfigError(f"{where} failed to load: {detail}")


def load_plugins(
    *,
    entry_points: bool = True,
    extra: Iterable[object] = (),
    only: Iterable[str] | None = None,
) -> PluginSet:
    """Discover plugins and collect their workflows, addresses and interceptors.

    Args:
        entry_points: load the installed packages registered under PLUGIN_GROUP.
        extra: more plugin objects or modules (tests, embedding).
        only: load just these installed plugins (entry-point names); None: all of them.

    Raises:
        ConfigError: ``only`` names a plugin that is not installed; two packages declare a
            plugin of one name; a plugin fails to import or one of its hooks fails (the
            message names the plugin and its package).
    """
    pm = pluggy.PluginManager("durable")
    pm.add_hookspecs(DurableHookSpecs)
    dists: dict[str, str] = {}  # plugin name -> the package that declares it
    if entry_points:
        installed = _installed_plugins()
        if only is None:
            wanted = sorted(installed)
        else:
            wanted = sorted(set(only))
            for name in wanted:
                if name not in installed:
                    raise ConfigError(
                        f"plugin {name!r} is not installed; installed plugins: "
                        f"{', '.join(sorted(installed)) or 'none'}"
                    )
        chosen = [(name, _one_entry_point(name, installed[name])) for name in wanted]
        for name, ep in chosen:
            dists[name] = _dist_name(ep)
            try:
                pm.register(ep.load(), name=name)
            except Exception as e:
                raise _failed(name, dists[name], e) from e
    for plugin in extra:
        pm.register(plugin)
    registry = WorkflowRegistry()
    out = PluginSet(registry)
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        out.plugins.append(name)
        impl = getattr(plugin, "durable_register_workflows", None)
        if impl is not None:
            try:
                impl(registry=_Tagged(registry, name))
            except _RegisteredTwiceError as e:
                # Neither plugin failed: name both, with their packages.
                both = " and ".join(
                    f"{p!r} ({dists[p]})" if p in dists else repr(p) for p in (e.first, e.second)
                )
                raise ConfigError(
                    f"workflow {e.workflow} is registered twice, by plugins {both}: uninstall "
                    "one, or have one register it under another name"
                ) from e
            except Exception as e:
                raise _failed(name, dists.get(name), e) from e
    try:
        pm.check_pending()  # a misspelled hook name is an error, not silently ignored
    except pluggy.PluginValidationError as e:
        name = pm.get_name(e.plugin) or repr(e.plugin)
        raise _failed(name, dists.get(name), e) from e
    # In the order pluggy calls them (last registered first); the first registered wins.
    given: dict[str, dict[str, str]] = {}
    for impl in reversed(pm.hook.durable_service_addresses.get_hookimpls()):
        try:
            given_here = typing.cast(Mapping[str, str] | None, impl.function())
            addresses = {str(k): str(v) for k, v in dict(given_here or {}).items()}
        except Exception as e:
            raise _failed(impl.plugin_name, dists.get(impl.plugin_name), e) from e
        out.service_addresses.update(addresses)
        for service, address in addresses.items():
            given.setdefault(service, {})[impl.plugin_name] = address
    for service, by_plugin in given.items():
        if len(set(by_plugin.values())) > 1:
            out.service_addresses.conflicts[service] = dict(sorted(by_plugin.items()))
    for impl in reversed(pm.hook.durable_interceptors.get_hookimpls()):
        try:
            out.interceptors.extend(
                typing.cast(Iterable[Interceptor] | None, impl.function()) or ()
            )
        except Exception as e:
            raise _failed(impl.plugin_name, dists.get(impl.plugin_name), e) from e
    out.plugins.sort()
    _warn_idle(pm, registry, dists)
    return out


def _warn_idle(
    pm: pluggy.PluginManager, registry: WorkflowRegistry, dists: Mapping[str, str]
) -> None:
    """Log each plugin that contributes nothing: most likely a hook misnamed without @hookimpl
    (a misnamed hook *with* it is an error already), or a hook that registers nothing."""
    busy = {wf.plugin for wf in registry}
    for hook in (pm.hook.durable_service_addresses, pm.hook.durable_interceptors):
        busy.update(impl.plugin_name for impl in hook.get_hookimpls())
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin) or repr(plugin)
        if name not in busy:
            package = f" (package {dists[name]})" if name in dists else ""
            log.warning(
                "plugin %r%s registers no workflow, service address or interceptor: are its "
                "hooks named durable_register_workflows, durable_service_addresses or "
                "durable_interceptors?",
                name,
                package,
            )


class _Tagged(WorkflowRegistry):
    """A view of a registry that records which plugin registered each workflow."""

    def __init__(self, inner: WorkflowRegistry, plugin: str) -> None:
        super().__init__()
        self._workflows = inner._workflows  # one table: lookups through the view see it all
        self._inner = inner
        self._plugin = plugin

    def register(
        self,
        fn: WorkflowFn,
        *,
        name: str | None = None,
        plugin: str = "",
        retry: RetryPolicy | None = None,
        version: str = "",
    ) -> WorkflowFn:
        return self._inner.register(
            fn, name=name, plugin=plugin or self._plugin, retry=retry, version=version
        )
