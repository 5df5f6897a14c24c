"""Fine alignment on simulated scans with known shifts (serial and Dask executors)."""

from __future__ import annotations

import numpy as np
import pytest

from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.service.align import AlignConfig, align, dask_client, plan_levels, remove_gauge
from tomolock.service.align import engine as E
from tomolock.service.align import kernels as K
from tomolock.service.align.benchmark import simulated_scan

PIXEL_UM = 0.03


def simulate(n: int = 48, size: int = 64, residual_px: tuple[float, float] = (1.5, 2.0),
             seed: int = 1):
    """Projections whose true shifts are a few px (what the online stage leaves)."""
    sim = ScanSimulator(ScanConfig(shape=(size, size), n_projections=n, counts=1000, seed=seed,
                                   n_darks=1, n_flats=1))
    rng = np.random.default_rng(seed)
    angles, times = sim.angles_deg(), sim.times_s()
    offset = -sim.drift.sample_displacement_um(angles, times)
    resid = np.column_stack([rng.normal(0, residual_px[0], n), rng.normal(0, residual_px[1], n)])
    offset[:, 2] += resid[:, 0] * PIXEL_UM
    offset[:, 0] += resid[:, 1] * PIXEL_UM
    frames = [sim.projection(i, offset) for i in range(n)]
    truth = np.array([f.true_shift_px for f in frames])
    dark = sim.config.dark_level
    proj = np.stack([
        -np.log(np.clip((f.image - dark) / (sim.flat_field * f.beam_factor), 1e-6, None))
        for f in frames]).astype(np.float32)
    return sim, proj, angles, truth, rng


@pytest.fixture(scope="module")
def scan():
    return simulate()


def _rms(err: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(remove_gauge(err, angles) ** 2, axis=0))


def test_alignment_recovers_shifts_from_a_noisy_start(scan):
    _, proj, angles, truth, rng = scan
    initial = truth + rng.normal(0, 0.8, truth.shape)
    before = _rms(initial - truth, angles)
    reports = []
    result = align(proj, angles, initial,
                   AlignConfig(levels=(2, 1), min_size_px=16, max_iterations=6,
                               relaxation=1.5),
                   progress=reports.append)
    after = _rms(result.shifts - truth, angles)
    # Measured (deterministic seeds): (0.81, 0.66) px -> (0.16, 0.31) px (dy, dx), gauge removed.
    assert after[0] < 0.25 and after[0] < before[0] / 3
    assert after[1] < 0.45 and after[1] < before[1] / 2
    assert reports == result.reports and reports[0].level == 2
    assert reports[-1].level == 1 and all(r.seconds > 0 for r in reports)
    assert np.array_equal(result.initial, initial)
    # The convergence report: no estimate at a level's first iteration, then one; a level
    # marked converged ended on an estimate below the tolerance or, binned on a truncated
    # scan (this one), on an update below what it resolves.
    assert result.coarse_stop_px == E.COARSE_STOP_TRUNCATED_PX
    for level in (2, 1):
        mine = [r for r in reports if r.level == level]
        assert mine[0].remaining_px is None
        assert all(r.remaining_px is not None for r in mine[1:])
        if not result.converged[level]:
            assert len(mine) == 6
        elif level > 1:
            assert mine[-1].rms_update_px < result.coarse_stop_px * level
        else:
            assert mine[-1].remaining_px < AlignConfig.tolerance_px


def test_error_to_come_is_estimated_as_a_geometric_series():
    assert E.remaining_error(0.1, None) is None
    assert E.remaining_error(0.05, 0.1) == pytest.approx(0.05)  # r = 1/2: 0.05 * 1
    assert E.remaining_error(0.009, 0.01) == pytest.approx(0.081)  # slow: far from done
    assert E.remaining_error(0.01, 0.01) == np.inf  # not shrinking: never converged
    assert E.remaining_error(0.0, 0.0) == 0.0
    # Default caps: binned iterations are cheap, so the binned levels may run longer.
    assert [E.level_iterations(AlignConfig(), b) for b in (4, 2, 1)] == [40, 20, 10]
    assert E.level_iterations(AlignConfig(max_iterations=3), 4) == 3


def test_coarse_level_is_skipped_when_the_start_is_within_its_resolution(scan):
    # A start 0.05 px from the truth is far below what the 2x level resolves (0.25 binned px
    # = 0.5 px): its first update is discarded and only the 1x level refines.
    _, proj, angles, truth, _ = scan
    close = truth + np.random.default_rng(3).normal(0, 0.05, truth.shape)
    lines: list[str] = []
    result = align(proj, angles, close, AlignConfig(levels=(2, 1), min_size_px=16,
                                                    max_iterations=3, coarse_stop_px=0.25),
                   progress=lambda r: lines.append(r.line()))
    first = result.reports[0]
    assert result.skipped == [2] and first.level == 2 and not first.applied
    assert "level skipped" in lines[0] and first.rms_update_px < 0.5
    assert [r.level for r in result.reports[1:]] == [1] * (len(result.reports) - 1)
    assert all(r.applied for r in result.reports[1:])
    assert result.coarse_stop_px == 0.25 and result.truncated_fraction is None
    # Off, or a start several px away: the 2x level runs and its updates are applied.
    for start, cfg in ((close, AlignConfig(levels=(2, 1), min_size_px=16, max_iterations=1,
                                           coarse_stop_px=0.0)),
                       (truth + 3.0 * np.sign(np.sin(np.arange(len(truth))))[:, None],
                        AlignConfig(levels=(2, 1), min_size_px=16, max_iterations=1,
                                    coarse_stop_px=0.25))):
        run = align(proj, angles, start, cfg)
        assert run.skipped == [] and run.reports[0].level == 2 and run.reports[0].applied


def test_truncated_fraction_finds_samples_crossing_the_side_edges():
    frames = np.zeros((4, 8, 40), np.float32)
    frames[:, :, 10:30] = 1.0  # inside at every angle
    assert K.truncated_fraction(frames) == 0.0
    frames[1, :, :12] = 1.0  # wider than the detector at one angle (left edge)
    frames[3, :, 35:] = 0.5  # and at another (right edge)
    assert K.truncated_fraction(frames) == 0.5
    frames[2, :, -2:] = 0.04  # flat-field residue below 5 % of the densest column: air
    assert K.truncated_fraction(frames) == 0.5
    with pytest.raises(ValueError, match="frames"):
        K.truncated_fraction(frames[0])


def test_coarse_stop_is_chosen_from_the_field_of_view(scan):
    # The simulator's 64 px detector cuts the sample at most angles (truncated sinograms):
    # binned levels stop at 0.25 binned px; the same phantom on a wider detector: they run.
    _, proj, angles, truth, _ = scan
    cfg = AlignConfig(levels=(2,), min_size_px=16, max_iterations=1)
    run = align(proj, angles, truth, cfg)
    assert run.truncated_fraction is not None and run.truncated_fraction > 0.5
    assert run.coarse_stop_px == 0.25
    wide, wide_angles, _ = simulated_scan(24, 64, fov="padded")
    run = align(wide, wide_angles, None, cfg)
    assert run.truncated_fraction == 0.0 and run.coarse_stop_px == 0.0


def test_gauge_of_the_start_is_kept(scan):
    # An object translation + centre offset in the start must survive (it is not observable).
    _, proj, angles, truth, _ = scan
    t = np.radians(angles)
    gauge = np.column_stack([np.full_like(t, 0.7), 0.5 + 1.2 * np.cos(t) - 0.8 * np.sin(t)])
    result = align(proj, angles, truth + gauge,
                   AlignConfig(levels=(2,), min_size_px=16, max_iterations=2))
    err = result.shifts - truth
    assert abs(err[:, 0].mean() - 0.7) < 0.1
    coef, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(t), np.cos(t), np.sin(t)]),
                               err[:, 1], rcond=None)
    assert np.allclose(coef, [0.5, 1.2, -0.8], atol=0.15)


def test_without_gauge_fix_only_observable_error_is_compared(scan):
    _, _, angles, _, rng = scan
    t = np.radians(angles)
    err = np.column_stack([np.full_like(t, 3.0), 2 + np.cos(t) + 4 * np.sin(t)])
    assert np.allclose(remove_gauge(err, angles), 0, atol=1e-9)
    noise = rng.normal(0, 1, err.shape)
    assert np.sqrt(np.mean(remove_gauge(err + noise, angles) ** 2)) > 0.5


def test_dask_executor_matches_serial(scan):
    _, proj, angles, truth, rng = scan
    initial = truth + rng.normal(0, 0.5, truth.shape)
    cfg = AlignConfig(levels=(2,), min_size_px=16, max_iterations=2, proj_chunk=10, row_chunk=8)
    serial = align(proj, angles, initial, cfg)
    with dask_client(n_workers=2) as client:
        distributed = align(proj, angles, initial, cfg, executor="dask", client=client)
    # Same kernels on the same blocks: identical numbers whatever the chunking.
    np.testing.assert_allclose(distributed.shifts, serial.shifts, atol=1e-9)
    assert len(distributed.reports) == len(serial.reports) == 2


def test_p2p_rechunk_matches_serial(scan):
    _, proj, angles, truth, _ = scan
    cfg = AlignConfig(levels=(2,), min_size_px=16, max_iterations=1, rechunk="p2p")
    serial = align(proj, angles, truth, cfg)
    with dask_client(n_workers=2) as client:
        shuffled = align(proj, angles, truth, cfg, executor="dask", client=client)
    np.testing.assert_allclose(shuffled.shifts, serial.shifts, atol=1e-9)


@pytest.mark.parametrize("fix_gauge", [True, False])
def test_frozen_harmonics_keep_the_start(scan, fix_gauge):
    # freeze_harmonics=3: the horizontal cos/sin 2 theta, 3 theta of the start survive (and
    # the gauge with fix_gauge); everything else still moves.
    _, proj, angles, truth, _ = scan
    t = np.radians(angles)
    start = truth + np.column_stack([0.3 * np.sin(3 * t),
                                     0.4 * np.cos(2 * t) + 0.2 * np.sin(5 * t)])
    cfg = AlignConfig(levels=(2,), min_size_px=16, max_iterations=2, fix_gauge=fix_gauge,
                      freeze_harmonics=3)
    result = align(proj, angles, start, cfg)
    change = result.shifts - start
    frozen = K.harmonic_basis(angles, 3, 0 if fix_gauge else 2)
    coef, *_ = np.linalg.lstsq(frozen, change[:, 1], rcond=None)
    assert np.abs(coef).max() < 1e-9
    assert np.sqrt(np.mean(change[:, 1] ** 2)) > 0.05  # not frozen altogether
    assert np.sqrt(np.mean(change[:, 0] ** 2)) > 0.05  # vertical: not affected
    assert np.allclose(K.project_out(frozen @ np.arange(frozen.shape[1]), frozen), 0, atol=1e-9)


def test_reprojection_of_consistent_data_registers_to_zero():
    # Noiseless projections of the simulator phantom: the rotation centre convention
    # (axis at (cols - 1) / 2 vs scikit-image's cols // 2) must give ~0 shift, a wrong
    # centre a clear bias.
    sim = ScanSimulator(ScanConfig(shape=(64, 64), n_projections=61, seed=1))
    angles = sim.angles_deg()
    proj = np.stack([sim.projector.line_integrals(a) for a in angles]).astype(np.float32)
    zero = np.zeros((61, 2))
    bias = {}
    for delta in (0.5, -0.5):
        reproj = K.reproject_band(K.shift_projections(proj, zero, delta), angles)
        reg = K.register_projections(proj, reproj, zero, delta, 4.0)
        bias[delta] = np.sqrt(np.mean(reg[:, 1] ** 2))
        assert np.median(reg[:, 3]) < 0.05  # relative residual: reprojection matches
    assert bias[0.5] < 0.07 < bias[-0.5]


def test_sart_reprojection_for_few_angles():
    sim = ScanSimulator(ScanConfig(shape=(32, 32), n_projections=25, seed=1))
    angles = sim.angles_deg()
    proj = np.stack([sim.projector.line_integrals(a) for a in angles]).astype(np.float32)
    zero = np.zeros((25, 2))
    reproj = K.reproject_band(K.shift_projections(proj, zero, 0.5), angles, "sart")
    reg = K.register_projections(proj, reproj, zero, 0.5, 3.0)
    # Measured: 5.5 % residual, (0.03, 0.14) px RMS (FBP: 4.5 %, (0.01, 0.12) px).
    assert np.median(reg[:, 3]) < 0.1 and np.sqrt(np.mean(reg[:, :2] ** 2)) < 0.3
    with pytest.raises(ValueError, match="method"):
        K.reproject_band(proj[:, :2], angles, "art")  # type: ignore[arg-type]


def test_bin_and_shift_kernels():
    stack = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    binned = K.bin_image_stack(stack, 2)
    assert binned.shape == (2, 2, 3)
    assert binned[0, 0, 0] == np.mean([0, 1, 6, 7])
    with pytest.raises(ValueError, match="smaller than the binning"):
        K.bin_image_stack(stack, 8)
    r, c = np.mgrid[:48, :48]
    blob = np.exp(-((r - 24.0) ** 2 + (c - 22.0) ** 2) / 30.0).astype(np.float32)
    moved = np.exp(-((r - 25.3) ** 2 + (c - 20.4) ** 2) / 30.0).astype(np.float32)
    back = K.shift_projections(moved[None], np.array([[1.3, -1.6]]))
    assert np.abs(back[0] - blob).max() < 0.01


def test_bad_inputs_are_refused(scan):
    _, proj, angles, truth, _ = scan
    with pytest.raises(ValueError, match="theta_deg"):
        align(proj, angles[:-1])
    with pytest.raises(ValueError, match="initial shifts must be"):
        align(proj, angles, truth[:-1])
    bad = truth.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        align(proj, angles, bad)
    with pytest.raises(ValueError, match="client"):
        align(proj, angles, executor="dask")
    with pytest.raises(ValueError, match="executor"):
        align(proj, angles, executor="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(n, rows, cols\)"):
        align(proj[0], angles)
    with pytest.raises(ValueError, match="too small"):
        plan_levels((20, 20), AlignConfig())
    assert plan_levels((64, 64), AlignConfig()) == [2, 1]
    for kwargs in ({"levels": ()}, {"levels": (0,)}, {"max_iterations": 0},
                   {"tolerance_px": -1.0}, {"method": "art"}, {"relaxation": float("nan")},
                   {"centre_col": float("inf")}, {"rechunk": "shuffle"},
                   {"freeze_harmonics": -1}, {"freeze_harmonics": 2.5},
                   {"freeze_harmonics": True}, {"coarse_stop_px": -0.1},
                   {"coarse_stop_px": float("nan")}):
        with pytest.raises(ValueError):
            AlignConfig(**kwargs)  # type: ignore[arg-type]
