"""Run the live service against the in-process simulated beamline (no EPICS).

One harness for tests, benchmarks and notebooks: a detector streamer rendering the true drift
plus the piezo offset the service commands, an interferometer feed from the same drift truth, a
fine stage that moves instantly, and the service in ``apply`` mode on loopback ZMQ.

Example
-------
>>> async with simulated_loop(DriftParams.typical(), shape=(128, 128), workdir=tmp) as sl:
...     await rotate(sl.beam, np.linspace(0, 360, 181), 0.01)        # runout calibration
...     await step_scan(sl.streamer, sl.service, sl.beam, "ref", angles, role="reference")
...     headers = await step_scan(sl.streamer, sl.service, sl.beam, "scan", angles)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tomolock.devices.sim.drift import DriftParams, SimulatedDrift
from tomolock.devices.sim.inprocess import InProcessStage, feed_interferometer, rotate, step_scan
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.devices.sim.streamer import DetectorStreamer, ManualBeamState
from tomolock.service.config import TomolockSettings
from tomolock.service.pipeline import DriftCorrectionService
from tomolock.service.wire import FrameHeader


@dataclass
class SimulatedLoop:
    """Handles of a running simulated loop."""

    service: DriftCorrectionService
    streamer: DetectorStreamer
    beam: ManualBeamState
    drift: SimulatedDrift
    stage: InProcessStage


@contextlib.asynccontextmanager
async def simulated_loop(
    params: DriftParams,
    *,
    shape: tuple[int, int],
    workdir: Path,
    seed: int = 3,
    counts: float = 3000.0,
    settings: dict[str, Any] | None = None,
    phantom_shape: tuple[int, int] | None = None,
) -> AsyncIterator[SimulatedLoop]:
    """Start streamer, service (apply mode) and interferometer feed; stop them on exit.

    Parameters
    ----------
    params : DriftParams
        The drift truth.
    shape : tuple of int
        Frame shape.
    workdir : Path
        Drift-log directory.
    seed : int
        Phantom, drift and noise seed.
    counts : float
        Mean flat counts per pixel.
    settings : dict, optional
        Sections merged over the defaults (``{"feedback": {...}}``, ...).
    phantom_shape : tuple of int, optional
        Phantom design size; a detector wider than it keeps the sample inside the field of
        view at every angle (default: the frame shape, the sample crosses the side edges).
    """
    sim = ScanSimulator(ScanConfig(shape=shape, counts=counts, seed=seed, drift=params,
                                   phantom_shape=phantom_shape))
    drift = SimulatedDrift(params, seed=seed)
    beam = ManualBeamState()
    streamer = DetectorStreamer(sim, drift, beam, seed=seed + 1)
    sections: dict[str, Any] = {
        "ingest": {"frames_address": streamer.address},
        "feedback": {"mode": "apply", "publish_address": "tcp://127.0.0.1:0",
                     "interlocks": {"max_step_um": 1.5, "min_confidence": 0.2}},
        "record": {"directory": workdir},
    }
    for name, values in (settings or {}).items():
        sections[name] = {**sections.get(name, {}), **values}
    stage = InProcessStage(beam)
    service = DriftCorrectionService(TomolockSettings(**sections), actuator=stage)
    stop = asyncio.Event()
    try:
        async with service:
            feeder = asyncio.create_task(feed_interferometer(service, drift, beam, stop))
            try:
                yield SimulatedLoop(service, streamer, beam, drift, stage)
            finally:
                stop.set()
                await feeder
    finally:
        streamer.close()


async def calibrated_scan(
    loop: SimulatedLoop,
    angles: np.ndarray,
    *,
    scan_id: str = "scan",
    progress: Callable[[int, int], None] | None = None,
) -> list[FrameHeader]:
    """Runout sweep, reference scan, then the measured scan; returns its frame headers."""
    await rotate(loop.beam, np.linspace(0.0, 360.0, 181), 0.01)
    await step_scan(loop.streamer, loop.service, loop.beam, "ref", angles, role="reference")
    return await step_scan(
        loop.streamer, loop.service, loop.beam, scan_id, angles, progress=progress
    )


def residuals(loop: SimulatedLoop, headers: list[FrameHeader]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(dy, dx)`` px the detector saw, and what it would have seen uncorrected."""
    truth = np.array([[h.truth["dy_px"], h.truth["dx_px"]] for h in headers])
    angles = np.array([h.angle_deg for h in headers])
    t_s = np.array([h.truth["t_s"] for h in headers])
    return truth, np.asarray(loop.drift.detector_shift_px(angles, t_s))
