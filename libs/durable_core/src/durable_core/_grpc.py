"""gRPC plumbing: references to service methods, and one channel per address."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import grpc
import grpc.aio

from durable_core.errors import ConfigError

log = logging.getLogger("durable_core.grpc")

# gRPC's default reconnect backoff grows from 1 s to 120 s, and a channel waiting it out fails
# every call at once: a service that was down for 25 s was reached again only 14.5 s after it
# came back. Capped at 1 s, a restarted service is called again within about a second; a
# refused connection costs next to nothing, so trying once a second is cheap.
#
# Keepalive: a call (one without a deadline above all) on a connection that died half-open (the
# service's host lost power, a NAT dropped the flow) never returned, and its invocation stayed
# RUNNING for good. While calls are in flight the channel pings every 5 minutes and gives the
# connection up after 20 s without an answer (the call ends UNAVAILABLE and is retried). Not
# more often: a gRPC server by default takes pings closer than 5 minutes on a connection that
# sends it nothing (a long unary call) as abuse, and closes it (GOAWAY "too_many_pings") at the
# third, which would fail long calls to services we do not run. ``max_pings_without_data`` 0:
# the client itself would otherwise stop pinging after two pings without sending data. gRPC
# (1.85) waits for a ping's answer ``ping_timeout_ms`` (default 60 s), not the keepalive
# timeout, so both are set.
#
# The receive limit is lifted (gRPC's default is 4 MB): a larger answer ended RESOURCE_EXHAUSTED,
# which is retried, so the service ran its effect again for an answer that could never arrive.
# The engine limits what it keeps itself: an answer over ``max_object_size`` fails the step
# (PayloadTooLargeError) once, without a retry.
KEEPALIVE_TIME_MS = 300_000
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.ping_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True, slots=True)
class MethodRef(Generic[Req, Resp]):
    """A unary gRPC method, not bound to any channel.

    The engine binds it to the channel of the service's configured address at call time.
    """

    service: str
    method: str
    request_serializer: Callable[[Any], bytes]
    response_deserializer: Callable[[bytes], Any]

    @property
    def path(self) -> str:
        """The gRPC method path, e.g. ``/pkg.Service/Method``."""
        return f"/{self.service}/{self.method}"


class _RecordingChannel:
    """Stands in for a channel so a generated stub reveals its method paths."""

    def __init__(self) -> None:
        self.unary: dict[str, tuple[str, Any, Any]] = {}
        self.other: set[str] = set()

    def unary_unary(
        self,
        path: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> None:
        self.unary[path.rsplit("/", 1)[1]] = (path, request_serializer, response_deserializer)

    def _streaming(self, path: str, *_: Any, **__: Any) -> None:
        self.other.add(path.rsplit("/", 1)[1])

    unary_stream = stream_unary = stream_stream = _streaming


class ServiceRef:
    """The methods of a generated gRPC stub class, usable with ``ctx.call``.

    Example:
        >>> hello = grpc_service(HelloServiceStub)
        >>> resp = await ctx.call(hello.SayHello, HelloRequest(name="Ada"))
    """

    def __init__(self, stub_class: type) -> None:
        rec = _RecordingChannel()
        try:
            stub_class(rec)
        except Exception as e:
            raise ConfigError(f"{stub_class!r} is not a generated gRPC stub class: {e}") from e
        if not rec.unary and not rec.other:
            raise ConfigError(f"{stub_class.__name__} declares no gRPC methods")
        any_path = next(iter(p for p, _, _ in rec.unary.values()), None)
        self.name = any_path.split("/")[1] if any_path else stub_class.__name__.removesuffix("Stub")
        self._methods: dict[str, MethodRef[Any, Any]] = {
            name: MethodRef(self.name, name, _deterministic(ser), de)
            for name, (_, ser, de) in rec.unary.items()
        }
        self._streaming = rec.other

    def __getattr__(self, name: str) -> MethodRef[Any, Any]:
        try:
            return self._methods[name]
        except KeyError:
            if name in self._streaming:
                raise ConfigError(
                    f"{self.name}.{name} is a streaming method; durable steps call unary methods"
                ) from None
            raise AttributeError(f"{self.name} has no method {name!r}") from None

    @property
    def methods(self) -> Mapping[str, MethodRef[Any, Any]]:
        """The unary methods by name."""
        return dict(self._methods)

    def __repr__(self) -> str:
        return f"ServiceRef({self.name})"


def _deterministic(serializer: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A request serializer that gives the same bytes for the same message in every process.

    The step's input hash and the idempotency store's request hash are taken over these bytes,
    and the generated ``SerializeToString`` writes a map's entries in an order that changes
    from process to process: a request with a map (or a ``Struct``) replayed on another
    processor diverged (the invocation blocked for good), and its retry after a crash was
    refused by the service as another request. Messages without maps get the same bytes as
    before, so journals already written still match."""

    def serialize(message: Any) -> bytes:
        to_bytes = getattr(message, "SerializeToString", None)
        if to_bytes is None:
            return serializer(message)
        return cast(bytes, to_bytes(deterministic=True))

    return serialize


def module_values(fn: Callable[..., Any]) -> list[Any]:
    """What the module that defines ``fn`` holds at its top level (where a workflow's
    ``ServiceRef``s and message types are found)."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return list(vars(module).values()) if module is not None else []


def _short(service: str) -> str:
    return service.rsplit(".", 1)[-1]


def grpc_service(stub_class: type) -> ServiceRef:
    """Make a generated gRPC stub class usable with ``ctx.call`` (see ServiceRef)."""
    return ServiceRef(stub_class)


class ChannelPool:
    """One gRPC channel per address, reused by every step that calls it.

    Addresses come from configuration: a mapping from full service name (e.g.
    ``durable_examples.hello.v1.HelloService``) or its short name (``HelloService``) to
    ``host:port``; the key ``"*"`` is the fallback. ``defaults`` (contributed by plugins) are
    used only for services the configuration does not cover, fallback included.
    """

    def __init__(
        self, addresses: Mapping[str, str], defaults: Mapping[str, str] | None = None
    ) -> None:
        self._addresses = dict(addresses)
        self._defaults = dict(defaults or {})
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    def check_addresses(self, workflows: Iterable[tuple[str, Callable[..., Any]]]) -> None:
        """Refuse (ConfigError, one line) when a gRPC service that one of ``workflows``
        (name, function) calls has no address. Its calls would fail with ConfigError, which
        reaches the workflow and fails the invocation for good, although a processor that
        has the address could run it; so a processor without one must not start.

        The services are those the ``ServiceRef`` objects at the top level of a workflow's
        module name (as the fleet registry finds the message types). A ServiceRef made inside
        a function is not seen: its missing address still shows only at the call."""
        callers: dict[str, list[str]] = {}
        for name, fn in workflows:
            for value in module_values(fn):
                if isinstance(value, ServiceRef) and not self._has_address(value.name):
                    callers.setdefault(value.name, []).append(name)
        if callers:
            missing = "; ".join(
                f"{service} (called by {', '.join(names)}: set services.{_short(service)} in "
                f"settings or DURABLE_SERVICES__{_short(service)}=host:port)"
                for service, names in callers.items()
            )
            raise ConfigError(f"no address configured for gRPC service {missing}")

    def _has_address(self, service: str) -> bool:
        try:
            self.address_of(service)
        except ConfigError:
            return False
        return True

    def address_of(self, service: str) -> str:
        """The configured address of a service, or ConfigError naming what is configured."""
        short = _short(service)
        for table, keys in (
            (self._addresses, (service, short, "*")),
            (self._defaults, (service, short)),
        ):
            for key in keys:
                if key in table:
                    return table[key]
        known = ", ".join(sorted({**self._defaults, **self._addresses})) or "none"
        raise ConfigError(
            f"no address configured for gRPC service {service} (configured: {known}); "
            f"set services.{short} in settings or DURABLE_SERVICES__{short}=host:port"
        )

    def callable_for(
        self, method: MethodRef[Any, Any]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """The unary callable for a method on its service's shared channel."""
        address = self.address_of(method.service)
        key = (address, method.path)
        fn = self._callables.get(key)
        if fn is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
                self._channels[address] = channel
                log.debug("opened gRPC channel to %s", address)
            fn = channel.unary_unary(
                method.path,
                request_serializer=method.request_serializer,
                response_deserializer=method.response_deserializer,
            )
            self._callables[key] = fn
        return fn

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._callables.clear()
