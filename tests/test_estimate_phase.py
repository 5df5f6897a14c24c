"""Phase correlation: accuracy on synthetic textures with exact sub-pixel ground truth.

Frames are sums of Gaussian blobs evaluated analytically at shifted coordinates, with blob
centres spread beyond the frame, so a shift makes content enter and leave the frame exactly
as real drift does (equivalent to cropping a larger, shifted field).
"""

from __future__ import annotations

import numpy as np
import pytest

from tomolock.service.estimate import (
    InvalidFrameError,
    PhaseCorrelator,
    ShiftEstimate,
    phase_correlate,
)

N = 256


def blob_field(
    shape: tuple[int, int] = (N, N),
    dy: float = 0.0,
    dx: float = 0.0,
    *,
    seed: int = 1,
    n_blobs: int = 900,
    sigma: tuple[float, float] = (1.5, 5.0),
) -> np.ndarray:
    """Absorption-like texture whose content is moved by (+dy, +dx) pixels."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    cy = rng.uniform(-0.5 * rows, 1.5 * rows, n_blobs)
    cx = rng.uniform(-0.5 * cols, 1.5 * cols, n_blobs)
    s = rng.uniform(*sigma, n_blobs)
    amp = rng.uniform(0.05, 0.3, n_blobs)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[:, None]
    # Separable Gaussians: the image is a product of two (pixels x blobs) matrices.
    g_rows = np.exp(-((r - cy - dy) ** 2) / (2 * s**2)) * amp
    g_cols = np.exp(-((c - cx - dx) ** 2) / (2 * s**2))
    return g_rows @ g_cols.T


def poisson_absorption(absorption: np.ndarray, counts: float, rng: np.random.Generator):
    """Absorption image measured with ``counts`` photons per pixel in open beam."""
    detected = rng.poisson(counts * np.exp(-absorption))
    return (-np.log(np.maximum(detected, 1) / counts)).astype(np.float32)


def error(est: ShiftEstimate, truth: tuple[float, float]) -> float:
    return float(np.hypot(est.dy - truth[0], est.dx - truth[1]))


REF = blob_field().astype(np.float32)


@pytest.mark.parametrize(
    "shift", [(3.0, -5.0), (-4.0, 7.0), (0.37, -0.81), (-2.63, 1.18), (-7.25, 12.6)]
)
def test_integer_and_subpixel_shifts_both_signs(shift):
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    est = phase_correlate(REF, frame)
    assert error(est, shift) < 0.05, est
    assert est.confidence > 0.6
    assert est.method == "bandpass/full+overlap"


def test_sign_convention_matches_content_motion():
    """np.roll moves content by +3 rows and -5 columns: that is dy=+3, dx=-5."""
    frame = np.roll(REF, (3, -5), axis=(0, 1))
    est = phase_correlate(REF, frame, periodic_smooth=False)
    assert (round(est.dy, 2), round(est.dx, 2)) == (3.0, -5.0)


@pytest.mark.parametrize("shift", [(102.3, -95.6), (-100.5, 98.2), (0.0, 101.7)])
def test_large_shifts_near_half_frame(shift):
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    est = phase_correlate(REF, frame)
    assert error(est, shift) < 0.3, est


def test_periodic_smooth_removes_edge_bias():
    shifts = [(0.37, -0.81), (5.25, -12.5), (-9.6, 3.3), (12.4, 11.1), (-3.3, -14.8)]
    frames = [blob_field(dy=a, dx=b).astype(np.float32) for a, b in shifts]
    with_ps = PhaseCorrelator(REF)
    without = PhaseCorrelator(REF, periodic_smooth=False)
    err_ps = [error(with_ps.estimate(f), s) for f, s in zip(frames, shifts, strict=True)]
    err_raw = [error(without.estimate(f), s) for f, s in zip(frames, shifts, strict=True)]
    assert max(err_ps) < 0.05, err_ps
    assert np.sqrt(np.mean(np.square(err_raw))) > 3 * np.sqrt(np.mean(np.square(err_ps)))
    # Without the overlap refinement the decomposition alone still halves the error.
    ps_only = PhaseCorrelator(REF, refine_overlap=False)
    raw_only = PhaseCorrelator(REF, refine_overlap=False, periodic_smooth=False)
    pairs = list(zip(frames, shifts, strict=True))
    rms_ps = np.sqrt(np.mean([error(ps_only.estimate(f), s) ** 2 for f, s in pairs]))
    rms_raw = np.sqrt(np.mean([error(raw_only.estimate(f), s) ** 2 for f, s in pairs]))
    assert rms_raw > 2 * rms_ps, (rms_raw, rms_ps)


@pytest.mark.parametrize(("counts", "tolerance"), [(1000, 0.04), (100, 0.12)])
def test_poisson_noise(counts, tolerance):
    """Default options at 1000 and 100 counts/px (0.018 and 0.091 px RMS when written)."""
    rng = np.random.default_rng(7)
    shifts = rng.uniform(-10, 10, (6, 2))
    ref = poisson_absorption(blob_field(), counts, rng)
    corr = PhaseCorrelator(ref)
    errors = []
    for s in shifts:
        est = corr.estimate(poisson_absorption(blob_field(dy=s[0], dx=s[1]), counts, rng))
        errors.append(error(est, tuple(s)))
        assert est.confidence > 0.5
    assert np.sqrt(np.mean(np.square(errors))) < tolerance, errors


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_input_dtypes(dtype):
    shift = (2.4, -3.7)
    scale = 200.0 if dtype == np.uint8 else 20000.0
    ref_f, frame_f = blob_field(), blob_field(dy=shift[0], dx=shift[1])
    top = max(ref_f.max(), frame_f.max())
    ref = np.round(ref_f / top * scale).astype(dtype)
    frame = np.round(frame_f / top * scale).astype(dtype)
    est = phase_correlate(ref, frame)
    assert error(est, shift) < (0.1 if dtype == np.uint8 else 0.05), est


@pytest.mark.parametrize("binning", [2, 4])
def test_binning_reports_full_resolution_shift(binning):
    shift = (6.6, -9.2)
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    est = PhaseCorrelator(REF, binning=binning).estimate(frame)
    assert error(est, shift) < 0.05 * binning, est


def test_roi_restricts_the_analysed_area():
    shift = (-3.3, 4.45)
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    corr = PhaseCorrelator(REF, roi=(40, 200, 30, 230))
    assert corr.analysed_shape[0] <= 160 and corr.analysed_shape[1] <= 200
    assert error(corr.estimate(frame), shift) < 0.05


def test_mask_excludes_static_content():
    """A strong pattern fixed on the detector (e.g. scintillator dust) pins the peak at 0."""
    static = 4.0 * blob_field(seed=99)
    static[:, 110:] = 0.0
    shift = (5.3, -7.1)
    ref = (blob_field() + static).astype(np.float32)
    frame = (blob_field(dy=shift[0], dx=shift[1]) + static).astype(np.float32)
    mask = np.zeros(REF.shape, bool)
    mask[:, 120:] = True
    unmasked = phase_correlate(ref, frame)
    masked = phase_correlate(ref, frame, mask=mask)
    assert error(unmasked, shift) > 1.0
    assert error(masked, shift) < 0.1, masked


def test_local_search_around_prediction_equals_full_search():
    shift = (7.43, -11.27)
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    corr = PhaseCorrelator(REF)
    full = corr.estimate(frame)
    # Same integer alignment as the full search: same crops, same answer (to the grid).
    local = corr.estimate(frame, predicted=(7.2, -11.4), search_radius=5)
    assert local.method == "bandpass/local+overlap"
    assert abs(local.dy - full.dy) <= 0.011 and abs(local.dx - full.dx) <= 0.011
    # A prediction two pixels off aligns other crops: still the same shift.
    off = corr.estimate(frame, predicted=(6.0, -10.0), search_radius=5)
    assert error(off, (full.dy, full.dx)) < 0.025
    # Without the overlap step the local search runs on the full cross-power spectrum.
    plain = PhaseCorrelator(REF, refine_overlap=False)
    full_plain = plain.estimate(frame)
    local_plain = plain.estimate(frame, predicted=(6.0, -10.0), search_radius=5)
    assert local_plain.method == "bandpass/local"
    assert error(local_plain, (full_plain.dy, full_plain.dx)) <= 0.015
    for est in (full, local, off):
        assert error(est, shift) < 0.05


def test_local_search_ignores_a_stronger_peak_outside_the_window():
    """Two copies of the content: the search window decides which one is tracked."""
    corr = PhaseCorrelator(REF)
    frame = (blob_field(dy=20, dx=0) + 1.5 * blob_field(dy=-30, dx=0)).astype(np.float32)
    assert abs(corr.estimate(frame).dy + 30) < 0.2
    local = corr.estimate(frame, predicted=(18.0, 1.0), search_radius=6)
    assert abs(local.dy - 20) < 0.2 and abs(local.dx) < 0.2


def test_confidence_high_for_match_low_for_noise_and_unrelated():
    rng = np.random.default_rng(3)
    corr = PhaseCorrelator(REF)
    match = corr.estimate(blob_field(dy=1.5, dx=-2.5).astype(np.float32))
    noise = corr.estimate(rng.normal(size=REF.shape).astype(np.float32))
    unrelated = corr.estimate(blob_field(seed=12345).astype(np.float32))
    flat_noisy = corr.estimate((1.0 + 1e-3 * rng.normal(size=REF.shape)).astype(np.float32))
    assert match.confidence > 0.7 and match.peak > 0.8
    for bad in (noise, unrelated, flat_noisy):
        assert bad.confidence < 0.35, bad
        assert bad.peak < 0.5 * match.peak


def test_phase_normalisation_on_broadband_texture():
    rng = np.random.default_rng(5)
    big = rng.normal(size=(N + 40, N + 40)).astype(np.float32)
    ref, frame = big[20 : 20 + N, 20 : 20 + N], big[14 : 14 + N, 29 : 29 + N]
    est = phase_correlate(ref, frame, normalisation="phase")
    assert (round(est.dy, 2), round(est.dx, 2)) == (6.0, -9.0)
    assert est.confidence > 0.9


@pytest.mark.parametrize("options", [{"window": "hann"}, {"window": "tukey"}, {"lowpass": 1.5}])
def test_window_and_lowpass_options(options):
    shift = (-1.7, 2.2)
    frame = blob_field(dy=shift[0], dx=shift[1]).astype(np.float32)
    assert error(phase_correlate(REF, frame, **options), shift) < 0.1


def test_odd_sizes_trim_and_pad():
    shape = (251, 263)
    shift = (3.21, -4.56)
    ref = blob_field(shape).astype(np.float32)
    frame = blob_field(shape, *shift).astype(np.float32)
    trim = PhaseCorrelator(ref)
    pad = PhaseCorrelator(ref, fft_size="pad")
    assert trim.fft_shape[0] <= 251 and pad.fft_shape[0] >= 251
    assert error(trim.estimate(frame), shift) < 0.05
    assert error(pad.estimate(frame), shift) < 0.15


def test_small_frames_use_full_surface_and_integer_upsample():
    ref = blob_field((96, 128)).astype(np.float32)
    frame = blob_field((96, 128), 2.0, -3.0).astype(np.float32)
    est = phase_correlate(ref, frame, upsample=1)
    assert (est.dy, est.dx) == (2.0, -3.0)
    assert error(phase_correlate(ref, frame, upsample=10), (2.0, -3.0)) < 0.11


def test_set_reference_replaces_cached_spectrum():
    corr = PhaseCorrelator(REF)
    new_ref = blob_field(dy=4.0, dx=4.0).astype(np.float32)
    corr.set_reference(new_ref)
    est = corr.estimate(blob_field(dy=5.0, dx=2.0).astype(np.float32))
    assert error(est, (1.0, -2.0)) < 0.05


BAD_FRAMES = {
    "nan": (lambda: np.where(np.eye(N, dtype=bool), np.nan, REF), "NaN"),
    "inf": (lambda: np.where(np.eye(N, dtype=bool), np.inf, REF), "infinite"),
    "constant": (lambda: np.full((N, N), 3.0, np.float32), "constant"),
    "saturated": (lambda: np.full((N, N), 65535, np.uint16), "constant"),
    "wrong_shape": (lambda: REF[:, :-1], "does not match"),
    "one_d": (lambda: REF[0], "2-D"),
    "empty": (lambda: np.zeros((0, N), np.float32), "2-D|empty|does not match"),
    "dtype": (lambda: REF.astype(np.complex64), "unsupported dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frames_raise_invalid_frame_error(case):
    make, message = BAD_FRAMES[case]
    corr = PhaseCorrelator(REF)
    with pytest.raises(InvalidFrameError, match=message):
        corr.estimate(make())


def test_saturated_fraction_is_rejected_with_limit_in_message():
    frame = np.round(blob_field() / blob_field().max() * 60000).astype(np.uint16)
    frame[:40] = 65535  # 15 % of the pixels at the top of the range
    corr = PhaseCorrelator(REF)
    with pytest.raises(InvalidFrameError, match=r"saturated: 15\.6% .*limit 5\.0%"):
        corr.estimate(frame)
    lenient = PhaseCorrelator(REF, max_saturated_fraction=0.2)
    assert lenient.estimate(frame).confidence > 0


def test_bad_reference_and_options():
    with pytest.raises(InvalidFrameError, match="reference is constant"):
        PhaseCorrelator(np.ones((64, 64), np.float32))
    with pytest.raises(ValueError, match="binning"):
        PhaseCorrelator(REF, binning=0)
    with pytest.raises(ValueError, match="window"):
        PhaseCorrelator(REF, window="gauss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roi"):
        PhaseCorrelator(REF, roi=(0, 300, 0, 10))
    with pytest.raises(ValueError, match="mask shape"):
        PhaseCorrelator(REF, mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="search_radius"):
        PhaseCorrelator(REF).estimate(REF, predicted=(1.0, 2.0))
    with pytest.raises(ValueError, match="more than half"):
        PhaseCorrelator(REF).estimate(REF, search_radius=200)
