"""`bench/ab.py`: both sides run their own code, interleaved, and are compared figure by figure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ab_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ab", ROOT / "bench" / "ab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc(**figures: float) -> dict[str, object]:
    return {
        "setups": {
            "single": {"figures": {k: {"median": v, "unit": "x"} for k, v in figures.items()}}
        }
    }


def test_a_verdict_needs_every_run_beyond_the_other_side_and_enough_rounds() -> None:
    ab = ab_module()
    base = [doc(hello_seq_p50_ms=10, hello_per_s=100) for _ in range(3)]
    head = [doc(hello_seq_p50_ms=v, hello_per_s=200) for v in (5, 6, 11)]
    rows = {r["figure"]: r for r in ab.compare({"base": base, "head": head})}
    assert rows["hello_seq_p50_ms"]["verdict"] == "within spread"  # one head run is slower
    assert rows["hello_seq_p50_ms"]["ratio"] == 0.6
    assert rows["hello_per_s"]["verdict"] == "better"  # higher is better for rates
    slower = [doc(hello_seq_p50_ms=20, hello_per_s=50) for _ in range(3)]
    rows = {r["figure"]: r for r in ab.compare({"base": base, "head": slower})}
    assert rows["hello_seq_p50_ms"]["verdict"] == rows["hello_per_s"]["verdict"] == "worse"
    rows = {r["figure"]: r for r in ab.compare({"base": base[:2], "head": slower[:2]})}
    assert rows["hello_per_s"]["verdict"] == "(judged from 3 rounds)"


def test_the_base_side_runs_the_base_commits_code(tmp_path: Path) -> None:
    ab = ab_module()
    base = tmp_path / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), "HEAD"], cwd=ROOT, check=True)
    try:
        code = "import durable_core as c, durable_processor as p; print(c.__file__, p.__file__)"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONPATH": ab.source_path(base)},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert out.split() and all(p.startswith(str(base)) for p in out.split()), out
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_ab_run_against_head_prints_and_records_both_sides(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "bench/ab.py", "--base", "HEAD", "--rounds", "1",
            "--harness", "head", "--results-dir", str(tmp_path), "--", "--quick",
            "--only", "single", "--parts", "floor,hello", "--rate", "20",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=230, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "head/base" in proc.stdout and "hello_seq_p50_ms" in proc.stdout, proc.stdout
    (result,) = tmp_path.glob("ab-*.json")
    recorded = json.loads(result.read_text())
    assert len(recorded["runs"]["base"]) == len(recorded["runs"]["head"]) == 1
    figures = {r["figure"] for r in recorded["rows"]}
    assert {"floor_publish_p50_ms", "hello_seq_p50_ms", "hello_per_s"} <= figures
    assert {"hello_cpu_python_ms", "hello_at_rate_cpu_python_ms"} <= figures
    assert recorded["harness"] == "head"


def test_a_flag_the_bases_own_harness_lacks_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    scratch, results = tmp_path / "tmp", tmp_path / "results"
    scratch.mkdir()
    proc = subprocess.run(
        [
            sys.executable, "bench/ab.py", "--base", "HEAD", "--rounds", "1",
            "--results-dir", str(results), "--", "--only", "single", "--no-such-flag",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "TMPDIR": str(scratch)},  # where its worktree would be made
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "has no --no-such-flag: add --harness head" in proc.stderr, proc.stderr
    assert not results.exists() and not list(scratch.iterdir())  # nothing ran, nothing left
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert str(scratch) not in worktrees  # (other tests may hold worktrees of their own)
