"""Closed loop on loopback: simulated detector stream -> service -> stage -> next frame.

The detector streamer renders each projection with the true drift plus the current piezo
offset, so the service's corrections really change what it sees. The interferometer feed is
sampled from the same drift truth (plus noise), as the simulated IOC does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tomolock.devices.sim.drift import DriftParams, SimulatedDrift
from tomolock.devices.sim.inprocess import InProcessStage, feed_interferometer, rotate, step_scan
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.devices.sim.streamer import DetectorStreamer, ManualBeamState
from tomolock.service.config import TomolockSettings
from tomolock.service.pipeline import DriftCorrectionService
from tomolock.service.record import DriftLogReader

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
    shape = (160, 160)
    cfg = ScanConfig(shape=shape, counts=3000.0, seed=3, drift=PARAMS)
    sim = ScanSimulator(cfg)
    drift = SimulatedDrift(PARAMS, seed=3)
    beam = ManualBeamState()
    streamer = DetectorStreamer(sim, drift, beam, seed=1)
    settings = TomolockSettings(
        ingest={"frames_address": streamer.address},
        feedback={"mode": "apply", "publish_address": "tcp://127.0.0.1:0",
                  "interlocks": {"max_step_um": 1.5, "min_confidence": 0.2}},
        record={"directory": tmp_path},
    )
    service = DriftCorrectionService(settings, actuator=InProcessStage(beam))
    angles = np.linspace(0.0, 180.0, 61)
    stop = asyncio.Event()
    async with service:
        feeder = asyncio.create_task(feed_interferometer(service, drift, beam, stop))
        try:
            # Runout calibration sweep: the interferometer feed alone fits the harmonics.
            await rotate(beam, np.linspace(0.0, 360.0, 181), 0.01)
            await step_scan(streamer, service, beam, "ref", angles, role="reference")
            assert len(service.processor.references) == len(angles)
            headers = await step_scan(streamer, service, beam, "scan1", angles)
        finally:
            stop.set()
            await feeder
            streamer.close()
    truth = np.array([[h.truth["dy_px"], h.truth["dx_px"]] for h in headers])
    t_s = np.array([h.truth["t_s"] for h in headers])
    uncorrected = drift.detector_shift_px(angles, t_s)
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
