"""Interferometer and microscope readings against the drift truth at the current angle."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aioca
import numpy as np
import pytest
from ophyd_async.core import wait_for_value

from tomolock.devices.sim.drift import DriftParams, SimulatedDrift

if TYPE_CHECKING:
    from sim_fixtures import SimDevices

pytest_plugins = ["sim_fixtures"]


def _truth(sim_devices: SimDevices) -> SimulatedDrift:
    cfg = sim_devices.beamline.config
    return SimulatedDrift(getattr(DriftParams, cfg.drift_preset)(), seed=cfg.drift_seed)


async def _collect(samples, n: int) -> list:
    """The next ``n`` samples taken after now (the first monitor may predate a move's end)."""
    since = time.time()
    out = []
    async for s in samples:
        if s.timestamp > since:
            out.append(s)
        if len(out) == n:
            return out
    return out


async def test_interferometer_matches_drift_plus_piezo_offset(sim_devices: SimDevices):
    stage, ifm = sim_devices.stage, sim_devices.interferometer
    await asyncio.gather(stage.rotation.set(72.0), stage.x.set(1.5), stage.z.set(-0.8))
    t0 = await aioca.caget(sim_devices.beamline.prefixes.control + "T0")
    samples = await _collect(ifm.samples(), 30)
    assert all(s.valid for s in samples)
    measured = np.array([[s.x_nm, s.y_nm, s.z_nm] for s in samples])
    t = np.array([s.timestamp for s in samples]) - t0
    expected = _truth(sim_devices).interferometer_um(72.0, t) * 1e3 + np.array([1500.0, 0, -800])
    residual = measured - expected
    # 2 nm Gaussian noise per axis: mean within ~4 sigma/sqrt(n), spread about 2 nm
    assert np.abs(residual.mean(axis=0)).max() < 2.0
    assert 1.0 < residual.std() < 3.5
    # the drift itself is far larger than the noise, so this comparison has teeth
    assert np.abs(expected).max() > 300
    await asyncio.gather(stage.rotation.set(0.0), stage.x.set(0.0), stage.z.set(0.0))


async def test_interferometer_follows_rotation_angle(sim_devices: SimDevices):
    stage, ifm = sim_devices.stage, sim_devices.interferometer
    drift = _truth(sim_devices)
    readings = {}
    for angle in (0.0, 90.0):
        await stage.rotation.set(angle)
        (s,) = await _collect(ifm.samples(), 1)
        readings[angle] = np.array([s.x_nm, s.y_nm, s.z_nm])
    expected = (drift.runout_um(90.0) - drift.runout_um(0.0)) * 1e3
    assert np.allclose(readings[90.0] - readings[0.0], expected, atol=12.0)  # noise + thermal
    await stage.rotation.set(0.0)


async def test_microscope_matches_drift_within_its_noise(sim_devices: SimDevices):
    stage, vlm = sim_devices.stage, sim_devices.microscope
    await asyncio.gather(stage.rotation.set(200.0), stage.y.set(2.0))
    t0 = await aioca.caget(sim_devices.beamline.prefixes.control + "T0")
    samples = await _collect(vlm.samples(), 4)
    assert samples[-1].valid and samples[-1].quality is not None
    measured = np.array([[s.x_um, s.y_um, s.z_um] for s in samples])
    t = np.array([s.timestamp for s in samples]) - t0
    expected = _truth(sim_devices).microscope_um(200.0, t) + np.array([0.0, 2.0, 0.0])
    assert np.abs(measured - expected).max() < 0.1  # 20 nm noise, 5 sigma
    assert np.abs(measured - expected).std() > 0.002  # noise is really there
    await asyncio.gather(stage.rotation.set(0.0), stage.y.set(0.0))


async def test_blocked_interferometer_beam_reports_invalid(sim_devices: SimDevices):
    ctrl = sim_devices.beamline.prefixes.control
    ifm = sim_devices.interferometer
    await aioca.caput(ctrl + "IFM_BLOCK", 1, wait=True)
    try:
        await wait_for_value(ifm.valid, 0, timeout=2)
        assert await ifm.signal_strength.get_value() == 0.0
    finally:
        await aioca.caput(ctrl + "IFM_BLOCK", 0, wait=True)
    await wait_for_value(ifm.valid, 1, timeout=2)


async def test_interferometer_rate_is_published(sim_devices: SimDevices):
    assert await sim_devices.interferometer.rate_hz.get_value() == pytest.approx(100.0)
    assert await sim_devices.microscope.rate_hz.get_value() == pytest.approx(10.0)
