"""Simulated drift truth: determinism, physics relations, detector mapping."""

import numpy as np
import pytest

from tomolock.devices.sim.drift import DriftParams, SimulatedDrift

ANGLES = np.linspace(0.0, 360.0, 721)
TIMES = np.linspace(0.0, 7200.0, 721)


def test_deterministic_with_seed_and_seed_dependent() -> None:
    a, b, c = (SimulatedDrift(DriftParams.severe(), seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.sample_displacement_um(ANGLES, TIMES),
                          b.sample_displacement_um(ANGLES, TIMES))
    assert not np.allclose(a.jitter_um(TIMES), c.jitter_um(TIMES))
    assert not np.allclose(a.jumps_um(TIMES), c.jumps_um(TIMES))


def test_evaluation_order_does_not_matter() -> None:
    first = SimulatedDrift(DriftParams.severe(), seed=5)
    forward = first.sample_displacement_um(ANGLES, TIMES)
    second = SimulatedDrift(DriftParams.severe(), seed=5)
    late = second.sample_displacement_um(ANGLES[::-1], TIMES[::-1])[::-1]
    pairs = zip(ANGLES[::97], TIMES[::97], strict=True)
    single = np.array([second.sample_displacement_um(a, t) for a, t in pairs])
    assert np.array_equal(forward, late)
    assert np.array_equal(forward[::97], single)


def test_runout_is_periodic_in_angle_and_large_by_default() -> None:
    drift = SimulatedDrift()
    r = drift.runout_um(ANGLES)
    assert np.allclose(drift.runout_um(ANGLES + 360.0), r, atol=1e-12)
    assert np.allclose(drift.runout_um(ANGLES - 720.0), r, atol=1e-12)
    peak_px = np.abs(r[:, 0]).max() / drift.params.pixel_size_um
    assert peak_px >= 20.0
    assert abs(r.mean(axis=0)).max() < 1e-3  # pure harmonics: no offset


def test_presets_are_ordered() -> None:
    peaks = [np.ptp(SimulatedDrift(p).runout_um(ANGLES)[:, 0])
             for p in (DriftParams.quiet(), DriftParams.typical(), DriftParams.severe())]
    assert peaks[0] < 0.1 < peaks[1] < peaks[2]
    assert DriftParams.typical() == DriftParams()


def test_thermal_is_monotone_and_settles() -> None:
    params = DriftParams(thermal_stage_rate_um_per_h=(0.0, 0.0, 0.0))
    drift = SimulatedDrift(params)
    stage = drift.thermal_stage_um(TIMES)
    assert np.all(np.diff(stage, axis=0) >= 0)  # all asymptotes positive
    assert np.array_equal(drift.thermal_stage_um([-10.0, 0.0]), np.zeros((2, 3)))
    late = drift.thermal_stage_um(20 * params.thermal_tau_s)
    assert np.allclose(late, params.thermal_stage_um, rtol=1e-6)
    tau = drift.thermal_stage_um(params.thermal_tau_s)
    assert np.allclose(tau, (1 - np.exp(-1)) * np.asarray(params.thermal_stage_um))
    sample = SimulatedDrift().thermal_sample_um(np.array([0.0, 3600.0 * 10]))
    expected = np.asarray(DriftParams().thermal_sample_um) + 10 * np.asarray(
        DriftParams().thermal_sample_rate_um_per_h)
    assert np.allclose(sample[1], expected, rtol=1e-6)  # asymptote + linear creep


def test_white_jitter_statistics() -> None:
    drift = SimulatedDrift(DriftParams(vibration=(), jitter_rms_um=0.01), seed=3)
    j = drift.jitter_um(np.arange(20000) * 0.05)
    assert np.allclose(j.std(axis=0), 0.01, rtol=0.05)
    assert np.abs(j.mean(axis=0)).max() < 5e-4
    lag1 = [np.corrcoef(j[:-1, k], j[1:, k])[0, 1] for k in range(3)]
    assert np.abs(lag1).max() < 0.05
    assert np.abs(np.corrcoef(j.T) - np.eye(3)).max() < 0.05  # axes independent


def test_vibration_is_smooth_and_bounded() -> None:
    params = DriftParams(vibration=((0.01, 2.0),), jitter_rms_um=0.0)
    j = SimulatedDrift(params, seed=2).jitter_um(np.linspace(0.0, 1.0, 2001))
    assert np.linalg.norm(j, axis=1).max() == pytest.approx(0.01, rel=1e-3)
    assert np.abs(np.diff(j, axis=0)).max() < 0.01 * 2 * np.pi * 2.0 * 0.0005 * 1.01


def test_jumps_are_persistent_steps_of_fixed_size() -> None:
    params = DriftParams(jump_rate_per_h=20.0, jump_size_um=0.2)
    drift = SimulatedDrift(params, seed=4)
    times = drift.jump_times_s(3 * 3600.0)
    assert 30 < times.size < 100  # Poisson(60)
    assert np.all(np.diff(times) > 0)
    before, after = drift.jumps_um(times - 1e-6), drift.jumps_um(times + 1e-6)
    assert np.allclose(np.linalg.norm(after - before, axis=1), 0.2)
    mid = (times[:-1] + times[1:]) / 2
    assert np.array_equal(drift.jumps_um(mid), drift.jumps_um(times[:-1] + 1e-6))
    assert np.array_equal(drift.jumps_um(-5.0), np.zeros(3))
    none = SimulatedDrift(DriftParams(jump_rate_per_h=0.0))
    assert np.array_equal(none.jumps_um(TIMES), np.zeros((TIMES.size, 3)))


def test_observables_relations() -> None:
    drift = SimulatedDrift(DriftParams.severe(), seed=9)
    total = drift.sample_displacement_um(ANGLES, TIMES)
    parts = (drift.runout_um(ANGLES) + drift.thermal_stage_um(TIMES)
             + drift.thermal_sample_um(TIMES) + drift.jitter_um(TIMES) + drift.jumps_um(TIMES))
    assert np.allclose(total, parts, atol=1e-12)
    interf = drift.interferometer_um(ANGLES, TIMES)
    assert np.allclose(interf, drift.runout_um(ANGLES) + drift.thermal_stage_um(TIMES))
    micro = drift.microscope_um(ANGLES, TIMES)
    assert np.array_equal(micro, total)
    hidden = drift.thermal_sample_um(TIMES) + drift.jitter_um(TIMES) + drift.jumps_um(TIMES)
    assert np.allclose(micro - interf, hidden, atol=1e-12)
    assert np.abs(hidden).max() > 0.5  # the interferometer really misses something


def test_detector_shift_mapping_and_offset_cancellation() -> None:
    drift = SimulatedDrift(seed=1)
    disp = drift.sample_displacement_um(ANGLES, TIMES)
    shift = drift.detector_shift_px(ANGLES, TIMES)
    px = drift.params.pixel_size_um
    assert np.allclose(shift[:, 0], disp[:, 2] / px)
    assert np.allclose(shift[:, 1], disp[:, 0] / px)
    assert np.abs(drift.detector_shift_px(ANGLES, TIMES, -disp)).max() < 1e-9
    offset = np.array([0.3, -5.0, -0.15])  # y (along the beam) is invisible
    moved = drift.detector_shift_px(ANGLES, TIMES, offset)
    assert np.allclose(moved - shift, [-0.15 / px, 0.3 / px])
    flipped = SimulatedDrift(DriftParams(detector_signs=(-1, 1)), seed=1)
    assert np.allclose(flipped.detector_shift_px(ANGLES, TIMES)[:, 0], -shift[:, 0])


def test_broadcasting_shapes() -> None:
    drift = SimulatedDrift()
    assert drift.sample_displacement_um(ANGLES[:5], 3.0).shape == (5, 3)
    assert drift.sample_displacement_um(ANGLES[:5, None], TIMES[:4]).shape == (5, 4, 3)
    assert drift.detector_shift_px(1.0, 2.0).shape == (2,)
    assert drift.runout_um(7.0).shape == (3,)


def test_elapsed_time_from_absolute_clock() -> None:
    drift = SimulatedDrift(t0=1.7e9)
    t_s = drift.elapsed_s(1.7e9 + 12.5)
    assert float(t_s) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="elapsed_s"):
        drift.thermal_stage_um(1.7e9 + 12.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pixel_size_um": 0.0},
        {"thermal_tau_s": -1.0},
        {"runout_x_um": ((0.5,),)},
        {"runout_z_um": ((-0.1, 0.0),)},
        {"vibration": ((0.01, 0.0),)},
        {"jitter_rms_um": float("nan")},
        {"thermal_stage_um": (1.0, 2.0)},
        {"detector_signs": (1.0, 0.5)},
    ],
)
def test_bad_params_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DriftParams(**kwargs)


def test_bad_calls_raise() -> None:
    drift = SimulatedDrift()
    with pytest.raises(ValueError):
        drift.runout_um(np.nan)
    with pytest.raises(ValueError):
        drift.detector_shift_px(0.0, 0.0, (1.0, 2.0))
    with pytest.raises(TypeError):
        SimulatedDrift(params="typical")  # type: ignore[arg-type]
