"""Which code a workflow runs on (issue 16): its plugin package, the package's version and a
fingerprint of its source, and the routing token of that version.

The package is the installed distribution that provides the workflow function's top-level
module (``importlib.metadata``); a workflow defined outside any distribution (a test module, a
script) is its own package named after the module. The version is, in order: what the
registration says (``registry.register(fn, version=...)``), the distribution's version, the
module's ``__version__``, else ``"0"``. The fingerprint is the SHA-256 of the source files of
the top-level package (or of the module alone), so it changes with any edit, also one that
kept the version.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CodeIdentity", "code_identity", "version_token"]

_MAX_FILES = 2_000


@dataclass(frozen=True, slots=True)
class CodeIdentity:
    """The code a workflow runs on."""

    package: str
    version: str
    fingerprint: str

    @property
    def token(self) -> str:
        """The routing token of this package version (see :func:`version_token`)."""
        return version_token(self.package, self.version)


def version_token(package: str, version: str) -> str:
    """``v-<16 hex>``: one subject token naming ``package==version`` (a pinned route)."""
    digest = hashlib.sha256(f"{package}=={version}".encode()).hexdigest()
    return f"v-{digest[:16]}"


@functools.cache
def code_identity(fn: Callable[..., Any], *, version: str = "") -> CodeIdentity:
    """The package, version and source fingerprint of the workflow function ``fn`` (worked
    out once per function and version)."""
    module_name = getattr(fn, "__module__", "") or ""
    top = module_name.partition(".")[0] or "__main__"
    dist = _distribution_of(top)
    package = dist or top
    if not version:
        version = _dist_version(dist) if dist else ""
    if not version:
        module = sys.modules.get(top)
        version = str(getattr(module, "__version__", "") or "0")
    return CodeIdentity(package, version, _fingerprint(module_name, fn))


@functools.cache
def _packages() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distribution_of(top: str) -> str:
    dists = _packages().get(top) or []
    return dists[0] if dists else ""


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _fingerprint(module_name: str, fn: Callable[..., Any]) -> str:
    top = module_name.partition(".")[0]
    module = sys.modules.get(top)
    files: list[Path] = []
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        for root in paths:
            files.extend(sorted(Path(root).rglob("*.py"))[:_MAX_FILES])
    else:
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:
            source = None
        if source:
            files.append(Path(source))
    return _digest(tuple(str(f) for f in files))


@functools.cache
def _digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in files:
        try:
            data = Path(name).read_bytes()
        except OSError:
            continue
        h.update(Path(name).name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()
