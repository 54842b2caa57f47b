"""Drift test: committed generated protobuf code matches proto/ sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_PROTOS = REPO_ROOT / "scripts" / "gen_protos.py"
# Trees gen_protos.py reads from or owns, relative to the repository root.
PROTO_DIR = Path("proto")
CORE_PB_DIR = Path("libs/durable_core/src/durable_core/_pb")
HELLO_PB2 = PROTO_DIR / "gen/python/durable_examples/hello/v1/hello_pb2.py"
DURABLE_PB2_PYI = CORE_PB_DIR / "durable/v1/durable_pb2.pyi"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_PROTOS), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_repo_subset(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for rel in (PROTO_DIR, CORE_PB_DIR):
        shutil.copytree(REPO_ROOT / rel, dest / rel, ignore=ignore)


def test_committed_generated_code_is_up_to_date() -> None:
    result = _run("--check")
    assert result.returncode == 0, (
        "generated protobuf code drifted; run `make generate`\n" + result.stdout + result.stderr
    )


def test_check_reports_modified_missing_and_stale_files(tmp_path: Path) -> None:
    _copy_repo_subset(tmp_path)
    assert _run("--check", "--root", str(tmp_path)).returncode == 0

    with (tmp_path / HELLO_PB2).open("a", encoding="utf-8") as f:
        f.write("# hand edit\n")
    (tmp_path / DURABLE_PB2_PYI).unlink()
    (tmp_path / HELLO_PB2.with_name("old_pb2.py")).write_text("", encoding="utf-8")

    result = _run("--check", "--root", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"modified: {HELLO_PB2.as_posix()}" in result.stdout
    assert f"missing: {DURABLE_PB2_PYI.as_posix()}" in result.stdout
    assert f"stale: {HELLO_PB2.with_name('old_pb2.py').as_posix()}" in result.stdout


def test_regenerating_restores_identical_bytes(tmp_path: Path) -> None:
    _copy_repo_subset(tmp_path)
    (tmp_path / HELLO_PB2).write_text("broken\n", encoding="utf-8")

    assert _run("--root", str(tmp_path)).returncode == 0
    assert (tmp_path / HELLO_PB2).read_bytes() == (REPO_ROOT / HELLO_PB2).read_bytes()
    assert _run("--check", "--root", str(tmp_path)).returncode == 0
