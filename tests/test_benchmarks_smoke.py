"""The benchmark code paths run (tiny sizes): API drift breaks a test, not `make bench`.

No timing is asserted here; speed targets live in the benchmark's JSON output.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks import estimator, loop, online_to_fine


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


@pytest.mark.parametrize("iterations", [["--iterations", "auto", "--max-iterations", "1"],
                                        ["--iterations", "1,1"]])
def test_align_benchmark_paths(iterations: list[str], capsys: pytest.CaptureFixture[str]
                               ) -> None:
    import json

    from tomolock.service.align import benchmark as B

    assert B.main(["--projections", "13", "--size", "32", "--fov", "padded",
                   "--start-noise", "0.5", "--levels", "2,1", "--executors", "serial",
                   *iterations]) == 0
    report = json.loads(capsys.readouterr().out)
    (run,) = report["runs"]
    assert run["serial"]["iterations_per_level"] == {"2": 1, "1": 1}
    assert run["serial"]["rms_dx_px"] >= 0


@pytest.mark.slow
def test_online_to_fine_benchmark_paths() -> None:
    run = online_to_fine.one(13, 32, "padded", workers=0, levels=(1,), max_iterations=1)
    assert run["online_matched"] == 13 and run["detector"] == [32, 48]
    assert run["fine_iterations_per_level"] == {"1": 1}
    assert run["online_log_error_rms_px"]["dx"] > 0 and run["fine_error_rms_px"]["dx"] > 0
