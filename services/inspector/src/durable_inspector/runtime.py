"""What the request handlers share: settings, the client, the index and the feed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from durable_inspector.feed import Feed
from durable_inspector.index import ExecutionIndex
from durable_inspector.settings import InspectorSettings

__all__ = ["Runtime", "runtime"]


@dataclass
class Runtime:
    """Set up by the app's lifespan; ``client`` is a durable_core Client (or a test double)."""

    settings: InspectorSettings
    index: ExecutionIndex
    client: Any = None
    feed: Feed | None = None

    @property
    def ready(self) -> bool:
        return self.index.ready


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.inspector
    return rt
