"""What the request handlers share: settings, the client, the index and the feed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from durable_core.admin import Engine
from durable_inspector.feed import Feed
from durable_inspector.index import ExecutionIndex
from durable_inspector.settings import InspectorSettings

__all__ = ["Runtime", "runtime"]


@dataclass
class Runtime:
    """Set up by the app's lifespan; ``client`` is a durable_core Client (or a test double),
    None until the engine's streams are bound (``engine`` is connected before that)."""

    settings: InspectorSettings
    index: ExecutionIndex
    client: Any = None
    feed: Feed | None = None
    engine: Engine | None = None
    bind_error: str | None = None  # why the last attempt to bind failed (it is retried)

    @property
    def ready(self) -> bool:
        """Whether the execution index holds the snapshot."""
        return self.index.ready

    def not_ready(self) -> str | None:
        """Why the inspector cannot serve executions now (one line), or None: for /readyz."""
        if self.engine is not None:
            connected = self.engine.is_connected
        else:  # a client handed in (a test double may not say)
            connected = getattr(self.client, "is_connected", True)
        if not connected:
            return "not connected to NATS (reconnecting)"
        if self.client is None:
            return (
                f"waiting for the engine's streams (prefix {self.settings.engine.prefix}): "
                "start a processor"
            ) + (f" (last bind error: {self.bind_error})" if self.bind_error else "")
        if not self.index.ready:
            error = self.feed.error if self.feed is not None else ""
            return "loading the execution index" + (
                f" (last watch error: {error})" if error else ""
            )
        return None


def runtime(request: Request) -> Runtime:
    """The app's shared runtime, from a request."""
    rt: Runtime = request.app.state.inspector
    return rt
