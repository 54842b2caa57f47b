"""py-spy profiles of the processor and of the client (this process) during one window.

Stacks are recorded in py-spy's raw (collapsed) format, which flamegraph.pl, inferno and
speedscope read; the summary ranks functions by own and by inclusive samples.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .options import Options
from .procs import progress


class Profiler:
    """py-spy recording a processor (raw stacks and an SVG flame graph) and this client."""

    def __init__(self, procs: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
        self.procs = procs

    @classmethod
    def start(cls, setup: str, scenario: str, processor_pid: int, opts: Options) -> Profiler | None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if spy is None:
            progress("--profile: py-spy is not installed (pip install py-spy); not profiling")
            return None
        opts.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        procs = {}
        base = f"profile-{stamp}-{setup}-{scenario}"
        wanted = (
            ("processor", processor_pid, "raw", "txt"),
            ("processor-flamegraph", processor_pid, "flamegraph", "svg"),
            ("client", os.getpid(), "raw", "txt"),
        )
        for who, pid, fmt, ext in wanted:
            out = opts.results_dir / f"{base}-{who}.{ext}"
            cmd = [spy, "record", "--format", fmt, "--rate", "200", "--nonblocking"]
            cmd += ["--duration", str(max(1, round(opts.seconds))), "-o", str(out)]
            cmd += ["--pid", str(pid)]
            child = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            procs[who] = (child, out)
        return cls(procs)

    def finish(self) -> dict[str, Any]:
        """Wait for py-spy (bounded) and summarize what it recorded."""
        out: dict[str, Any] = {}
        for who, (child, raw) in self.procs.items():
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
            if not raw.exists():
                out[who] = {"error": "py-spy wrote nothing"}
            elif raw.suffix == ".txt":
                out[who] = summarize(raw)
            else:
                out[who] = {"file": str(raw)}
        return out


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples, in % of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def ranked(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in c.most_common(top)]

    return {
        "file": str(raw),
        "samples": total,
        "own_pct": ranked(own),
        "total_pct": ranked(inclusive),
    }


def frame_name(frame: str) -> str:
    """``fn (/long/path/pkg/module.py:12)`` -> ``fn (pkg/module.py)``."""
    fn, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    parts = Path(path).parts
    return f"{fn} ({'/'.join(parts[-2:]) if len(parts) > 1 else path})"
