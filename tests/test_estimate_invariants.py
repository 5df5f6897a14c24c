"""Rotation-invariant estimators on an analytic rotating object made of 3-D Gaussian blobs.

The parallel projection of a 3-D Gaussian blob is a 2-D Gaussian: at angle t a blob at
(x0, y0, z0) lands at column u = axis + x0 cos t - y0 sin t and row v = centre + z0, with the
mass preserved. Drift (dz, dx) is added to (v, u) exactly, so the ground truth is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from tomolock.service.estimate import (
    InvalidFrameError,
    centre_of_mass,
    fit_com_sinusoid,
    mass_profile_shift,
    mirror_pair_offset,
)

SHAPE = (128, 160)
AXIS_COL = (SHAPE[1] - 1) / 2


def make_object(seed: int = 4, n_blobs: int = 40) -> np.ndarray:
    """Blobs as rows (x0, y0, z0, sigma, mass) inside a cylinder of radius 30 px."""
    rng = np.random.default_rng(seed)
    radius = 30 * np.sqrt(rng.uniform(0, 1, n_blobs))
    phi = rng.uniform(0, 2 * np.pi, n_blobs)
    z0 = rng.uniform(-35, 35, n_blobs)
    sigma = rng.uniform(2.0, 4.5, n_blobs)
    mass = rng.uniform(0.5, 2.0, n_blobs)
    return np.column_stack([radius * np.cos(phi) + 6, radius * np.sin(phi) - 4, z0, sigma, mass])


OBJECT = make_object()


def project(
    angle_deg: float,
    *,
    drift_x: float = 0.0,
    drift_z: float = 0.0,
    axis_col: float = AXIS_COL,
    blobs: np.ndarray = OBJECT,
) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    x0, y0, z0, s, m = blobs.T
    u = axis_col + x0 * np.cos(t) - y0 * np.sin(t) + drift_x
    v = (SHAPE[0] - 1) / 2 + z0 + drift_z
    rows = np.arange(SHAPE[0])[:, None]
    cols = np.arange(SHAPE[1])[:, None]
    g_rows = np.exp(-((rows - v) ** 2) / (2 * s**2)) * m / (2 * np.pi * s**2)
    g_cols = np.exp(-((cols - u) ** 2) / (2 * s**2))
    return g_rows @ g_cols.T


def test_projection_mass_is_angle_invariant():
    masses = [project(a).sum() for a in (0, 37, 90, 211)]
    assert np.ptp(masses) < 1e-6 * masses[0]


@pytest.mark.parametrize(("angle", "dz"), [(40.0, 1.37), (135.0, -2.6), (270.0, 0.45)])
def test_mass_profile_recovers_vertical_drift_across_angles(angle, dz):
    reference = project(0.0)
    frame = project(angle, drift_z=dz, drift_x=0.8)
    est = mass_profile_shift(reference, frame)
    assert abs(est.dy - dz) < 0.02, est
    assert np.isnan(est.dx)
    assert est.confidence > 0.99
    assert est.method == "mass_profile"


def test_mass_profile_mask_keeps_unrelated_content_out():
    reference = project(0.0)
    frame = project(90.0, drift_z=2.2)
    # A static feature on the detector (outside the sample's column band).
    clutter = np.zeros(SHAPE)
    clutter[20:30, 2:12] = 0.5
    mask = np.zeros(SHAPE, bool)
    mask[:, 30:130] = True
    unmasked = mass_profile_shift(reference + clutter, frame + clutter)
    masked = mass_profile_shift(reference + clutter, frame + clutter, mask=mask)
    assert abs(masked.dy - 2.2) < 0.02
    assert abs(unmasked.dy - 2.2) > 0.05


def test_mass_profile_confidence_low_for_unrelated_profile():
    reference = project(0.0)
    other = project(0.0, blobs=make_object(seed=77))
    assert mass_profile_shift(reference, other).confidence < 0.8
    assert mass_profile_shift(reference, project(50.0)).confidence > 0.99


def test_centre_of_mass_of_single_blob():
    blob = np.array([[10.0, -3.0, 7.5, 3.0, 1.0]])
    image = project(0.0, blobs=blob)
    row, col = centre_of_mass(image)
    assert row == pytest.approx((SHAPE[0] - 1) / 2 + 7.5, abs=1e-6)
    assert col == pytest.approx(AXIS_COL + 10.0, abs=1e-6)
    mask = np.zeros(SHAPE)
    mask[:, : int(AXIS_COL)] = 1.0  # keeps only the blob's far tail: COM moves left
    assert centre_of_mass(image, mask=mask)[1] < AXIS_COL


def test_centre_of_mass_rejects_empty_and_negative_mass():
    with pytest.raises(InvalidFrameError, match="constant"):
        centre_of_mass(np.zeros(SHAPE))
    with pytest.raises(InvalidFrameError, match="not positive"):
        centre_of_mass(-project(0.0))


def test_com_sinusoid_recovers_known_horizontal_drift():
    rng = np.random.default_rng(11)
    angles = np.arange(0.0, 360.0, 10.0)
    drift = np.cumsum(rng.normal(0, 0.3, angles.size))  # random-walk drift, px
    com = np.array(
        [centre_of_mass(project(a, drift_x=d))[1] for a, d in zip(angles, drift, strict=True)]
    )
    fit = fit_com_sinusoid(angles, com)
    # The fit absorbs the drift's own projection on {1, cos, sin}: compare with that.
    t = np.deg2rad(angles)
    basis = np.column_stack([np.ones_like(t), np.cos(t), np.sin(t)])
    drift_residual = drift - basis @ np.linalg.lstsq(basis, drift, rcond=None)[0]
    np.testing.assert_allclose(fit.residuals, drift_residual, atol=2e-3)
    # Object centre of mass (mass-weighted x0, y0) gives A = x, B = -y.
    x0, y0, _, _, m = OBJECT.T
    drift_fit = np.linalg.lstsq(basis, drift, rcond=None)[0]
    assert fit.a_cos == pytest.approx(np.average(x0, weights=m) + drift_fit[1], abs=2e-3)
    assert fit.b_sin == pytest.approx(-np.average(y0, weights=m) + drift_fit[2], abs=2e-3)
    assert fit.centre == pytest.approx(AXIS_COL + drift_fit[0], abs=2e-3)
    assert fit.amplitude == pytest.approx(np.hypot(fit.a_cos, fit.b_sin))


def test_com_sinusoid_robust_fit_survives_outliers():
    angles = np.arange(0.0, 360.0, 7.5)
    rng = np.random.default_rng(2)
    com = 80.0 + 12.0 * np.cos(np.deg2rad(angles - 30.0)) + rng.normal(0, 0.05, angles.size)
    com[[5, 17, 30]] += [15.0, -9.0, 20.0]  # frames with a glitch
    plain = fit_com_sinusoid(angles, com)
    robust = fit_com_sinusoid(angles, com, robust=True)
    assert robust.amplitude == pytest.approx(12.0, abs=0.05)
    assert robust.phase_deg == pytest.approx(30.0, abs=0.3)
    assert robust.centre == pytest.approx(80.0, abs=0.05)
    assert abs(plain.centre - 80.0) > 5 * abs(robust.centre - 80.0)
    assert robust.weights[[5, 17, 30]].max() < 0.1
    assert robust.n_iter > 1
    weighted = fit_com_sinusoid(
        angles, com, weights=np.where(np.isin(np.arange(48), [5, 17, 30]), 0, 1)
    )
    assert weighted.centre == pytest.approx(80.0, abs=0.05)


def test_com_sinusoid_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        fit_com_sinusoid(np.arange(5.0), np.arange(4.0))
    with pytest.raises(ValueError, match="at least 3"):
        fit_com_sinusoid(np.array([0.0, 90.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="rank-deficient"):
        fit_com_sinusoid(np.array([10.0, 10.0, 10.0, 10.0]), np.arange(4.0))
    with pytest.raises(ValueError, match="finite"):
        fit_com_sinusoid(np.array([0.0, 90.0, 180.0]), np.array([1.0, np.nan, 2.0]))


@pytest.mark.parametrize(("offset", "dz"), [(3.4, 0.0), (-5.75, 1.3), (0.0, -0.6)])
def test_mirror_pair_recovers_rotation_centre_offset(offset, dz):
    axis = AXIS_COL + offset
    proj_0 = project(25.0, axis_col=axis)
    proj_180 = project(205.0, axis_col=axis, drift_z=dz)
    result = mirror_pair_offset(proj_0, proj_180)
    assert result.centre_offset == pytest.approx(offset, abs=0.02)
    assert result.dy == pytest.approx(dz, abs=0.02)
    assert result.confidence > 0.7
    assert result.shift.dx == pytest.approx(-2 * offset, abs=0.04)


def test_invariants_reject_bad_frames():
    good = project(0.0)
    with pytest.raises(InvalidFrameError, match="does not match"):
        mass_profile_shift(good, good[:, :-2])
    with pytest.raises(InvalidFrameError, match="NaN"):
        mass_profile_shift(good, np.where(good > good.max() / 2, np.nan, good))
    with pytest.raises(InvalidFrameError, match="2-D"):
        mirror_pair_offset(good, good[0])
    with pytest.raises(ValueError, match="mask shape"):
        mass_profile_shift(good, good, mask=np.ones((3, 3), bool))
