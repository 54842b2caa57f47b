"""The replay state machine, on its own: no event loop, no NATS, no gRPC."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from durable_core import _codec, _journal
from durable_core._journal import Execute, Replay, ReplayMachine
from durable_core._pb.durable.v1 import durable_pb2 as pb
from durable_core.errors import NonDeterminismError

CALL, RUN = pb.ENTRY_KIND_CALL, pb.ENTRY_KIND_RUN
SAY_HELLO = "/durable_examples.hello.v1.HelloService/SayHello"


def entry(
    kind: pb.EntryKind, step: int, name: str, *, value: object = None, input_hash: bytes = b""
) -> pb.JournalEntry:
    e = pb.JournalEntry(kind=kind, step=step, name=name, input_hash=input_hash)
    e.output.CopyFrom(_codec.encode(value))
    return e


def h(data: bytes) -> bytes:
    return _codec.input_hash(data)


def test_replays_recorded_steps_then_executes_new_ones() -> None:
    recorded = [
        entry(RUN, 1, "pick", value=7, input_hash=h(b"a")),
        entry(CALL, 2, SAY_HELLO, value="hi", input_hash=h(b"b")),
    ]
    m = ReplayMachine("inv-1", recorded)
    assert m.recorded_steps == 2
    assert m.is_replaying

    first = m.next_step(RUN, "pick", h(b"a"))
    assert isinstance(first, Replay)
    assert first.step == 1
    assert _codec.decode(first.entry.output) == 7
    assert m.is_replaying  # step 2 is still ahead

    second = m.next_step(CALL, SAY_HELLO, h(b"b"))
    assert isinstance(second, Replay)
    assert _codec.decode(second.entry.output) == "hi"
    assert not m.is_replaying

    third = m.next_step(RUN, "new", h(b"c"))
    assert third == Execute(3)
    assert m.steps_taken == 3


def test_empty_journal_executes_every_step() -> None:
    m = ReplayMachine("inv-1")
    assert not m.is_replaying
    assert m.next_step(RUN, "a", h(b"")) == Execute(1)
    assert m.next_step(CALL, SAY_HELLO, h(b"")) == Execute(2)
    assert m.final is None


def test_recording_an_executed_step_does_not_restart_replay() -> None:
    m = ReplayMachine("inv-1")
    decision = m.next_step(RUN, "a", h(b""))
    assert isinstance(decision, Execute)
    m.record(entry(RUN, decision.step, "a", value=1))
    assert m.recorded_steps == 1
    assert not m.is_replaying
    assert m.next_step(RUN, "b", h(b"")) == Execute(2)


def test_different_name_is_nondeterminism() -> None:
    m = ReplayMachine("inv-42", [entry(RUN, 1, "a"), entry(RUN, 2, "charge")])
    m.next_step(RUN, "a", h(b""))
    with pytest.raises(NonDeterminismError) as info:
        m.next_step(RUN, "refund", h(b""))
    err = info.value
    assert (err.invocation_id, err.step) == ("inv-42", 2)
    assert "charge" in err.recorded
    assert "refund" in err.new
    text = str(err)
    assert "inv-42" in text
    assert "step 2" in text
    assert "'charge'" in text and "'refund'" in text


def test_different_kind_is_nondeterminism() -> None:
    m = ReplayMachine("inv-1", [entry(CALL, 1, "same-name")])
    with pytest.raises(NonDeterminismError) as info:
        m.next_step(RUN, "same-name", h(b""))
    assert info.value.step == 1
    assert info.value.recorded.startswith("call")
    assert info.value.new.startswith("run")


def test_different_input_hash_is_nondeterminism() -> None:
    m = ReplayMachine("inv-7", [entry(CALL, 1, SAY_HELLO, input_hash=h(b"Ada"))])
    with pytest.raises(NonDeterminismError) as info:
        m.next_step(CALL, SAY_HELLO, h(b"Grace"))
    text = str(info.value)
    assert "inv-7" in text and "step 1" in text
    assert h(b"Ada").hex() in text
    assert h(b"Grace").hex() in text
    assert SAY_HELLO in text


@pytest.mark.parametrize(("recorded", "new"), [(b"", h(b"x")), (h(b"x"), b"")])
def test_empty_input_hash_on_either_side_is_not_checked(recorded: bytes, new: bytes) -> None:
    m = ReplayMachine("inv-1", [entry(RUN, 1, "a", value=3, input_hash=recorded)])
    assert isinstance(m.next_step(RUN, "a", new), Replay)


def test_same_input_hash_replays() -> None:
    m = ReplayMachine("inv-1", [entry(RUN, 1, "a", input_hash=h(b"x"))])
    assert isinstance(m.next_step(RUN, "a", h(b"x")), Replay)


@pytest.mark.parametrize("kind", [pb.ENTRY_KIND_COMPLETED, pb.ENTRY_KIND_FAILED])
def test_final_entry_is_detected(kind: pb.EntryKind) -> None:
    final = pb.JournalEntry(kind=kind)
    m = ReplayMachine("inv-1", [entry(RUN, 1, "a"), final])
    assert m.final == final
    assert m.recorded_steps == 1  # the final entry is not a step


def test_claims_and_steps_are_not_final() -> None:
    m = ReplayMachine("inv-1", [pb.JournalEntry(kind=pb.ENTRY_KIND_CLAIM), entry(RUN, 1, "a")])
    assert m.final is None
    assert m.recorded_steps == 1
    m.record(pb.JournalEntry(kind=pb.ENTRY_KIND_COMPLETED))
    assert m.final is not None


def test_out_of_order_entries_are_matched_by_step_number() -> None:
    # Concurrent steps complete out of order: step 2 may be journaled before step 1.
    m = ReplayMachine("inv-1", [entry(RUN, 2, "second", value=2), entry(RUN, 1, "first", value=1)])
    one = m.next_step(RUN, "first", h(b""))
    two = m.next_step(RUN, "second", h(b""))
    assert isinstance(one, Replay) and isinstance(two, Replay)
    assert (one.step, _codec.decode(one.entry.output)) == (1, 1)
    assert (two.step, _codec.decode(two.entry.output)) == (2, 2)


def test_gap_in_recorded_steps_executes_the_missing_one() -> None:
    m = ReplayMachine("inv-1", [entry(RUN, 2, "second")])
    assert m.is_replaying
    assert m.next_step(RUN, "first", h(b"")) == Execute(1)
    assert isinstance(m.next_step(RUN, "second", h(b"")), Replay)


def test_journal_module_is_pure() -> None:
    tree = ast.parse(Path(_journal.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "nats", "grpc"}
