"""Which code wrote a journal (issue 16): every CLAIM, and the first entry of a run that
started without one (a fresh start), names the plugin package, version and source fingerprint
of the processor that wrote it.

``started_on`` is the code an invocation started on; ``pin_for`` the version a diverged replay
is pinned to: the last code that journaled a step (it replayed everything before it), which is
the start version unless a later version (a patched one) carried the invocation on.
"""

from __future__ import annotations

from collections.abc import Iterable

from durable_core._code import CodeIdentity
from durable_core._journal.kinds import PROCESSOR_KINDS
from durable_core._pb.durable.v1 import durable_pb2 as pb

__all__ = ["code_of", "pin_for", "stamp", "started_on"]

_NOT_ADVANCING = frozenset({pb.ENTRY_KIND_CLAIM, pb.ENTRY_KIND_SUSPENDED})


def stamp(entry: pb.JournalEntry, code: CodeIdentity) -> None:
    """Record ``code`` on ``entry`` (a CLAIM, or the first entry of a fresh start)."""
    entry.plugin, entry.plugin_version, entry.code_fingerprint = (
        code.package,
        code.version,
        code.fingerprint,
    )


def code_of(entry: pb.JournalEntry) -> CodeIdentity | None:
    """The code an entry names, if it names one."""
    if not entry.plugin:
        return None
    return CodeIdentity(entry.plugin, entry.plugin_version, entry.code_fingerprint)


def started_on(entries: Iterable[pb.JournalEntry]) -> CodeIdentity | None:
    """The code the invocation started on (None: it started before journals recorded it)."""
    for entry in entries:
        code = code_of(entry)
        if code is not None:
            return code
    return None


def pin_for(entries: Iterable[pb.JournalEntry], *, this_run: str) -> CodeIdentity | None:
    """The code a diverged replay should run on: the last code that journaled a step or a
    patch marker before this run (``this_run``: its writer token; what it wrote is left out),
    else the code the invocation started on. None when no entry names its code (or the steps
    were copied by a fork from another invocation and no run of this one wrote any)."""
    current: CodeIdentity | None = None
    advanced: CodeIdentity | None = None
    first: CodeIdentity | None = None
    for entry in entries:
        if entry.writer == this_run or entry.kind not in PROCESSOR_KINDS:
            continue
        code = code_of(entry)
        if code is not None:
            current = code
            first = first or code
        if entry.kind not in _NOT_ADVANCING and current is not None:
            advanced = current
    return advanced or first
