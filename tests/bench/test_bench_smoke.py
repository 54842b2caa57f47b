"""`bench/run.py --quick` runs end to end: table on stdout, every figure in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FIGURES = (
    "floor_publish_p50_ms",
    "floor_publish_p99_ms",
    "floor_pipelined_per_s",
    "bare_hello_p50_ms",
    "bare_order_p50_ms",
    "bare_hello_per_s",
    "bare_order_per_s",
    "bare_hello_cpu_python_ms",
    "bare_order_cpu_python_ms",
    "hello_seq_p50_ms",
    "hello_seq_p99_ms",
    "hello_per_s",
    "order_seq_p50_ms",
    "order_seq_p99_ms",
    "order_per_s",
    "order_per_step_ms",
    "many_steps_per_step_ms",
    "rss_idle_mb",
    "rss_inflight_mb",
    "rss_sleeping_mb",
    "rss_sleeping_inflight_mb",
    "floor_object_mb_per_s",
    "payload_mb_per_s",
    "hello_cpu_python_ms",
    "order_cpu_python_ms",
    "hello_at_rate_p50_ms",
    "hello_at_rate_cpu_python_ms",
    "hello_at_rate_cpu_nats_ms",
    "hello_at_rate_cpu_all_ms",
    "order_at_rate_cpu_python_ms",
)
NEED_SLEEP = ("rss_sleeping_mb", "rss_sleeping_inflight_mb")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_bench_on_a_single_node_reports_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--repeat",
            "1",
            "--only",
            "single",
            "--rate",
            "40",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "== single: 1 node, R1" in proc.stdout
    assert "hello sequential p50" in proc.stdout and "targets:" in proc.stdout
    assert "elapsed:" in proc.stdout
    assert "hello, engine over its bare path: p50 " in proc.stdout

    (path,) = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["nats_server"]
    assert list(doc["setups"]) == ["single"]
    single = doc["setups"]["single"]
    assert single["errors"] == []
    assert set(FIGURES) <= set(single["figures"])
    for key in FIGURES:
        fig = single["figures"][key]
        if key in NEED_SLEEP and fig.get("note", "").startswith("skipped"):
            assert fig["median"] is None
            continue
        assert fig["median"] is not None and fig["median"] > 0, key
        assert len(fig["runs"]) == 1, key
    (fixed,) = single["details"]["hello_at_rate_runs"]
    assert fixed["rate_per_s"] == 40 and fixed["completed"] == 40, fixed  # 1 s at 40/s
    cpu = fixed["cpu_ms_per_invocation"]
    assert cpu["all"] > cpu["python"] > 0 and cpu["nats"] > 0, cpu
    assert "hello p50 @40/s" in proc.stdout and "3-step p50 @20/s" in proc.stdout
    latency = single["figures"]["hello_seq_p50_ms"]
    assert latency["vs_floor"] == pytest.approx(
        latency["median"] / single["figures"]["floor_publish_p50_ms"]["median"]
    )
    assert {t["target"] for t in single["targets"]} >= {
        "hello sequential p50 <= 8x publish+ack p50",
        "3-step sequential p50 <= 10x publish+ack p50",
    }
