"""A run's log: each line timestamped from the start, written to a file and shown live."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


class RunLog:
    """``log("...")`` writes ``[<tag> <seconds>s] ...`` to ``path`` and to the terminal (past
    pytest's capture, so a long run shows its progress)."""

    def __init__(self, path: Path, tag: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.began = time.monotonic()
        self.tag = tag
        self._file = path.open("a", encoding="utf-8")
        self._capsys = capsys

    def __call__(self, message: str) -> None:
        line = f"[{self.tag} {time.monotonic() - self.began:7.1f}s] {message}"
        if not self._file.closed:
            self._file.write(line + "\n")
            self._file.flush()
        with self._capsys.disabled():
            print(line, flush=True)

    def close(self) -> None:
        self._file.close()
