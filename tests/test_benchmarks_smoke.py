"""The benchmark code paths run (tiny sizes): API drift breaks a test, not `make bench`.

No timing is asserted here; speed targets live in the benchmark's JSON output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks import estimator, loop


def test_estimator_benchmark_paths() -> None:
    speed = estimator._speed(128, 3, seed=1)
    assert set(speed["speedup_vs_skimage"]) == {
        "tomolock_full", "tomolock_full_1thread", "tomolock_bin2"
    }
    acc = estimator._accuracy(128, 1000.0, 2, seed=2)
    assert acc["crlb_px"] > 0 and acc["tomolock"]["rms_over_crlb"] > 0


@pytest.mark.slow
def test_loop_benchmark_paths(tmp_path: Path) -> None:
    closed = asyncio.run(loop._closed_loop(loop.LOW_JITTER, 64, 12, tmp_path))
    assert closed["frames"] == 12 and closed["rms_uncorrected_px"] > closed["rms_residual_px"]
    thr = asyncio.run(loop._throughput(128, 20.0, 12, tmp_path))
    assert thr["control_messages_lost"] == 0
    assert thr["processed_measured"] + thr["dropped_overload"] >= 1
