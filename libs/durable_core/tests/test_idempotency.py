"""IdempotencyStore: a keyed call runs once and is answered from its record, on a real NATS
server and a real grpc.aio server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from durable_core import EngineConfig
from durable_core._transport import Transport
from durable_core.config import NatsConfig
from durable_core.errors import InvalidInputError
from durable_core.idempotency import (
    ANSWER_METADATA,
    IdempotencyStore,
    _Admitted,
    _Busy,
    call_identity,
    record_name,
)
from durable_core.testing import NatsServer, assert_eventually_async

pytestmark = pytest.mark.slow

METHOD = "/test.Effects/Do"
OTHER = "/test.Effects/Other"


@dataclass
class Effects:
    """A service whose every run is counted; ``gate`` holds runs until it is set."""

    runs: list[bytes] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail_next: grpc.StatusCode | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    async def do(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.runs.append(request)
        run = len(self.runs)  # each run answers differently
        await self.gate.wait()
        if self.fail_next is not None:
            code, self.fail_next = self.fail_next, None
            await context.abort(code, "failed on purpose")
        return b"done:" + request + b":" + str(run).encode()


async def _serve(
    store: IdempotencyStore, effects: Effects, **kw: Any
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[store.interceptor(**kw)])
    handlers = {name: grpc.unary_unary_rpc_method_handler(effects.do) for name in ("Do", "Other")}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Effects", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def _held_service(
    transport: Transport, running_timeout: float
) -> AsyncIterator[tuple[IdempotencyStore, Effects, grpc.aio.Channel]]:
    """A service of its own whose runs wait at the gate, with a short ``running_timeout``."""
    store = IdempotencyStore(transport, running_timeout=timedelta(seconds=running_timeout))
    effects = Effects()
    effects.gate.clear()
    server, address = await _serve(store, effects)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield store, effects, channel
    finally:
        await server.stop(None)


@dataclass
class Rig:
    store: IdempotencyStore
    effects: Effects
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    transport: Transport

    def method(self, path: str = METHOD) -> Callable[..., Any]:
        return self.channel.unary_unary(path)

    def call(
        self,
        request: bytes = b"order-1",
        *,
        key: str | None = "inv-1:1",
        fence: int | None = 3,
        timeout: float | None = 10.0,
        path: str = METHOD,
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        metadata: list[tuple[str, str]] = []
        if key is not None:
            metadata.append(("idempotency-key", key))
        if fence is not None:
            metadata.append(("durable-fence", str(fence)))
        return self.method(path)(request, metadata=metadata, timeout=timeout)  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def rig(transport: Transport) -> AsyncIterator[Rig]:
    store = IdempotencyStore(transport)
    effects = Effects()
    server, address = await _serve(store, effects)
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Rig(store, effects, server, channel, transport)
    finally:
        await channel.close()
        await server.stop(None)


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    return e.value.code()


async def test_a_repeated_key_is_answered_from_its_record_without_running(rig: Rig) -> None:
    call = rig.call()
    first = await call
    assert first == b"done:order-1:1"
    assert await call.trailing_metadata() == grpc.aio.Metadata()
    again = rig.call(fence=3)
    assert await again == first
    assert (ANSWER_METADATA, "stored") in list(await again.trailing_metadata())
    assert await rig.call(fence=9) == first  # a later run of the step gets it too
    assert rig.effects.runs == [b"order-1"]
    rec = await rig.store.record(METHOD, "inv-1:1")
    assert rec is not None
    assert (rec.status, rec.answer, rec.fence) == ("done", first, 3)


async def test_the_record_outlives_the_service_and_its_connection(
    rig: Rig, server: NatsServer
) -> None:
    first = await rig.call()
    await rig.server.stop(None)
    # A new process of the service: a new connection, a new store, a new server.
    store = await IdempotencyStore.connect(
        NatsConfig.from_url(server.url), engine=rig.transport.engine
    )
    effects = Effects()
    again, address = await _serve(store, effects)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            md = [("idempotency-key", "inv-1:1"), ("durable-fence", "3")]
            assert await channel.unary_unary(METHOD)(b"order-1", metadata=md) == first
            md = [("idempotency-key", "inv-1:1"), ("durable-fence", "2")]
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary(METHOD)(b"order-1", metadata=md)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert effects.runs == []
    finally:
        await again.stop(None)
        await store.close()


async def test_a_lower_fence_is_refused_before_and_after_the_answer(rig: Rig) -> None:
    await rig.call(fence=5)
    code = await _code(rig.call(fence=4))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert rig.effects.runs == [b"order-1"]


async def test_a_call_while_another_runs_its_key_waits_for_that_answer(rig: Rig) -> None:
    first = await _held_call(rig)
    second = asyncio.ensure_future(rig.call(fence=3))
    await asyncio.sleep(0.3)
    assert not second.done()
    rig.effects.gate.set()
    assert await first == await second == b"done:order-1:1"
    assert rig.effects.runs == [b"order-1"]


async def test_a_higher_fence_while_a_run_holds_the_key_refuses_the_superseded_runs_calls(
    rig: Rig,
) -> None:
    first = await _held_call(rig, fence=3)
    # The run that took over calls while the first is still in the service: it waits, and
    # raises the fence, so another call of the superseded run is refused at once.
    taker = asyncio.ensure_future(rig.call(fence=7))
    await assert_eventually_async(lambda: _fence_is(rig, 7), 10, "the fence raised to 7")
    assert await _code(rig.call(fence=3)) == grpc.StatusCode.FAILED_PRECONDITION
    rig.effects.gate.set()
    assert await first == await taker
    assert len(rig.effects.runs) == 1


async def test_a_waiting_call_ends_aborted_at_its_own_deadline(rig: Rig) -> None:
    first = await _held_call(rig, timeout=20)
    assert await _code(rig.call(timeout=0.6)) == grpc.StatusCode.ABORTED
    rig.effects.gate.set()
    await first


async def test_a_failed_call_keeps_no_answer_and_runs_again(rig: Rig) -> None:
    rig.effects.fail_next = grpc.StatusCode.UNAVAILABLE
    assert await _code(rig.call(fence=3)) == grpc.StatusCode.UNAVAILABLE

    async def released() -> bool:
        # (grpc.aio sends an abort's status before the handler's own `finally` has run)
        rec = await rig.store.record(METHOD, "inv-1:1")
        return rec is not None and rec.status == "running" and rec.expires_ms == 0

    await assert_eventually_async(released, 10, "the key released, with no answer")
    assert await rig.call(fence=3) == b"done:order-1:2"
    assert len(rig.effects.runs) == 2


async def test_a_hold_whose_service_died_lapses_and_the_next_attempt_runs(rig: Rig) -> None:
    # An attempt that took the key and never finished (its service died): held 0.5 s.
    dying = IdempotencyStore(rig.transport, running_timeout=timedelta(seconds=0.5))
    assert isinstance(await dying.begin(METHOD, "inv-1:1", 3, "", None), _Admitted)
    assert await rig.call(fence=3) == b"done:order-1:1"
    assert rig.effects.runs == [b"order-1"]


async def test_a_hold_is_renewed_while_its_handler_runs_past_it(rig: Rig) -> None:
    """A call without a deadline is held ``running_timeout`` (0.4 s here); its handler runs
    1.5 s. The hold used to lapse at 0.4 s, never renewed: a second attempt (another run's,
    after a failover) took the key over and ran the effect beside the first. Renewed every
    third of the hold, the second attempt waits and gets the first one's answer."""
    async with _held_service(rig.transport, 0.4) as (_, effects, channel):
        md = [("idempotency-key", "inv-9:1"), ("durable-fence", "3")]
        first = asyncio.ensure_future(channel.unary_unary(METHOD)(b"o", metadata=md))
        await assert_eventually_async(lambda: len(effects.runs) == 1, 10, "run 1 in")
        await asyncio.sleep(0.6)  # past the first hold
        second = asyncio.ensure_future(channel.unary_unary(METHOD)(b"o", metadata=md))
        await asyncio.sleep(0.9)
        assert effects.runs == [b"o"], "the key was taken over from a running handler"
        effects.gate.set()
        assert await first == await second == b"done:o:1"
    assert effects.runs == [b"o"]


async def test_when_a_lapsed_attempt_and_its_successor_both_answer_every_caller_gets_one(
    rig: Rig,
) -> None:
    # An attempt held 0.4 s whose process froze (no renewal): the next attempt takes the key
    # over and runs too (the case the store cannot prevent). When the frozen one wakes and
    # answers, the answer recorded first stands for both.
    frozen = IdempotencyStore(rig.transport, running_timeout=timedelta(seconds=0.4))
    held = await frozen.begin(METHOD, "inv-9:1", 3, "", None)
    assert isinstance(held, _Admitted)
    await asyncio.sleep(0.6)  # its hold lapses
    answer = await rig.call(b"o", key="inv-9:1", fence=3)
    assert answer == b"done:o:1"
    assert await frozen.finish(held, b"the frozen one's answer") == answer
    rec = await rig.store.record(METHOD, "inv-9:1")
    assert rec is not None and rec.status == "done" and rec.answer == answer


async def test_a_key_held_by_a_dead_process_of_the_same_instance_is_taken_over_at_once(
    rig: Rig,
) -> None:
    # A process of instance "svc-a" took the key (held 35 s) and died with the call in flight.
    dead = IdempotencyStore(rig.transport, instance="svc-a")
    assert isinstance(await dead.begin(METHOD, "inv-5:1", 3, "", 30.0), _Admitted)
    # Another instance cannot tell whether the holder lives: it waits.
    other = IdempotencyStore(rig.transport, instance="svc-b")
    assert isinstance(await other.begin(METHOD, "inv-5:1", 3, "", 30.0), _Busy)
    # The instance's next process knows its predecessor is gone: the call runs now.
    effects = Effects()
    again = IdempotencyStore(rig.transport, instance="svc-a")
    server, address = await _serve(again, effects)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            md = [("idempotency-key", "inv-5:1"), ("durable-fence", "3")]
            answer = await channel.unary_unary(METHOD)(b"o", metadata=md, timeout=2)
        assert answer == b"done:o:1" and effects.runs == [b"o"]
    finally:
        await server.stop(None)


async def test_a_handler_whose_caller_gave_up_runs_on_and_its_answer_stands(rig: Rig) -> None:
    """grpc.aio cancels a handler when its caller goes away (a processor killed mid-call) or
    its deadline passes. A handler cancelled after its effect released the key: the retry
    (the next run's) ran the effect again, with no process dead. It runs on now, and the
    retry waits for its answer."""
    rig.effects.gate.clear()
    assert await _code(rig.call(timeout=0.5)) == grpc.StatusCode.DEADLINE_EXCEEDED
    retry = asyncio.ensure_future(rig.call(fence=4, timeout=10))
    await asyncio.sleep(0.5)
    rig.effects.gate.set()
    assert await retry == b"done:order-1:1"
    assert rig.effects.runs == [b"order-1"]


async def test_a_handler_that_returns_as_its_call_is_cancelled_keeps_its_answer(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio may cancel a call (its deadline) just as its handler returns: the handler's
    task is done, with its result, when the cancellation reaches the interceptor. That was
    taken for the handler's own CancelledError, and the key released after the effect: the
    retry ran it again (2 of 60 keys with a handler ending at its deadline). Made certain
    here: the interceptor's wait for the handler is cancelled right after it returns."""
    real_shield = asyncio.shield

    def returned_then_cancelled(inner: Any) -> Any:
        coro = inner.get_coro() if isinstance(inner, asyncio.Task) else None
        if getattr(coro, "__qualname__", "") != "_handle":
            return real_shield(inner)

        async def wait() -> Any:
            await inner
            raise asyncio.CancelledError

        return wait()

    monkeypatch.setattr(asyncio, "shield", returned_then_cancelled)
    ended = await _code(rig.call(timeout=1))
    assert ended in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
    monkeypatch.setattr(asyncio, "shield", real_shield)
    assert await rig.call(fence=4) == b"done:order-1:1"
    assert rig.effects.runs == [b"order-1"]


async def test_a_handler_that_hangs_after_its_call_ended_is_cancelled_at_running_timeout(
    rig: Rig,
) -> None:
    """Run on after its call ended, a handler that never returns would hold its key (renewed)
    for good: it is cancelled after ``running_timeout`` (1 s here), its key released."""
    async with _held_service(rig.transport, 1.0) as (store, effects, channel):
        md = [("idempotency-key", "inv-8:1"), ("durable-fence", "3")]
        call = channel.unary_unary(METHOD)(b"o", metadata=md, timeout=0.3)
        assert await _code(call) == grpc.StatusCode.DEADLINE_EXCEEDED

        async def released() -> bool:
            rec = await store.record(METHOD, "inv-8:1")
            return rec is not None and rec.status == "running" and rec.expires_ms == 0

        await assert_eventually_async(released, 5, "the hung handler's key released")
        effects.gate.set()
        assert await channel.unary_unary(METHOD)(b"o", metadata=md, timeout=5) == b"done:o:2"


async def test_a_lapsed_hold_renewed_meanwhile_is_not_taken_over(rig: Rig) -> None:
    """A hold lapses when its holder cannot reach NATS to renew it, too. Once NATS answers
    again, a retry that read the record lapsed took the key over at once, while the live
    holder's renewal or answer was landing: the effect ran twice. A lapse now stands only if
    the record stays unchanged for a moment."""
    cut_off = IdempotencyStore(rig.transport, running_timeout=timedelta(seconds=0.4))
    held = await cut_off.begin(METHOD, "inv-1:1", 3, "", None)
    assert isinstance(held, _Admitted)
    await asyncio.sleep(0.6)  # lapsed: it could not renew
    retry = asyncio.ensure_future(rig.call(fence=3, timeout=10))
    await asyncio.sleep(0.3)
    renewed = await cut_off.renew(held)  # NATS is back: its renewal lands
    assert renewed is not None
    await asyncio.sleep(0.3)
    assert await cut_off.finish(renewed, b"the holder's answer") == b"the holder's answer"
    assert await retry == b"the holder's answer"
    assert rig.effects.runs == []


async def test_a_draining_store_refuses_new_keyed_calls_and_waits_for_running_ones(
    rig: Rig,
) -> None:
    first = await _held_call(rig, timeout=10)
    drained = asyncio.ensure_future(rig.store.drain(10))
    await asyncio.sleep(0.2)
    assert await _code(rig.call(key="inv-2:1", timeout=5)) == grpc.StatusCode.UNAVAILABLE
    assert not drained.done()
    rig.effects.gate.set()
    assert await drained is True
    assert await first == b"done:order-1:1"
    assert rig.effects.runs == [b"order-1"]


async def test_close_waits_for_the_handlers_still_running(rig: Rig) -> None:
    """A service stopping closed its store at once: a handler that grpc had not yet cancelled
    (or was cancelling) could not record its answer, and the service's successor ran its key
    again. The store now waits for its running handlers' answers."""
    call = await _held_call(rig, timeout=10)
    closing = asyncio.ensure_future(rig.store.close())
    await asyncio.sleep(0.3)
    assert not closing.done()
    rig.effects.gate.set()
    await asyncio.wait_for(closing, 5)
    rec = await rig.store.record(METHOD, "inv-1:1")
    assert rec is not None and rec.status == "done"
    assert await call == b"done:order-1:1"


async def test_a_key_reused_with_another_request_is_refused(rig: Rig) -> None:
    await rig.call(b"order-1")
    assert await _code(rig.call(b"order-2")) == grpc.StatusCode.INVALID_ARGUMENT
    assert rig.effects.runs == [b"order-1"]


async def test_calls_without_a_key_and_methods_not_covered_pass_through(
    transport: Transport,
) -> None:
    store = IdempotencyStore(transport)
    effects = Effects()
    server, address = await _serve(store, effects, methods=[METHOD])
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            for _ in range(2):
                await channel.unary_unary(METHOD)(b"a")  # no key
                md = [("idempotency-key", "k:1")]
                await channel.unary_unary(OTHER)(b"b", metadata=md)  # not covered
            await channel.unary_unary(METHOD)(b"c", metadata=md)
            await channel.unary_unary(METHOD)(b"c", metadata=md)
        assert effects.runs == [b"a", b"b", b"a", b"b", b"c"]
        assert await store.record(OTHER, "k:1") is None
    finally:
        await server.stop(None)


async def test_before_the_engine_exists_a_keyed_call_is_unavailable_then_served(
    server: NatsServer,
) -> None:
    engine = EngineConfig(prefix="t" + uuid.uuid4().hex[:8])
    store = await IdempotencyStore.connect(server.url, engine=engine, wait_for_engine=timedelta(0))
    effects = Effects()
    grpc_server, address = await _serve(store, effects)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(METHOD)
            md = [("idempotency-key", "k:1"), ("durable-fence", "1")]
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"a", metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "idempotency store unavailable" in (e.value.details() or "")
            assert effects.runs == []
            made = await Transport.connect(NatsConfig.from_url(server.url), engine, create=True)
            try:
                assert await call(b"a", metadata=md) == await call(b"a", metadata=md)
            finally:
                await made.close()
        assert effects.runs == [b"a"]
    finally:
        await grpc_server.stop(None)
        await store.close()


def test_call_identity_reads_the_key_and_a_numeric_fence() -> None:
    assert call_identity([("idempotency-key", "a:1"), ("durable-fence", "12")]) == ("a:1", 12)
    assert call_identity([("idempotency-key", b"a:1")]) == ("a:1", None)
    assert call_identity([("durable-fence", str(2**64 - 1))]) == ("", 2**64 - 1)
    assert call_identity(None) == ("", None)


@pytest.mark.parametrize("fence", ["x", "-1", "+1", " 1", "1.0", "²", str(2**64), "9" * 5000])
def test_a_malformed_fence_is_refused_not_dropped(fence: str) -> None:
    with pytest.raises(InvalidInputError, match="durable-fence .* is not a decimal number"):
        call_identity([("idempotency-key", "a:1"), ("durable-fence", fence)])


async def test_a_call_with_a_malformed_fence_never_runs(rig: Rig) -> None:
    """A fence the caller meant but malformed is refused (INVALID_ARGUMENT), not taken as no
    fence: a superseded run's call must not slip through on a garbled fence."""
    call = rig.method(METHOD)(
        b"order-1", metadata=[("idempotency-key", "k"), ("durable-fence", "1x")]
    )
    assert await _code(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert rig.effects.runs == []
    assert await rig.store.record(METHOD, "k") is None
    assert record_name(METHOD, "a:1") != record_name(OTHER, "a:1")
    assert len(record_name(METHOD, "x" * 10_000)) == 48


async def _held_call(rig: Rig, **kw: Any) -> asyncio.Future[Any]:
    """A call whose handler has started and waits at the gate (closed here)."""
    rig.effects.gate.clear()
    call = asyncio.ensure_future(rig.call(**kw))
    await _running(rig)
    return call


async def _running(rig: Rig) -> None:
    await assert_eventually_async(lambda: len(rig.effects.runs) == 1, 10, "the first call in")


async def _fence_is(rig: Rig, fence: int) -> bool:
    rec = await rig.store.record(METHOD, "inv-1:1")
    return rec is not None and rec.fence == fence


async def test_the_bucket_keeps_records_for_keep(transport: Transport) -> None:
    IdempotencyStore(transport, keep=timedelta(hours=1))
    await transport.put_call_record("x", b"{}", 0)
    info = await transport.js.stream_info(f"KV_{transport.names.calls_bucket}")
    assert info.config.max_age == 3600
