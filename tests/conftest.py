"""Fixtures shared by the cross-service suites: the container images `make images` built.

`make test` runs `scripts/images.py` before pytest; it writes `.durable/images.json`, saying which
images it built on which engine, or why it built none (no Docker and no root, say). Tests that
need the images skip with that reason; nothing here builds or pulls anything.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# `make test` runs in pytest-xdist workers (`--dist loadgroup`). The suites that load the whole
# machine or share its engines (network namespaces, containers, benchmarks) run in one group,
# one after another on one worker; the rest spreads over the others.
SYSTEM_SUITES = ("tests/chaos/", "tests/containers/", "tests/bench/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve().relative_to(REPO).as_posix()
        if path.startswith(SYSTEM_SUITES):
            item.add_marker(pytest.mark.xdist_group("system"))


STATUS = REPO / ".durable" / "images.json"

# testcontainers would start its "ryuk" reaper from a registry image; every test here removes
# what it starts itself, and no registry may be reachable.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@dataclass(frozen=True)
class BuiltImages:
    """What `make images` built: the docker CLI to use and each image's reference."""

    docker: str
    nats: str
    nats_version: str
    base: str
    images: dict[str, str]

    def __getitem__(self, target: str) -> str:
        return self.images[target]


# How long a test waits for the background image build of `make test` (scripts/images.py
# --detach) to finish; the tests before the first one that needs images usually cover it.
BUILD_WAIT = 900.0


class ImageBuildError(Exception):
    """The build ran on an engine and failed: a failure of the tests, not a reason to skip."""


def built_images() -> BuiltImages | str:
    """The images `make images` built, or the reason there are none.

    Raises:
        ImageBuildError: the build failed, or its background process died.
    """
    deadline = time.monotonic() + BUILD_WAIT
    while True:
        try:
            status = json.loads(STATUS.read_text())
        except FileNotFoundError:
            return "no images: run `make images` (`make test` does) to build them"
        except json.JSONDecodeError:  # being written
            status = {"building": True}
        if not status.get("building"):
            break
        pid = status.get("pid")
        if pid is not None and not Path(f"/proc/{pid}").exists():
            status = json.loads(STATUS.read_text())
            if status.get("building"):
                raise ImageBuildError(f"the image build (pid {pid}) died:\n{_log_tail()}")
            break
        if time.monotonic() > deadline:
            raise ImageBuildError(f"the image build is still running after {BUILD_WAIT:.0f} s")
        time.sleep(2)
    if status.get("failed"):
        raise ImageBuildError(f"the image build failed: {status.get('reason')}\n{_log_tail()}")
    if not status.get("built"):
        return f"no images: {status.get('reason', 'make images built none')}"
    if status.get("docker_host", "") != os.environ.get("DOCKER_HOST", ""):
        return (
            f"the images were built on DOCKER_HOST={status['docker_host']!r}, "
            f"not on this one ({os.environ.get('DOCKER_HOST', '')!r})"
        )
    return BuiltImages(
        docker=status["docker"],
        nats=status["nats_image"],
        nats_version=status["nats_version"],
        base=status["base_image"],
        images=status["images"],
    )


def _log_tail() -> str:
    log = STATUS.with_name("images.log")
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""


@pytest.fixture(scope="session")
def images() -> BuiltImages:
    """The built images; the test skips (with the reason) where there are none."""
    try:
        found = built_images()
    except ImageBuildError as e:
        pytest.fail(str(e))
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="session")
def images_or_reason() -> BuiltImages | str:
    """The built images, or the reason there are none (for tests with a fallback)."""
    try:
        return built_images()
    except ImageBuildError as e:
        pytest.fail(str(e))
