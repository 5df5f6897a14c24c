"""An in-process simulated beamline for the live service, without EPICS.

The caproto IOC (:mod:`.ioc`) is the faithful simulation; this module gives the same physics
to code that runs the service in one process (tests, benchmarks, notebooks): a fine stage whose
moves change what the :class:`~.streamer.DetectorStreamer` renders next, an interferometer feed
sampled from the drift truth, and a step-scan driver that waits for the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from tomolock.service.wire import FrameHeader

from .drift import SimulatedDrift
from .streamer import DetectorStreamer, ManualBeamState


class _Service(Protocol):
    """What the drivers need of :class:`tomolock.service.pipeline.DriftCorrectionService`."""

    scan: Any

    def feed_interferometer(
        self, t: float, values_nm: tuple[float, float, float], *, ok: bool = True,
        angle_deg: float | None = None,
    ) -> None: ...


class InProcessStage:
    """Fine piezo stage of a :class:`ManualBeamState` (um, lab frame, moves instantly).

    Implements the feedback's ``StageActuator`` protocol.
    """

    def __init__(self, beam: ManualBeamState) -> None:
        self.beam = beam
        self.moves = 0

    async def positions(self) -> dict[str, float]:
        """Return the current offsets per axis."""
        x, y, z = self.beam.stage_offset_um
        return {"x": x, "y": y, "z": z}

    async def move(self, targets: dict[str, float], timeout: float) -> None:
        """Move the named axes to ``targets`` (um)."""
        off = dict(zip("xyz", self.beam.stage_offset_um, strict=True))
        unknown = set(targets) - set(off)
        if unknown:
            raise ValueError(f"unknown axes {sorted(unknown)}")
        off.update(targets)
        self.beam.stage_offset_um = (off["x"], off["y"], off["z"])
        self.moves += 1


async def feed_interferometer(
    service: _Service,
    drift: SimulatedDrift,
    beam: ManualBeamState,
    stop: asyncio.Event,
    *,
    period_s: float = 0.01,
    noise_nm: float = 2.0,
    seed: int = 0,
) -> int:
    """Feed interferometer readings (runout + stage thermal + stage offset, nm) until ``stop``.

    Returns the number of readings sent.
    """
    rng = np.random.default_rng(seed)
    n = 0
    while not stop.is_set():
        st = beam()
        nm = (drift.interferometer_um(st.angle_deg, st.t_s) + st.stage_offset_um) * 1e3
        nm = nm + rng.normal(0.0, noise_nm, 3)
        service.feed_interferometer(st.timestamp, tuple(nm), angle_deg=st.angle_deg)
        n += 1
        await asyncio.sleep(period_s)
    return n


async def rotate(beam: ManualBeamState, angles: Sequence[float], dwell_s: float) -> None:
    """Step the rotation through ``angles``, ``dwell_s`` at each (a calibration sweep)."""
    for a in angles:
        beam.angle_deg = float(a)
        await asyncio.sleep(dwell_s)


async def step_scan(
    streamer: DetectorStreamer,
    service: _Service,
    beam: ManualBeamState,
    scan_id: str,
    angles: Sequence[float],
    *,
    role: str = "measurement",
    exposure_s: float = 0.01,
    timeout_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[FrameHeader]:
    """Run a step scan: for each angle rotate, expose, and wait until the service processed it.

    Waiting for the service stands in for the plan's settle time: the next exposure sees the
    correction computed from this one.
    """
    headers: list[FrameHeader] = []
    await streamer.start_scan(scan_id, {"role": role, "angles_deg": [float(a) for a in angles]})
    for i, a in enumerate(angles):
        beam.angle_deg = float(a)
        headers.append(await streamer.acquire(exposure_s))
        deadline = time.monotonic() + timeout_s
        while (
            service.scan is None
            or service.scan.scan_id != scan_id
            or service.scan.processed < len(headers)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not process frame {i} of {scan_id}")
            await asyncio.sleep(0.002)
        if progress is not None:
            progress(i + 1, len(angles))
    await streamer.end_scan()
    return headers
