"""Which entries of a journal a fork copied from its source, and what they ask for.

A fork's journal starts with a FORKED entry naming its source and ``from_step``, then
copies: its source's steps before ``from_step`` (writer ``fork:<source>``), then what their
waits took and the ``patched()`` markers before them (writer ``fork-outcome:<source>``, as
the FORKED entry's). Neither is a run of the fork's own. This module is the
only place that knows how a copy is marked.
"""

from __future__ import annotations

from durable_core._pb.durable.v1 import durable_pb2 as pb

__all__ = [
    "awakeable_asked",
    "copy_source",
    "copied_by_fork",
    "copied_step_of",
    "outcome_writer",
    "step_writer",
]

_STEP = "fork:"  # a fork's copy of its source's step: fork:<source>
_OUTCOME = "fork-outcome:"  # what a copied wait took, or a patch marker: fork-outcome:<source>


def step_writer(source: str) -> str:
    """The writer of a fork's copies of ``source``'s steps."""
    return f"{_STEP}{source}"


def outcome_writer(source: str) -> str:
    """The writer of a fork's copies of what ``source``'s copied waits took."""
    return f"{_OUTCOME}{source}"


def copied_step_of(entry: pb.JournalEntry) -> str:
    """The invocation whose step ``entry`` is a fork's copy of ("" if it is none)."""
    return entry.writer.removeprefix(_STEP) if entry.writer.startswith(_STEP) else ""


def copy_source(entry: pb.JournalEntry) -> str:
    """The invocation a fork copied ``entry`` from, whatever it is ("" if none)."""
    for prefix in (_STEP, _OUTCOME):
        if entry.writer.startswith(prefix):
            return entry.writer.removeprefix(prefix)
    return ""


def copied_by_fork(entry: pb.JournalEntry) -> bool:
    """Whether a fork copied ``entry`` (a step, an outcome or a marker): no run of its own."""
    return entry.writer.startswith((_STEP, _OUTCOME))


def awakeable_asked(owner: str, entry: pb.JournalEntry) -> str:
    """The name ``owner``'s workflow asks for at ``entry``, a step of its journal: the name
    recorded, but for an awakeable a fork copied (its id names the source,
    ``awk.<source>.<n>``; the fork asks for ``awk.<owner>.<n>``, and that is the id to
    resolve)."""
    source = copied_step_of(entry)
    if entry.kind != pb.ENTRY_KIND_AWAKEABLE or not source:
        return entry.name
    prefix = f"awk.{source}."
    if not entry.name.startswith(prefix):
        return entry.name
    return f"awk.{owner}.{entry.name.removeprefix(prefix)}"
