"""Per-key ordering: invocations with the same partition key run one at a time, in order.

A small record per key in the ``<prefix>_keys`` bucket says which invocation holds the key
(``active``) and which wait (``waiting``, by ticket). The ticket of an invocation is the stream
sequence of its start command, so submission order is the order of tickets. Writes are
revision-checked (compare and set); this module is the pure decision part.

An invocation takes the key when nobody holds it (or the holder has finished) and no earlier
ticket waits or is still on its way (an unacknowledged start with a lower sequence).
Otherwise it joins ``waiting`` and its start is acknowledged. The holder keeps the key while
suspended; when it finishes, the lowest waiting ticket is started (a "turn").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(slots=True)
class KeyRecord:
    """Who holds a partition key, and who waits for it."""

    active: str = ""
    active_ticket: int = 0
    waiting: list[tuple[int, str, str]] = field(default_factory=list)  # (ticket, id, workflow)

    @classmethod
    def parse(cls, data: bytes | None) -> KeyRecord:
        if not data:
            return cls()
        raw = json.loads(data)
        return cls(
            raw.get("active", ""),
            int(raw.get("active_ticket", 0)),
            [(int(t), str(i), str(w)) for t, i, w in raw.get("waiting", [])],
        )

    def dump(self) -> bytes:
        return json.dumps(
            {"active": self.active, "active_ticket": self.active_ticket, "waiting": self.waiting},
            separators=(",", ":"),
        ).encode()

    def lowest_waiting(self) -> tuple[int, str, str] | None:
        return min(self.waiting) if self.waiting else None

    def ticket_of(self, invocation_id: str) -> int | None:
        return next((t for t, i, _ in self.waiting if i == invocation_id), None)

    def may_take(self, ticket: int, holder_finished: bool) -> bool:
        """Whether ticket may take the key now (ignoring starts still on their way)."""
        if self.active and not holder_finished:
            return False
        lowest = self.lowest_waiting()
        return lowest is None or lowest[0] >= ticket

    def take(self, invocation_id: str, ticket: int) -> None:
        self.active, self.active_ticket = invocation_id, ticket
        self.waiting = [w for w in self.waiting if w[1] != invocation_id]

    def enqueue(self, invocation_id: str, ticket: int, workflow: str) -> None:
        if self.ticket_of(invocation_id) is None:
            self.waiting.append((ticket, invocation_id, workflow))
            self.waiting.sort()

    def release(self, invocation_id: str) -> tuple[int, str, str] | None:
        """The holder is done: free the key; returns whose turn it is next."""
        if self.active == invocation_id:
            self.active, self.active_ticket = "", 0
        return self.lowest_waiting() if not self.active else None
