"""Child processes the benchmark starts, and what it reads about them from /proc.

Only PIDs started here are ever signalled: each child is stopped by the code that started it,
and an ``atexit`` hook kills whatever is left if the run dies half-way.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_CHILDREN: list[Child] = []


def progress(msg: str) -> None:
    """A progress line on stderr (stdout carries the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Child:
    """A Python child process with its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Wait (bounded) until the child has logged ``text``; fail early if it exits."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not log {text!r} in {timeout:.0f}s")
            await asyncio.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(ValueError):
            _CHILDREN.remove(self)


def stop_all_children(timeout: float = 5.0) -> None:
    """Stop every child still running (the end of a run, normal or not)."""
    for child in list(_CHILDREN):
        child.stop(timeout)


@atexit.register
def _kill_leftover_children() -> None:
    for child in list(_CHILDREN):
        with contextlib.suppress(Exception):
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(5)


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
