"""A/B benchmark: this checkout against another commit, interleaved in one run.

``make bench-ab BASE=<rev> BENCH_ARGS="..."`` (= ``bench/ab.py --base <rev> -- <run.py args>``)
checks ``<rev>`` out into a temporary git worktree and runs ``bench/run.py`` of each side in turn,
``--rounds`` times, alternating which side goes first (A B, B A, A B, ...), each run with
``--repeat 1``. A side runs its own code: its ``PYTHONPATH`` puts its ``libs/*/src``,
``services/*/src`` and ``plugins/*/src`` before the venv's editable installs, so the client (this
process's child), the processors and the service all run that side's code. Third-party packages
come from this checkout's venv for both sides. Each side runs its own harness too, unless
``--harness head``: then both run this checkout's ``bench/run.py`` (and so measure the same
figures the same way, e.g. ``--rate``, which older harnesses lack) on their own code.

The table gives, per NATS setup and figure, the median over the rounds of each side, their
ratio (head / base), and whether that ratio lies outside the run-to-run spread (each side's
min..max over its rounds): a change is judged as a ratio measured on one machine at one time,
not against figures from another day. Everything goes to ``bench/results/ab-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
HIGHER_IS_BETTER = ("_per_s",)
# Rounds each side needs before "outside the spread" means something: with n runs a side, all of
# one side's runs beat all of the other's by chance with probability 2 * n! n! / (2n)!
# (n = 3: 10 %; n = 4: 2.9 %; n = 5: 0.8 %).
MIN_ROUNDS = 3


def source_path(tree: Path) -> str:
    """The import roots of one checkout, in the order the venv's editable installs use."""
    roots = sorted(tree.glob("libs/*/src")) + sorted(tree.glob("services/*/src"))
    roots += sorted(tree.glob("plugins/*/src"))
    return os.pathsep.join(str(p) for p in roots)


def side_env(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree``'s sources first on the import path."""
    return {**os.environ, "PYTHONPATH": source_path(tree)}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_side(
    tree: Path, out_dir: Path, bench_args: Sequence[str], log: Path, harness: Path | None = None
) -> dict[str, Any]:
    """One ``run.py --repeat 1`` of one side (the harness of ``harness``, else the side's own)
    on the side's code; its JSON document."""
    out_dir.mkdir(parents=True)
    cmd = [sys.executable, str((harness or tree) / "bench" / "run.py"), "--repeat", "1"]
    cmd += ["--results-dir", str(out_dir), *bench_args]
    with log.open("ab") as err:
        done = subprocess.run(
            cmd, cwd=tree, env=side_env(tree), stdout=err, stderr=err, check=False
        )
    found = sorted(out_dir.glob("*.json"))
    if not found:
        raise SystemExit(f"bench/ab: {tree} wrote no results (exit {done.returncode}); see {log}")
    doc: dict[str, Any] = json.loads(found[-1].read_text())
    return doc


def harness_flags(tree: Path) -> set[str]:
    """The options ``bench/run.py`` of ``tree`` takes (from its ``--help``)."""
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "run.py"), "--help"],
        env=side_env(tree), capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return {w.strip("[],") for w in out.split() if w.startswith(("--", "[--"))}


def compare(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per setup and figure: each side's values over the rounds, medians, ratio, verdict."""
    rows: list[dict[str, Any]] = []
    first = runs["head"][0]["setups"]
    for setup, body in first.items():
        for key, fig in body["figures"].items():
            values = {
                side: [
                    v
                    for doc in docs
                    if (
                        v := doc["setups"]
                        .get(setup, {})
                        .get("figures", {})
                        .get(key, {})
                        .get("median")
                    )
                    is not None
                ]
                for side, docs in runs.items()
            }
            if not values["base"] or not values["head"]:
                continue
            base, head = statistics.median(values["base"]), statistics.median(values["head"])
            ratio = head / base if base else None
            outside = min(values["head"]) > max(values["base"]) or max(values["head"]) < min(
                values["base"]
            )
            better = None
            if ratio is not None and outside:
                better = (ratio > 1) == key.endswith(HIGHER_IS_BETTER)
            if min(len(values["base"]), len(values["head"])) < MIN_ROUNDS:
                verdict = f"(judged from {MIN_ROUNDS} rounds)"
            elif better is None:
                verdict = "within spread"
            else:
                verdict = "better" if better else "worse"
            rows.append(
                {
                    "setup": setup,
                    "figure": key,
                    "unit": fig.get("unit", ""),
                    "base": values["base"],
                    "head": values["head"],
                    "base_median": base,
                    "head_median": head,
                    "ratio": ratio,
                    "verdict": verdict,
                }
            )
    return rows


def shown(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.2f} {unit}"


def table(rows: list[dict[str, Any]], base_rev: str, head_rev: str, rounds: int) -> list[str]:
    out = [f"== A/B: head {head_rev} vs base {base_rev}; {rounds} interleaved rounds =="]
    out.append(f"{'setup':<14}{'figure':<26}{'base':>13}{'head':>13}{'head/base':>10}  verdict")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(
            f"{r['setup']:<14}{r['figure']:<26}{shown(r['base_median'], r['unit']):>13}"
            f"{shown(r['head_median'], r['unit']):>13}{ratio:>10}  {r['verdict']}"
        )
    out.append(
        "floor_* and bare_* figures measure NATS and the libraries, not the engine's code: their "
        "ratio is the machine's drift between the sides. A verdict needs every run of one side "
        "beyond every run of the other."
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/ab.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit to compare against (any git rev)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side, interleaved (3)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--harness",
        choices=("own", "head"),
        default="own",
        help="each side runs its own bench/run.py (own), or both run this checkout's (head)",
    )
    p.add_argument("bench_args", nargs="*", help="passed to bench/run.py (after --)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if any(x.startswith("--repeat") or x.startswith("--results-dir") for x in a.bench_args):
        p.error("--repeat and --results-dir are set by bench/ab.py")
    try:
        base_rev = git("rev-parse", "--short", f"{a.base}^{{commit}}")
    except subprocess.CalledProcessError:
        p.error(f"--base {a.base!r} is not a commit of this repository")
    dirty = (
        " (+ uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
    head_rev = git("rev-parse", "--short", "HEAD") + dirty
    work = Path(tempfile.mkdtemp(prefix="durable-ab-"))
    base_tree = work / "base"
    git("worktree", "add", "--detach", str(base_tree), base_rev)
    harness = ROOT if a.harness == "head" else None
    wanted = {x.split("=")[0] for x in a.bench_args if x.startswith("--")}
    if harness is None and (missing := sorted(wanted - harness_flags(base_tree))):
        git("worktree", "remove", "--force", str(base_tree))
        shutil.rmtree(work, ignore_errors=True)
        p.error(f"{base_rev}'s bench/run.py has no {', '.join(missing)}: add --harness head")
    started, t0 = datetime.now(UTC), time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    trees = {"base": base_tree, "head": ROOT}
    try:
        for n in range(a.rounds):
            order = ("base", "head") if n % 2 == 0 else ("head", "base")
            for side in order:
                print(f"[ab] round {n + 1}/{a.rounds}: {side}", file=sys.stderr, flush=True)
                doc = run_side(
                    trees[side], work / f"{side}-{n}", a.bench_args, work / f"{side}.log", harness
                )
                runs[side].append(doc)
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
        )
    rows = compare(runs)
    print("\n".join(table(rows, base_rev, head_rev, a.rounds)))
    a.results_dir.mkdir(parents=True, exist_ok=True)
    path = a.results_dir / f"ab-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    doc = {
        "started_at": started.isoformat(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "base": base_rev,
        "head": head_rev,
        "rounds": a.rounds,
        "harness": a.harness,
        "bench_args": a.bench_args,
        "rows": rows,
        "runs": runs,
    }
    path.write_text(json.dumps(doc, indent=1))
    print(f"elapsed: {doc['elapsed_s']:.0f} s\nresults: {path}")
    errors = [
        e for docs in runs.values() for d in docs for s in d["setups"].values() for e in s["errors"]
    ]
    shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
