"""Closed loop on loopback: simulated detector stream -> service -> stage -> next frame.

The detector streamer renders each projection with the true drift plus the current piezo
offset, so the service's corrections really change what it sees. The interferometer feed is
sampled from the same drift truth (plus noise), as the simulated IOC does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomolock.devices.sim.drift import DriftParams
from tomolock.service.record import DriftLogReader
from tomolock.service.simloop import calibrated_scan, residuals, simulated_loop

# Typical runout (~23 px peak in x) with a thermal warm-up fast enough to matter within a
# test, and little unpredictable jitter (white jitter cannot be corrected by any loop).
PARAMS = DriftParams(
    thermal_tau_s=300.0,
    thermal_stage_um=(0.3, 0.1, 0.2),
    thermal_sample_um=(0.25, 0.05, 0.3),
    jitter_rms_um=0.0005,
    vibration=(),
    jump_rate_per_h=0.0,
    jump_size_um=0.0,
)


@pytest.mark.slow
async def test_closed_loop_removes_runout_and_thermal_drift(tmp_path: Path) -> None:
    angles = np.linspace(0.0, 180.0, 61)
    async with simulated_loop(PARAMS, shape=(160, 160), workdir=tmp_path) as sl:
        headers = await calibrated_scan(sl, angles, scan_id="scan1")
        assert len(sl.service.processor.references) == len(angles)
        truth, uncorrected = residuals(sl, headers)
    converged = slice(10, None)
    # Pre-positioned at scan start: even the first frame is corrected.
    assert np.abs(truth[0]).max() < 2.0
    rms = float(np.sqrt(np.mean(truth[converged] ** 2)))
    rms_uncorrected = float(np.sqrt(np.mean(uncorrected[converged] ** 2)))
    print(f"residual {rms:.3f} px RMS vs uncorrected {rms_uncorrected:.3f} px RMS")
    assert np.abs(uncorrected[:, 1]).max() > 15  # the scenario really has >= 20 px-class runout
    assert rms < 0.25
    assert rms_uncorrected / rms > 20
    # The drift log holds every projection with its estimates.
    (path,) = tmp_path.glob("*scan1*")
    rows = DriftLogReader(path).rows
    assert len(rows) == len(angles)
