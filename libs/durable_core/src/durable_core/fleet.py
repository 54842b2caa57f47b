"""The fleet registry: which live processor serves which workflow, on which code.

Every processor writes one record to the ``<prefix>_fleet`` bucket when it starts and renews
it every third of its lease: its id, host, pid, ``durable_core`` version and, per workflow it
serves, the plugin, package, version, source fingerprint and version token. The record carries
a per-message TTL of one lease, so the server itself removes the record of a processor that
died; a clean exit deletes it at once.

Readers (``durable plugins --fleet``, the inspector, intake) call :func:`read_fleet` or
``Client.fleet()``. Intake (``Client.invoke``, schedule creation, the CLI, the inspector's API)
refuses a workflow that no live processor serves (``UnknownWorkflowError``)
unless told to queue it; the check is advice, not the guarantee: a processor that leaves between
the check and the publish loses nothing, its commands wait for the next one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from durable_core.errors import UnknownWorkflowError

if TYPE_CHECKING:
    from durable_core._transport import Transport
    from durable_core.plugins import Workflow

__all__ = [
    "FLEET_CACHE_SECONDS",
    "FleetCache",
    "FleetView",
    "ProcessorInfo",
    "ServedWorkflow",
    "read_fleet",
]

FLEET_CACHE_SECONDS = 15.0
"""How long intake trusts a registry read that served the workflow (one default lease)."""


@dataclass(frozen=True, slots=True)
class ServedWorkflow:
    """A workflow as one processor serves it."""

    name: str
    plugin: str
    package: str
    version: str
    fingerprint: str
    token: str

    @classmethod
    def of(cls, wf: Workflow) -> ServedWorkflow:
        """What a registered workflow's record says."""
        code = wf.code
        return cls(wf.name, wf.plugin, code.package, code.version, code.fingerprint, code.token)

    def to_dict(self) -> dict[str, str]:
        """The record's fields as JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class ProcessorInfo:
    """One live processor's fleet record.

    Attributes:
        key: its record's key (the processor id and a per-start suffix).
        processor: the processor id.
        ttl: seconds its record outlives its last renewal.
        started_at: when this process registered (its clock).
        renewed_at: its last renewal (its clock; for people, not compared across hosts).
    """

    key: str
    processor: str
    host: str = ""
    pid: int = 0
    core_version: str = ""
    ttl: float = 0.0
    started_at: datetime | None = None
    renewed_at: datetime | None = None
    workflows: tuple[ServedWorkflow, ...] = field(default=())

    def to_json(self) -> bytes:
        """The stored record."""
        return json.dumps(
            {
                "processor": self.processor,
                "host": self.host,
                "pid": self.pid,
                "core_version": self.core_version,
                "ttl_ms": int(self.ttl * 1000),
                "started_at_ms": _ms(self.started_at),
                "renewed_at_ms": _ms(self.renewed_at),
                "workflows": [w.to_dict() for w in self.workflows],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def parse(cls, key: str, data: bytes) -> ProcessorInfo:
        """Read a stored record; ValueError if it is not one."""
        try:
            rec = json.loads(data)
            workflows = tuple(
                ServedWorkflow(
                    str(w["name"]), *(str(w.get(f.name, "")) for f in fields(ServedWorkflow)[1:])
                )
                for w in rec.get("workflows", [])
            )
            return cls(
                key=key,
                processor=str(rec.get("processor", "")),
                host=str(rec.get("host", "")),
                pid=int(rec.get("pid", 0) or 0),
                core_version=str(rec.get("core_version", "")),
                ttl=float(rec.get("ttl_ms", 0) or 0) / 1000,
                started_at=_dt(rec.get("started_at_ms")),
                renewed_at=_dt(rec.get("renewed_at_ms")),
                workflows=workflows,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"fleet record {key} is not a processor record: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """As JSON (``durable plugins --fleet --json``, the inspector's API)."""
        return {
            "key": self.key,
            "processor": self.processor,
            "host": self.host,
            "pid": self.pid,
            "core_version": self.core_version,
            "ttl_s": self.ttl,
            "started_at": _iso(self.started_at),
            "renewed_at": _iso(self.renewed_at),
            "workflows": [w.to_dict() for w in self.workflows],
        }


@dataclass(frozen=True, slots=True)
class FleetView:
    """The live processors at one moment, sorted by processor id."""

    processors: tuple[ProcessorInfo, ...] = ()

    def served(self) -> list[str]:
        """The workflow names at least one live processor serves, sorted."""
        return sorted({w.name for p in self.processors for w in p.workflows})

    def serves(self, workflow: str, token: str = "") -> bool:
        """Whether a live processor serves ``workflow`` (at the version ``token`` names, if
        given)."""
        return any(
            w.name == workflow and (not token or w.token == token)
            for p in self.processors
            for w in p.workflows
        )

    def by_workflow(self) -> dict[str, list[tuple[ProcessorInfo, ServedWorkflow]]]:
        """Workflow name -> the processors serving it, each with what it serves it with."""
        out: dict[str, list[tuple[ProcessorInfo, ServedWorkflow]]] = {}
        for p in self.processors:
            for w in p.workflows:
                out.setdefault(w.name, []).append((p, w))
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """Both directions as JSON: processors with their workflows, workflows with theirs."""
        return {
            "processors": [p.to_dict() for p in self.processors],
            "workflows": {
                name: [
                    {
                        "processor": p.processor,
                        "key": p.key,
                        "host": p.host,
                        "pid": p.pid,
                        **{k: v for k, v in w.to_dict().items() if k != "name"},
                    }
                    for p, w in served
                ]
                for name, served in self.by_workflow().items()
            },
        }

    @classmethod
    def of(cls, records: Iterable[ProcessorInfo]) -> FleetView:
        """A view of ``records``, sorted."""
        return cls(tuple(sorted(records, key=lambda p: (p.processor, p.key))))


async def read_fleet(t: Transport) -> FleetView:
    """The live processors now (a record that does not parse is left out)."""
    found = []
    for key, data in (await t.processor_records()).items():
        try:
            found.append(ProcessorInfo.parse(key, data))
        except ValueError:
            continue
    return FleetView.of(found)


class FleetCache:
    """The registry as intake reads it: a read that served the workflow is trusted for
    ``max_age`` seconds (so a warm check costs no round trip); a workflow not in the cached
    read is looked up again before it is refused (so a processor that just started is seen).
    """

    def __init__(self, t: Transport, max_age: float = FLEET_CACHE_SECONDS) -> None:
        self._t = t
        self.max_age = max_age
        self._view: FleetView | None = None
        self._read_at = -float("inf")

    async def view(self, *, fresh: bool = False) -> FleetView:
        """The registry, read again if ``fresh`` or older than ``max_age``."""
        if fresh or self._view is None or time.monotonic() - self._read_at > self.max_age:
            read_at = time.monotonic()
            self._view = await read_fleet(self._t)
            self._read_at = read_at
        return self._view

    async def check(self, workflow: str) -> None:
        """Refuse ``workflow`` unless a live processor serves it.

        Raises:
            UnknownWorkflowError: no live processor serves it (the message lists what is served).
        """
        if (await self.view()).serves(workflow):
            return
        view = await self.view(fresh=True)
        if not view.serves(workflow):
            raise UnknownWorkflowError(workflow, view.served())


def _ms(at: datetime | None) -> int:
    return int(at.timestamp() * 1000) if at is not None else 0


def _dt(ms: Any) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None


def _iso(at: datetime | None) -> str | None:
    return at.isoformat().replace("+00:00", "Z") if at is not None else None
