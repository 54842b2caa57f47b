"""What the benchmark reads from /proc about the processes it started, and its progress lines.

The processes themselves are ``durable_core.testing.ChildProcess`` (the stack the integration
tests and the chaos suite use too): only PIDs started there are ever signalled, and an
``atexit`` hook kills whatever is left if the run dies half-way.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(msg: str) -> None:
    """A progress line on stderr (stdout carries the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS from /proc/<pid>/status), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


class CpuMeter:
    """CPU time used by named processes since the meter was made."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.t0 = time.monotonic()

    def used(self) -> dict[str, float]:
        """CPU seconds per process since the start."""
        return {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        """CPU used per process as a share of one core (1.0 = one core busy all along)."""
        wall = max(time.monotonic() - self.t0, 1e-9)
        return {name: round(sec / wall, 2) for name, sec in self.used().items()}
