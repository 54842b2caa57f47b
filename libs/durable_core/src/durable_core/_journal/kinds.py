"""Journal entry kinds: which a run writes, which come from outside, which end an invocation."""

from __future__ import annotations

from durable_core._pb.durable.v1 import durable_pb2 as pb

__all__ = [
    "EXTERNAL_KINDS",
    "FINAL_KINDS",
    "LIFECYCLE_KINDS",
    "PROCESSOR_KINDS",
    "STEP_KINDS",
    "describe",
    "kind_name",
]

STEP_KINDS = frozenset(
    {
        pb.ENTRY_KIND_CALL,
        pb.ENTRY_KIND_RUN,
        pb.ENTRY_KIND_SLEEP,
        pb.ENTRY_KIND_AWAKEABLE,
        pb.ENTRY_KIND_SIGNAL_WAIT,
        pb.ENTRY_KIND_STATE_SET,
        pb.ENTRY_KIND_STATE_CLEAR,
        pb.ENTRY_KIND_CHILD,
        pb.ENTRY_KIND_SEND,
    }
)
FINAL_KINDS = frozenset({pb.ENTRY_KIND_COMPLETED, pb.ENTRY_KIND_FAILED, pb.ENTRY_KIND_CANCELLED})
# Written by the processor that holds the invocation; everything else comes from outside.
PROCESSOR_KINDS = (
    STEP_KINDS
    | FINAL_KINDS
    | {
        pb.ENTRY_KIND_CLAIM,
        pb.ENTRY_KIND_SUSPENDED,
        pb.ENTRY_KIND_CANCEL_DELIVERED,
        pb.ENTRY_KIND_ATTEMPT_FAILED,
        pb.ENTRY_KIND_PATCH,
    }
)
LIFECYCLE_KINDS = frozenset(
    {
        pb.ENTRY_KIND_PAUSE_REQUEST,
        pb.ENTRY_KIND_RESUME_REQUEST,
        pb.ENTRY_KIND_CANCEL_REQUEST,
        pb.ENTRY_KIND_RETRY_REQUEST,
    }
)
EXTERNAL_KINDS = (
    frozenset({pb.ENTRY_KIND_AWAKEABLE_RESULT, pb.ENTRY_KIND_SIGNAL, pb.ENTRY_KIND_CHILD_RESULT})
    | LIFECYCLE_KINDS
)

_KIND_NAMES: dict[int, str] = {
    pb.ENTRY_KIND_CALL: "call",
    pb.ENTRY_KIND_RUN: "run",
    pb.ENTRY_KIND_SLEEP: "sleep",
    pb.ENTRY_KIND_AWAKEABLE: "awakeable",
    pb.ENTRY_KIND_SIGNAL_WAIT: "signal",
    pb.ENTRY_KIND_STATE_SET: "set",
    pb.ENTRY_KIND_STATE_CLEAR: "clear",
    pb.ENTRY_KIND_CHILD: "child",
    pb.ENTRY_KIND_SEND: "send",
}


def kind_name(kind: int) -> str:
    """Short name of an entry kind (``call``, ``sleep``, ...)."""
    return _KIND_NAMES.get(kind) or pb.EntryKind.Name(kind).removeprefix("ENTRY_KIND_").lower()


def describe(kind: int, name: str) -> str:
    """A human label for a step, e.g. ``call /hello.HelloService/SayHello``."""
    return f"{kind_name(kind)} {name!r}"
