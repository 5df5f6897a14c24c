"""Simulated scans: determinism, ground truth, detector statistics, and the Poisson CRLB."""

import math

import numpy as np
import pytest

from tomolock.devices.sim.crlb import poisson_crlb_shift, shift_gradient, spectral_gradient
from tomolock.devices.sim.drift import DriftParams
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator

SMALL = {"shape": (128, 128), "n_projections": 7, "n_darks": 2, "n_flats": 3}


@pytest.fixture(scope="module")
def sim() -> ScanSimulator:
    return ScanSimulator(ScanConfig(**SMALL, seed=11))


def test_frames_are_deterministic_and_seed_dependent(sim: ScanSimulator) -> None:
    again = ScanSimulator(ScanConfig(**SMALL, seed=11))
    other = ScanSimulator(ScanConfig(**SMALL, seed=12))
    for f1, f2, f3 in zip(sim, again, other, strict=True):
        assert np.array_equal(f1.image, f2.image)
        assert f1.true_shift_px == f2.true_shift_px
        if f1.kind != "dark":
            assert not np.array_equal(f1.image, f3.image)


def test_random_access_and_threads_give_the_same_frames(sim: ScanSimulator) -> None:
    frames = list(sim.projections())
    assert np.array_equal(sim.projection(4).image, frames[4].image)
    threaded = ScanSimulator(ScanConfig(**SMALL, seed=11, noise_threads=2))
    try:
        assert np.array_equal(threaded.projection(4).image, frames[4].image)
        assert np.array_equal(threaded.flat(1).image, sim.flat(1).image)
    finally:
        threaded.close()


def test_scan_order_angles_and_times(sim: ScanSimulator) -> None:
    cfg = sim.config
    frames = list(sim)
    kinds = [f.kind for f in frames]
    assert kinds == ["dark"] * 2 + ["flat"] * 3 + ["projection"] * 7
    angles = sim.angles_deg()
    assert angles[0] == 0.0 and angles[-1] == 180.0 and angles.size == 7
    times = np.array([f.t_s for f in frames])
    assert np.allclose(np.diff(times), cfg.frame_period_s)
    assert times[0] == pytest.approx(cfg.t_start_s + cfg.exposure_s / 2)
    assert np.allclose(sim.times_s(), times[5:])
    proj = frames[5:]
    assert [f.index for f in proj] == list(range(7))
    assert np.allclose([f.angle_deg for f in proj], angles)
    assert all(f.image.dtype == np.uint16 and f.image.shape == (128, 128) for f in frames)


def test_true_shift_is_the_drift_at_the_frame(sim: ScanSimulator) -> None:
    truth = sim.true_shifts_px()
    for frame, expected in zip(sim.projections(), truth, strict=True):
        direct = sim.drift.detector_shift_px(frame.angle_deg, frame.t_s)
        assert np.allclose(frame.true_shift_px, direct)
        assert np.allclose(frame.true_shift_px, expected)
    assert np.ptp(truth[:, 1]) > 10  # typical runout moves the sample by tens of pixels


def test_frame_image_is_rendered_at_its_true_shift(sim: ScanSimulator) -> None:
    frame = sim.projection(3, with_expected=True)
    assert frame.expected is not None
    ref = sim.expected(frame.angle_deg, frame.true_shift_px, frame.beam_factor)
    assert np.array_equal(frame.expected, ref)
    unshifted = sim.expected(frame.angle_deg, (0.0, 0.0), frame.beam_factor)
    assert np.abs(frame.expected - unshifted).max() > 50  # the shift is really applied


def test_stage_offset_cancelling_drift_gives_zero_shift(sim: ScanSimulator) -> None:
    def feedback(index: int, angle: float, t_s: float) -> np.ndarray:
        return -sim.drift.sample_displacement_um(angle, t_s)

    for frame in sim.projections(stage_offset_um=feedback):
        assert np.abs(frame.true_shift_px).max() < 1e-9
    fixed = sim.projection(2, stage_offset_um=(0.3, 0.0, -0.06))
    free = sim.projection(2)
    px = sim.config.drift.pixel_size_um
    assert np.allclose(np.subtract(fixed.true_shift_px, free.true_shift_px),
                       (-0.06 / px, 0.3 / px))
    assert fixed.stage_offset_um == (0.3, 0.0, -0.06)


def test_flat_and_dark_statistics() -> None:
    sim = ScanSimulator(ScanConfig(**SMALL, seed=2, counts=2000.0, beam_fluctuation=0.0))
    dark = sim.dark(0, with_expected=True)
    assert np.all(dark.image == 100)  # noiseless offset without read noise
    flat = sim.flat(0, with_expected=True)
    assert flat.beam_factor == 1.0
    assert flat.image.mean() == pytest.approx(2100.0, rel=0.01)
    assert np.ptp(sim.flat_field) == pytest.approx(2 * 0.05 * 2000.0, rel=0.3)
    signal = flat.expected - 100.0
    z = (flat.image - flat.expected) / np.sqrt(signal)
    assert z.mean() == pytest.approx(0.0, abs=0.03)
    assert z.var() == pytest.approx(1.0, rel=0.04)  # Poisson: variance = mean


def test_projection_noise_is_poisson_with_read_noise() -> None:
    sim = ScanSimulator(ScanConfig(**SMALL, seed=3, read_noise=3.0))
    frame = sim.projection(1, with_expected=True)
    signal = frame.expected - 100.0
    z = (frame.image - frame.expected) / np.sqrt(signal + 9.0 + 1 / 12)  # + rounding
    assert z.var() == pytest.approx(1.0, rel=0.04)
    assert abs(z.mean()) < 0.03


def test_gaussian_noise_model_has_poisson_moments() -> None:
    sim = ScanSimulator(ScanConfig(**SMALL, seed=4, noise_model="gaussian"))
    frame = sim.projection(2, with_expected=True)
    z = (frame.image - frame.expected) / np.sqrt(frame.expected - 100.0 + 1 / 12)
    assert z.var() == pytest.approx(1.0, rel=0.04)
    assert abs(z.mean()) < 0.03
    poisson = ScanSimulator(ScanConfig(**SMALL, seed=4)).projection(2).image
    assert not np.array_equal(frame.image, poisson)


def test_beam_fluctuates_per_frame() -> None:
    sim = ScanSimulator(ScanConfig(**{**SMALL, "n_projections": 40}, beam_fluctuation=0.02))
    beams = np.array([sim._beam(k) for k in range(400)])
    assert beams.std() == pytest.approx(0.02, rel=0.15)
    frame = sim.projection(5, with_expected=True)
    base = sim.expected(frame.angle_deg, frame.true_shift_px, 1.0) - 100.0
    assert np.allclose(frame.expected - 100.0, base * frame.beam_factor, rtol=1e-5)


def test_dtype_clipping_and_float_output() -> None:
    hot = ScanSimulator(ScanConfig(**SMALL, counts=70000.0))
    img = hot.flat(0).image
    assert img.dtype == np.uint16 and img.max() == 65535
    small = ScanSimulator(ScanConfig(**SMALL, counts=400.0, dtype="uint8", dark_level=0.0))
    assert small.flat(0).image.max() == 255
    raw = ScanSimulator(ScanConfig(**SMALL, counts=70000.0, dtype="float32")).flat(0).image
    assert raw.dtype == np.float32 and raw.max() > 65535


def test_render_noise_is_a_function_of_time(sim: ScanSimulator) -> None:
    a = sim.render(30.0, (0.5, 1.5), t_s=2.0)
    b = sim.render(30.0, (0.5, 1.5), t_s=2.0)
    c = sim.render(30.0, (0.5, 1.5), t_s=2.1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    clean = sim.render(30.0, (0.5, 1.5), noise=False)
    assert np.array_equal(clean, np.rint(sim.expected(30.0, (0.5, 1.5))).astype(np.uint16))
    rng_frame = sim.render(30.0, (0.5, 1.5), rng=np.random.default_rng(0))
    assert np.abs(rng_frame.astype(float) - clean).mean() < 3 * math.sqrt(1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": "int8"},
        {"exposure_s": 0.2, "frame_period_s": 0.1},
        {"n_projections": 0},
        {"counts": -1.0},
        {"flat_structure": 1.5},
        {"seed": -3},
        {"shape": (3, 128)},
        {"drift": "typical"},
        {"noise_model": "uniform"},
    ],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        ScanConfig(**{**SMALL, **kwargs})


def test_bad_frame_requests_raise(sim: ScanSimulator) -> None:
    with pytest.raises(IndexError):
        sim.projection(7)
    with pytest.raises(IndexError):
        sim.dark(-1)
    with pytest.raises(ValueError):
        sim.projection(0, stage_offset_um=(1.0, 2.0))
    with pytest.raises(ValueError):
        sim.expected(0.0, (0.0, 0.0), beam_factor=-1.0)


# ---------------------------------------------------------------------- CRLB
def _cosine_image(period: float, shape: tuple[int, int] = (64, 96)) -> tuple:
    rows, cols = np.indices(shape, dtype=float)
    k = 2 * np.pi / period
    lam = 500.0 + 200.0 * np.cos(k * cols + 0.3) + 150.0 * np.cos(0.7 * k * rows - 1.1)
    grad = (150.0 * 0.7 * k * np.sin(0.7 * k * rows - 1.1), 200.0 * k * np.sin(k * cols + 0.3))
    return lam, grad


def test_crlb_matches_the_analytic_fisher_information() -> None:
    lam, grad = _cosine_image(period=4.0)
    exact = poisson_crlb_shift(lam, gradient=grad, both_noisy=False)
    fisher_xx = np.sum(grad[1] ** 2 / lam)
    assert exact[1] == pytest.approx(1 / math.sqrt(fisher_xx), rel=0.01)  # axes ~uncorrelated
    spectral = poisson_crlb_shift(lam, both_noisy=False)
    assert spectral == pytest.approx(exact, rel=0.03)
    central = poisson_crlb_shift(lam, both_noisy=False, method="central")
    assert central[1] > 1.2 * exact[1]  # finite differences miss fine-texture gradient


def test_crlb_scaling_with_counts_and_second_noisy_frame() -> None:
    lam, _ = _cosine_image(period=9.0)
    one = poisson_crlb_shift(lam, both_noisy=False)
    both = poisson_crlb_shift(lam)
    brighter = poisson_crlb_shift(4.0 * lam, both_noisy=False)
    assert both == pytest.approx(tuple(math.sqrt(2) * s for s in one), rel=1e-9)
    assert brighter == pytest.approx(tuple(s / 2 for s in one), rel=1e-9)


def test_crlb_of_flat_and_one_dimensional_images() -> None:
    assert poisson_crlb_shift(np.full((16, 16), 100.0)) == (math.inf, math.inf)
    ramp = 100.0 + 10.0 * np.cos(np.arange(32) / 3.0)[None, :].repeat(16, axis=0)
    s_dy, s_dx = poisson_crlb_shift(ramp)
    assert s_dy == math.inf and math.isfinite(s_dx)


def test_crlb_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        poisson_crlb_shift(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        poisson_crlb_shift(np.ones(8))
    with pytest.raises(ValueError):
        poisson_crlb_shift(np.ones((8, 8)), method="sobel")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        poisson_crlb_shift(np.ones((8, 8)), gradient=(np.ones((4, 4)), np.ones((4, 4))))


def test_spectral_gradient_of_a_smooth_image() -> None:
    rows, cols = np.indices((40, 50), dtype=float)
    img = np.exp(-((rows - 19.3) ** 2 + (cols - 27.1) ** 2) / (2 * 4.0**2))
    d_row, d_col = spectral_gradient(img)
    # Exact up to the tiny kink the mirror extension puts at the frame edge.
    assert np.allclose(d_row, -(rows - 19.3) / 16.0 * img, atol=1e-5)
    assert np.allclose(d_col, -(cols - 27.1) / 16.0 * img, atol=1e-5)


def test_simulated_projection_crlb_scales_as_inverse_sqrt_counts() -> None:
    base = {**SMALL, "dark_level": 0.0, "drift": DriftParams.quiet()}
    low = ScanSimulator(ScanConfig(**base, counts=1000.0)).crlb_shift(20.0, (0.3, -0.2))
    high = ScanSimulator(ScanConfig(**base, counts=4000.0)).crlb_shift(20.0, (0.3, -0.2))
    assert high == pytest.approx(tuple(s / 2 for s in low), rel=1e-6)
    assert 1e-4 < low[0] < 0.05 and 1e-4 < low[1] < 0.05


def test_exact_and_image_based_crlb_agree_for_a_projection() -> None:
    sim = ScanSimulator(ScanConfig(**SMALL, dark_level=0.0))
    exact = sim.crlb_shift(40.0)
    from_image = poisson_crlb_shift(sim.expected(40.0))
    assert from_image == pytest.approx(exact, rel=0.05)
    # The re-render gradient is the derivative with respect to the content shift.
    grad = shift_gradient(lambda s: sim.expected(40.0, s), (0.0, 0.0))
    _, col = spectral_gradient(sim.expected(40.0))
    inner = (slice(8, -8), slice(8, -8))
    assert np.corrcoef(grad[1][inner].ravel(), col[inner].ravel())[0, 1] < -0.9


def test_shift_convention_matches_image_registration(sim: ScanSimulator) -> None:
    from skimage.registration import phase_cross_correlation

    ref = sim.projector.line_integrals(25.0, (0.0, 0.0))
    moved = sim.projector.line_integrals(25.0, (2.3, -4.7))
    found, _, _ = phase_cross_correlation(ref, moved, upsample_factor=20)
    # skimage returns the shift that registers the moving image: the opposite sign. (Its
    # accuracy suffers from content crossing the frame edges, hence the loose tolerance.)
    assert found == pytest.approx((-2.3, 4.7), abs=0.25)
