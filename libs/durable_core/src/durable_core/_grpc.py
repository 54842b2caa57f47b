"""gRPC plumbing: references to service methods, and one channel per address."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
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

    def address_of(self, service: str) -> str:
        """The configured address of a service, or ConfigError naming what is configured."""
        short = service.rsplit(".", 1)[-1]
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
