"""The soak's verdict on synthetic samples: flat passes; growing memory, growing latency and a
lost invocation each fail it."""

from __future__ import annotations

import os

from .soak import (
    MB,
    Done,
    baseline,
    cpu_seconds,
    go_memory,
    rss_bytes,
    table,
    unjudged,
    verdict,
    windows,
)

LENGTH, WINDOW = 1800.0, 300.0


def samples(
    growth_mb_per_min: float = 0.0, latency_growth: float = 0.0
) -> tuple[list[tuple[float, dict[str, int]]], list[Done]]:
    rss = [
        (t, {"p1": int((80 + growth_mb_per_min * t / 60) * MB), "n1": 60 * MB})
        for t in range(0, int(LENGTH), 10)
    ]
    done = [Done(t / 10, 0.3 + latency_growth * t / 10 / LENGTH) for t in range(int(LENGTH) * 10)]
    return rss, done


def test_flat_memory_and_latency_pass() -> None:
    rss, done = samples()
    sizes = [(299.0, {"S": (1000, 10, 3), "KV_T": (0, 0, 2)}), (310.0, {"S": (1000, 10, 4)})]
    ws = windows(LENGTH, WINDOW, rss, done, sizes, [(60.0, "kill p1")])
    assert len(ws) == 6
    assert verdict(ws, submitted=len(done), completed=len(done)) == []
    assert ws[0].sizes == {"S": (1000, 10, 3), "KV_T": (0, 0, 2)} and ws[0].faults == ["kill p1"]
    assert ws[0].p50 == ws[-1].p50 == 0.3
    lines = table(ws)
    assert lines[1] == " 0.0-5.0  min |  3000 | 0.300 | 0.300 |    60.0 |    80.0"
    assert (
        "  S                               0.00 /     10 /   3 |    0.00 /     10 /   4"
        in "\n".join(lines)
    )
    assert "consumers at the end of each window (all streams): 5, 4, -, -, -, -" in lines


def test_memory_that_grows_fails() -> None:
    # 2 MB a minute: the first window's peak is ~90 MB, the last's ~140 MB > 90 x 1.2 + 10.
    rss, done = samples(growth_mb_per_min=2.0)
    ws = windows(LENGTH, WINDOW, rss, done, [])
    assert verdict(ws, submitted=1, completed=1) == [
        "p1: RSS 139.7 MB in the last window > 117.6 MB (1.2 x 89.7 MB + 10 MB, window "
        "0.0-5.0  min)"
    ]
    # After a warm-up of 270 s the baseline is the second window (peak ~99.7 MB): still caught.
    assert verdict(ws, submitted=1, completed=1, warmup=270)[0].startswith(
        "p1: RSS 139.7 MB in the last window > 129.6 MB"
    )


def test_the_baseline_is_a_window_in_which_the_process_was_not_restarted() -> None:
    # n1 climbs towards its 150 MB plateau, is killed at 330 s (in the first window after the
    # warm-up) and climbs again from 20 MB, reaching the plateau in the last window. Judged
    # against the window it was killed in (peak 100 MB), the plateau would look like growth;
    # against the next one (134 MB) it is flat. p1 grows 2 MB a minute, never restarted:
    # still caught.
    def n1(t: float) -> float:
        return min(150.0, 20 + t / 4 if t < 330 else 20 + (t - 330) / 5)

    rss = [
        (t, {"n1": int(n1(t) * MB), "p1": int((80 + 2 * t / 60) * MB)})
        for t in range(0, int(LENGTH), 10)
    ]
    kill = [(330.0, "kill_leader n1 leader of S, down 2s")]
    problems = verdict(
        windows(LENGTH, WINDOW, rss, [], [], kill), submitted=1, completed=1, warmup=270
    )
    assert [p.split(":")[0] for p in problems if not p.startswith("no latencies")] == ["p1"]
    # A pause is no restart: n1's baseline stays the window of the fault, and it fails.
    pause = [(330.0, "pause_node n1 SIGSTOP 11s")]
    problems = verdict(
        windows(LENGTH, WINDOW, rss, [], [], pause), submitted=1, completed=1, warmup=270
    )
    assert any(p.startswith("n1: RSS 150.0 MB in the last window > 130.0 MB") for p in problems)


def test_memory_is_not_judged_without_a_window_after_the_warm_up() -> None:
    rss, done = samples(growth_mb_per_min=2.0)
    ws = windows(LENGTH, WINDOW, rss, done, [])
    assert verdict(ws, submitted=1, completed=1, warmup=LENGTH - WINDOW) == []
    assert verdict(ws, submitted=1, completed=1, ignore=["p1"]) == []


def test_latency_that_grows_fails() -> None:
    # From 0.3 s to 0.8 s: the last window's median is well past 1.5 x the first's.
    rss, done = samples(latency_growth=0.5)
    problems = verdict(windows(LENGTH, WINDOW, rss, done, []), submitted=1, completed=1)
    assert len(problems) == 1
    assert problems[0].startswith("p50 latency ")


def test_an_invocation_that_did_not_complete_fails() -> None:
    rss, done = samples()
    ws = windows(LENGTH, WINDOW, rss, done, [])
    assert verdict(ws, submitted=10, completed=9) == [
        "1 of 10 submitted invocations did not complete"
    ]
    assert verdict(ws, submitted=1, completed=1, problems=["x: FAILED"]) == ["x: FAILED"]


def test_rss_and_cpu_of_this_process_are_read() -> None:
    mine = rss_bytes(os.getpid())
    assert mine is not None and mine > MB
    used = cpu_seconds(os.getpid())
    assert used is not None and used > 0
    assert rss_bytes(2**22 + 12345) is None and cpu_seconds(2**22 + 12345) is None


def test_cpu_is_counted_between_samples_of_one_pid() -> None:
    # p1 uses 1 s of CPU every 10 s (10%); it restarts (a new PID) at 450 s, which loses one
    # interval: the one across the restart.
    cpu = [(t, {"p1": (1 if t < 450 else 2, (t % 450) / 10)}) for t in range(0, 900, 10)]
    ws = windows(900.0, 300.0, [], [], [], cpu=cpu)
    assert [round(w.cpu["p1"], 1) for w in ws] == [29.0, 29.0, 30.0]
    assert "0.0-5.0  min: p1 10; all 10" in [line.strip() for line in table(ws)]


def test_the_warm_up_starts_again_after_a_processs_own_restart() -> None:
    # p2 is killed at 63 s and climbs from 60 MB to its 120 MB plateau over twenty minutes;
    # at 5-10 min (a window after the system's warm-up, and without a restart) it is only 237 s
    # into its own life. Judged there (87 MB) its plateau looked like growth (soak 3: 1.2 x 87
    # + 10 < 120). Its first window at least the warm-up after its restart is 10-15 min
    # (102 MB): flat against that.
    def p2(t: float) -> float:
        return 60.0 if t < 63 else min(120.0, 60 + (t - 63) / 20)

    rss = [(t, {"p2": int(p2(t) * MB)}) for t in range(0, int(LENGTH), 10)]
    kill = [(63.0, "kill_processor p2 restart after 2.6s")]
    ws = windows(LENGTH, WINDOW, rss, [Done(1, 0.3), Done(1700, 0.3)], [], kill)
    assert verdict(ws, submitted=1, completed=1, warmup=270) == []
    assert baseline(ws, 270, "p2") is ws[2]
    # Killed again in every window after that: nothing left to judge it by, and it is said so.
    kills = kill + [(w * 300.0 + 60, "kill_processor p2 restart after 2s") for w in (2, 3, 4)]
    ws = windows(LENGTH, WINDOW, rss, [Done(1, 0.3), Done(1700, 0.3)], [], kills)
    assert baseline(ws, 270, "p2") is None
    assert unjudged(ws, 270) == ["p2"]
    # A process that really grows is still caught after an early restart.
    rss = [(t, {"p2": int((60 + 2 * t / 60) * MB)}) for t in range(0, int(LENGTH), 10)]
    ws = windows(LENGTH, WINDOW, rss, [Done(1, 0.3), Done(1700, 0.3)], [], kill)
    assert verdict(ws, submitted=1, completed=1, warmup=270)[0].startswith("p2: RSS 119.7 MB")


HEAP_PROFILE_TAIL = """1: 480 [1: 480] @ 0x489425 0x420a65
#\t0x489424\truntime.mallocgc+0x104\t\truntime/malloc.go:1131


# runtime.MemStats
# Alloc = 1005440
# Sys = 12540168
# HeapIdle = 5832704
# HeapInuse = 1867776
# HeapReleased = 5767168
# PauseNs = [0 0 0]
"""


def test_go_memory_is_read_from_a_heap_profile_and_reported_per_window() -> None:
    figures = go_memory(HEAP_PROFILE_TAIL)
    assert figures == {
        "Sys": 12540168,
        "HeapIdle": 5832704,
        "HeapInuse": 1867776,
        "HeapReleased": 5767168,
    }
    assert go_memory("no statistics here") == {}
    rss, done = samples()
    later = {**figures, "HeapInuse": 40 * MB}
    ws = windows(
        LENGTH, WINDOW, rss, done, [], go=[(10.0, {"n1": figures}), (1790.0, {"n1": later})]
    )
    assert ws[0].go == {"n1": figures} and ws[-1].go == {"n1": later} and ws[2].go == {}
    lines = table(ws)
    at = lines.index(next(x for x in lines if x.startswith("NATS Go memory")))
    assert lines[at + 1] == "   0.0-5.0  min: n1 1.8 / 0.1 / 5.5"
    assert lines[at + 6] == "  25.0-30.0 min: n1 40.0 / 0.1 / 5.5"
    assert lines[at + 3] == "  10.0-15.0 min: -"
    # Without samples (no namespaces, hence no pprof endpoints) the block is left out.
    assert not any(
        x.startswith("NATS Go memory") for x in table(windows(LENGTH, WINDOW, rss, done, []))
    )
