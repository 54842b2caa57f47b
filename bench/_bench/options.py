"""Command-line options of ``bench/run.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
PARTS = ("floor", "bare", "hello", "order", "steps", "memory", "payload")


@dataclass(frozen=True)
class Options:
    """What to measure and for how long.

    The first fields come from the command line; the rest follow from ``--quick``.
    """

    seconds: float
    inflight: int
    repeat: int
    only: str | None
    quick: bool
    processors: int
    results_dir: Path
    profile: bool
    parts: tuple[str, ...] = PARTS
    rate: float = 0.0  # (b)-(c) fixed arrival rate of the CPU-at-one-rate window (0: none)
    shards: int = 1  # journal streams and state buckets of each scenario's engine
    steps: int = 1000  # (d) steps of the many-step workflow
    sleepers: int = 10_000  # (e) sleeping workflows
    memory_inflight: int = 100  # (e) invocations in flight while RSS is sampled
    floor_seconds: float = 3.0  # (a) window of the publish+ack latency floor
    floor_messages: int = 20_000  # (a) messages of the pipelined floor
    settle_timeout: float = 180.0  # (e) how long sleepers may take to go to sleep
    payload_mb: int = 100  # (f) size of the large value of the payload round trip
    max_minutes: float = 20.0  # hard bound of the whole run

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, description: str = "") -> Options:
        p = argparse.ArgumentParser(prog="bench/run.py", description=description)
        p.add_argument("--seconds", type=float, help="window of each figure (10; --quick 1)")
        p.add_argument("--inflight", type=int, help="in flight for throughput (64; --quick 8)")
        p.add_argument("--repeat", type=int, default=3, help="runs per figure, median reported")
        p.add_argument(
            "--only", choices=("single", "single-fsync", "cluster"), help="one NATS setup only"
        )
        p.add_argument("--quick", action="store_true", help="tiny windows and counts: a smoke run")
        p.add_argument("--processors", type=int, default=1, help="processor processes (1)")
        p.add_argument(
            "--shards",
            type=int,
            default=1,
            help=(
                "command, journal and state shards of each engine (1; leaders spread on a "
                "cluster)"
            ),
        )
        p.add_argument(
            "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON is written"
        )
        p.add_argument(
            "--profile",
            action="store_true",
            help="py-spy the processor and this client during the first hello throughput run",
        )
        p.add_argument(
            "--rate",
            type=float,
            default=0.0,
            help=(
                "also measure CPU per invocation at a fixed arrival rate: hello at RATE/s, the "
                "3-step at RATE/2 (0: off); the same rate on both sides of an A/B"
            ),
        )
        p.add_argument(
            "--parts",
            default=",".join(PARTS),
            help=f"comma-separated parts to measure ({','.join(PARTS)}; default all)",
        )
        a = p.parse_args(argv)
        parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
        if not parts or set(parts) - set(PARTS):
            p.error(f"--parts takes a comma-separated subset of {','.join(PARTS)}")
        if a.repeat < 1 or a.processors < 1 or a.shards < 1:
            p.error("--repeat, --processors and --shards must be at least 1")
        if a.rate < 0:
            p.error("--rate must be 0 (off) or a rate per second")
        extra: dict[str, Any] = {}
        if a.quick:
            extra = {
                "steps": 100,
                "sleepers": 200,
                "memory_inflight": 16,
                "floor_seconds": 0.5,
                "floor_messages": 2000,
                "settle_timeout": 30.0,
                "payload_mb": 8,
            }
        seconds = a.seconds if a.seconds is not None else (1.0 if a.quick else 10.0)
        inflight = a.inflight if a.inflight is not None else (8 if a.quick else 64)
        if seconds <= 0 or inflight < 1:
            p.error("--seconds must be > 0 and --inflight at least 1")
        return cls(
            seconds=seconds,
            inflight=inflight,
            repeat=a.repeat,
            only=a.only,
            quick=a.quick,
            processors=a.processors,
            results_dir=a.results_dir,
            profile=a.profile,
            parts=parts,
            shards=a.shards,
            rate=a.rate,
            **extra,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}
