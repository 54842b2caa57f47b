"""Fixtures of the inspector's unit tests: a clean environment, the app on a fake client."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

from durable_core.testing import assert_eventually
from durable_inspector.app import create_app

from ._fakes import FakeClient, settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the variables they set, not the developer's or CI's."""
    for name in list(os.environ):
        if name.startswith("DURABLE_") or name == "NATS_URL":
            monkeypatch.delenv(name)


@pytest.fixture
def make_client() -> Callable[..., Iterator[tuple[TestClient, FakeClient]]]:
    """``with make_client(fake, token=...) as (tc, fake)``: the app on a fake client, ready."""

    @contextlib.contextmanager
    def make(
        fake: FakeClient | None = None, *, token: str | None = None, ready: bool = True
    ) -> Iterator[tuple[TestClient, FakeClient]]:
        fake = fake or FakeClient()
        app = create_app(settings(token), client=fake)
        with TestClient(app, raise_server_exceptions=False) as tc:
            if ready:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                assert_eventually(
                    lambda: tc.get("/healthz", headers=headers).status_code == 200,
                    5,
                    "the index to be ready",
                    interval=0.01,
                )
            yield tc, fake

    return make
