"""RunoutModel: weighted least-squares harmonic fit from a synthetic calibration sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tomolock.service.model import CoverageWarning, RunoutModel, harmonic_basis

N = 4
# True runout per axis (x, y, z), um: [cos_1, sin_1, ..., cos_4, sin_4]; eccentricity dominates.
TRUE_HARMONICS = np.array(
    [
        [0.8, -0.3, 0.1, 0.05, 0.03, -0.02, 0.01, 0.005],
        [0.2, 0.5, -0.05, 0.02, 0.01, 0.0, 0.0, 0.003],
        [0.05, 0.1, 0.02, -0.03, 0.01, 0.004, -0.002, 0.001],
    ]
)
TRUE_OFFSET = np.array([0.1, -0.2, 0.05])
SIGMA = 0.002  # interferometer-like reading noise, um


def runout(angles_deg: np.ndarray) -> np.ndarray:
    return TRUE_OFFSET + harmonic_basis(angles_deg, N) @ TRUE_HARMONICS.T


def forward_back_sweep(n_each: int = 181) -> tuple[np.ndarray, np.ndarray]:
    """0 -> 360 -> 0 degrees at 0.5 s per reading (times increase monotonically)."""
    angles = np.r_[np.linspace(0, 360, n_each), np.linspace(360, 0, n_each)]
    return angles, 0.5 * np.arange(angles.size)


def test_fit_recovers_coefficients_despite_linear_thermal_drift() -> None:
    rng = np.random.default_rng(11)
    angles, times = forward_back_sweep()
    drift_rate = np.array([2e-3, 1e-3, -2e-3])  # um/s: 0.36 um over the sweep
    readings = runout(angles) + times[:, None] * drift_rate
    readings += rng.normal(0.0, SIGMA, readings.shape)

    model = RunoutModel(n_harmonics=N).fit(angles, readings, sigmas_um=SIGMA, times_s=times)

    err = model.harmonic_coefficients - TRUE_HARMONICS
    std = np.sqrt(np.diagonal(model.harmonic_covariance, axis1=1, axis2=2))
    assert np.abs(err).max() < 1e-3
    assert np.all(np.abs(err) < 5 * std)  # the covariance is honest
    assert np.all(std < 5e-4)
    diag = model.diagnostics
    assert diag.rms_residual_um == pytest.approx([SIGMA] * 3, rel=0.2)
    assert diag.reduced_chi2 is not None and np.allclose(diag.reduced_chi2, 1.0, atol=0.25)
    assert diag.condition_number < 5 and not diag.warnings
    # The time term absorbed the drift: slope (um per unit tau) / scale (s) = um/s.
    slope = np.array(diag.time_coefficients_um)[:, 0] / diag.t_scale_s
    np.testing.assert_allclose(slope, drift_rate, atol=2e-5)
    np.testing.assert_allclose(
        model.amplitudes_um[:, 0], np.hypot(TRUE_HARMONICS[:, 0], TRUE_HARMONICS[:, 1]), atol=1e-3
    )

    mean, sd = model.predict(np.array([0.0, 33.3, 271.0]))
    assert mean.shape == sd.shape == (3, 3)
    # The offset absorbs the sweep-mid thermal offset, so compare the harmonic part only.
    pred_h = mean - model.coefficients[:, 0]
    true_h = runout(np.array([0.0, 33.3, 271.0])) - TRUE_OFFSET
    assert np.abs(pred_h - true_h).max() < 2e-3
    scalar_mean, scalar_sd = model.predict(33.3)
    assert scalar_mean.shape == scalar_sd.shape == (3,)
    np.testing.assert_allclose(scalar_mean, mean[1])
    np.testing.assert_allclose(scalar_sd, sd[1])
    assert np.all(sd > 0) and np.all(sd < 1e-3)


def test_without_time_term_thermal_drift_leaks_into_the_harmonics() -> None:
    rng = np.random.default_rng(12)
    angles = np.linspace(0, 360, 361)  # one turn only: drift looks like a sawtooth
    times = 0.5 * np.arange(angles.size)
    readings = runout(angles) + 2e-3 * times[:, None] + rng.normal(0, SIGMA, (angles.size, 3))
    naive = RunoutModel(n_harmonics=N, time_degree=0).fit(angles, readings, SIGMA, times)
    fitted = RunoutModel(n_harmonics=N, time_degree=1).fit(angles, readings, SIGMA, times)
    naive_err = np.abs(naive.harmonic_coefficients - TRUE_HARMONICS).max()
    fitted_err = np.abs(fitted.harmonic_coefficients - TRUE_HARMONICS).max()
    assert naive_err > 0.05  # ~0.36 um ramp -> ~0.1 um fake sin_1
    assert fitted_err < 2e-3


def test_exponential_thermal_needs_the_quadratic_term() -> None:
    rng = np.random.default_rng(13)
    angles, times = forward_back_sweep()
    thermal = 0.4 * (1 - np.exp(-times / 150.0))[:, None] * np.array([1.0, 0.5, -1.0])
    readings = runout(angles) + thermal + rng.normal(0, SIGMA, (angles.size, 3))
    linear = RunoutModel(N, time_degree=1).fit(angles, readings, SIGMA, times)
    quadratic = RunoutModel(N, time_degree=2).fit(angles, readings, SIGMA, times)
    assert np.abs(linear.harmonic_coefficients - TRUE_HARMONICS).max() > 5e-3
    assert np.abs(quadratic.harmonic_coefficients - TRUE_HARMONICS).max() < 1.5e-3
    assert linear.diagnostics.reduced_chi2[0] > 3 * quadratic.diagnostics.reduced_chi2[0]


@pytest.mark.parametrize(
    ("angles", "match"),
    [
        (np.linspace(0, 90, 200), "condition number"),  # a quarter turn cannot pin 4 harmonics
        (np.tile([0.0, 45.0, 90.0, 135.0, 180.0, 225.0], 20), "distinct angles"),
        (np.linspace(0, 360, 8, endpoint=False), "cannot determine"),  # 8 points, 10 params
    ],
)
def test_refuses_insufficient_coverage(angles: np.ndarray, match: str) -> None:
    readings = runout(angles)
    with pytest.raises(ValueError, match=match):
        RunoutModel(n_harmonics=N).fit(angles, readings, sigmas_um=SIGMA)


def test_half_turn_is_refused_for_four_harmonics_but_fine_for_one() -> None:
    rng = np.random.default_rng(14)
    angles = np.linspace(0, 180, 181)
    readings = runout(angles) + rng.normal(0, SIGMA, (angles.size, 3))
    with pytest.raises(ValueError, match="coverage cannot determine 4 harmonics"):
        RunoutModel(n_harmonics=4).fit(angles, readings, SIGMA)
    with pytest.warns(CoverageWarning, match="gap"):
        one = RunoutModel(n_harmonics=1, time_degree=0).fit(angles, readings, SIGMA)
    assert one.diagnostics.largest_gap_deg == pytest.approx(180.0)


def test_partial_coverage_warns_but_fits() -> None:
    angles = np.linspace(0, 270, 271)
    with pytest.warns(CoverageWarning) as record:
        model = RunoutModel(n_harmonics=N).fit(angles, runout(angles), SIGMA)
    assert any("condition number" in str(w.message) for w in record)
    assert model.diagnostics.warnings
    assert np.abs(model.harmonic_coefficients - TRUE_HARMONICS).max() < 1e-6  # noiseless


def test_missing_readings_are_excluded_per_axis_and_unknown_noise_is_estimated() -> None:
    rng = np.random.default_rng(15)
    angles, times = forward_back_sweep()
    readings = runout(angles) + rng.normal(0, SIGMA, (angles.size, 3))
    readings[100:150, 1] = np.nan  # interferometer y lost signal for a while
    model = RunoutModel(n_harmonics=N).fit(angles, readings, times_s=times)
    assert model.diagnostics.n_points == [362, 312, 362]
    assert model.diagnostics.reduced_chi2 is None
    std = np.sqrt(np.diagonal(model.harmonic_covariance, axis1=1, axis2=2))
    # Noise estimated from the residual: std of a coefficient ~ sigma * sqrt(2 / n).
    assert std[0, 0] == pytest.approx(SIGMA * np.sqrt(2 / 362), rel=0.3)
    assert np.abs(model.harmonic_coefficients - TRUE_HARMONICS).max() < 1e-3


def test_dict_round_trip_is_json_safe_and_predicts_identically() -> None:
    rng = np.random.default_rng(16)
    angles, times = forward_back_sweep(91)
    readings = runout(angles)[:, [0, 2]] + rng.normal(0, SIGMA, (angles.size, 2))
    model = RunoutModel(n_harmonics=3).fit(angles, readings, SIGMA, times, axes=["x", "z"])
    text = json.dumps(model.to_dict(), allow_nan=False)
    restored = RunoutModel.from_dict(json.loads(text))
    assert restored.axes == ("x", "z") and restored.n_harmonics == 3
    probe = np.linspace(-30, 400, 17)
    for a, b in zip(model.predict(probe), restored.predict(probe), strict=True):
        np.testing.assert_array_equal(a, b)
    assert restored.diagnostics == model.diagnostics


def test_from_dict_rejects_bad_data() -> None:
    angles, times = forward_back_sweep(91)
    good = RunoutModel(2).fit(angles, runout(angles), SIGMA, times).to_dict()
    with pytest.raises(ValueError, match="not a serialised RunoutModel"):
        RunoutModel.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="version"):
        RunoutModel.from_dict({**good, "version": 99})
    with pytest.raises(ValueError, match="shapes"):
        RunoutModel.from_dict({**good, "coefficients": good["coefficients"][:1]})
    with pytest.raises(ValueError, match="malformed"):
        RunoutModel.from_dict({k: v for k, v in good.items() if k != "covariance"})


def test_bad_inputs_raise_clear_errors() -> None:
    angles = np.linspace(0, 360, 50)
    readings = runout(angles)
    model = RunoutModel(2)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(0.0)
    with pytest.raises(ValueError, match="readings_um must have shape"):
        model.fit(angles, readings[:-1])
    with pytest.raises(ValueError, match="name them"):
        model.fit(angles, readings[:, :2])
    with pytest.raises(ValueError, match="sigmas_um must all be finite and > 0"):
        model.fit(angles, readings, sigmas_um=-1.0)
    with pytest.raises(ValueError, match="sigmas_um must be a scalar"):
        model.fit(angles, readings, sigmas_um=np.ones(7))
    with pytest.raises(ValueError, match="angles_deg must all be finite"):
        model.fit(np.r_[angles[:-1], np.nan], readings)
    with pytest.raises(ValueError, match="times_s must have shape"):
        model.fit(angles, readings, times_s=np.arange(3.0))
    with pytest.raises(ValueError, match="one time"):
        model.fit(angles, readings, times_s=np.zeros(50))
    with pytest.raises(ValueError, match="n_harmonics"):
        RunoutModel(0)
    with pytest.raises(TypeError, match="n_harmonics"):
        RunoutModel(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warn_condition"):
        RunoutModel(2, max_condition=10, warn_condition=100)
