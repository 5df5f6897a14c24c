"""Per-frame strategy choice of the live processor, on simulator projections with known shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.service.config import EstimateSettings
from tomolock.service.processor import FrameProcessor


@pytest.fixture(scope="module")
def sim() -> ScanSimulator:
    return ScanSimulator(ScanConfig(shape=(128, 128), counts=5000.0, seed=11))


def _processor(sim: ScanSimulator, **settings: object) -> FrameProcessor:
    p = FrameProcessor(EstimateSettings(workers=1, **settings))
    for f in sim.darks():
        p.add_dark(f.image)
    for f in sim.flats():
        p.add_flat(f.image)
    return p


def test_reference_scan_then_measurement(sim: ScanSimulator) -> None:
    rng = np.random.default_rng(0)
    p = _processor(sim)
    p.begin_scan("reference", keep_dark_flat=True)
    for a in (0.0, 10.0, 20.0):
        r = p.process(0, a, 0.0, sim.render(a, (0.0, 0.0), rng=rng), position_um={"x": 0.1})
        assert r.strategy == "reference_acquired"
    p.begin_scan("measurement", keep_dark_flat=True)
    truth = (1.7, -3.2)
    r = p.process(1, 10.05, 1.0, sim.render(10.0, truth, rng=rng))
    assert r.strategy == "reference_scan" and r.reference_angle_deg == pytest.approx(10.0)
    assert r.reference_position_um == {"x": 0.1}
    assert (r.estimate.dy, r.estimate.dx) == pytest.approx(truth, abs=0.1)
    # No reference within tolerance: rotation-invariant vertical estimate only.
    r = p.process(2, 45.0, 2.0, sim.render(45.0, truth, rng=rng))
    assert r.strategy == "mass_profile" and math.isnan(r.estimate.dx)


def test_first_n_serves_a_360_degree_revisit(sim: ScanSimulator) -> None:
    rng = np.random.default_rng(1)
    p = _processor(sim, first_n=2)
    p.begin_scan("measurement", keep_dark_flat=True)
    for a in (0.0, 5.0):
        r = p.process(0, a, 0.0, sim.render(a, (0.0, 0.0), rng=rng), position_um={"z": 0.2})
        assert r.strategy == "mass_profile"
    assert len(p.scan_references) == 2
    truth = (-2.4, 1.1)
    r = p.process(2, 360.0, 9.0, sim.render(0.0, truth, rng=rng), position_um={"z": 0.0})
    assert r.strategy == "first_n" and r.reference_position_um == {"z": 0.2}
    assert (r.estimate.dy, r.estimate.dx) == pytest.approx(truth, abs=0.1)
    assert len(p.scan_references) == 2  # only the first N are kept
    p.begin_scan("measurement", keep_dark_flat=True)
    assert len(p.scan_references) == 0  # per scan


def test_bad_frames_are_rejected_with_a_reason(sim: ScanSimulator) -> None:
    p = FrameProcessor(EstimateSettings(workers=1))
    r = p.process(0, 0.0, 0.0, sim.render(0.0, (0.0, 0.0)))
    assert r.strategy == "rejected" and "flat" in r.error.lower()
    p = _processor(sim)
    p.begin_scan("measurement", keep_dark_flat=True)
    bad = np.full((128, 128), np.nan, dtype=np.float32)
    r = p.process(0, 0.0, 0.0, bad)
    assert r.strategy == "rejected" and r.error
    with pytest.raises(ValueError, match="role"):
        p.begin_scan("calibration")  # type: ignore[arg-type]
