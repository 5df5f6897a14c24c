"""Rotation-invariant drift estimators for tomography.

A projection changes with the rotation angle, so a fixed reference only matches nearby
angles. These estimators use quantities of a parallel-beam absorption projection that do not
depend on the angle (or depend on it in a known way):

* the integrated mass per detector row (vertical drift),
* the horizontal centre of mass, which follows a sinusoid of the angle (Helgason-Ludwig
  consistency, order 0 and 1), so deviations from the fitted sinusoid are horizontal drift,
* the mirror symmetry of projections 180 degrees apart (rotation-centre offset).

Validity: absorption images (``-log`` transmission, background ~ 0) of a sample that stays
entirely inside the field of view, or inside the ``mask``, at every angle. Content crossing
the frame or mask edge breaks mass conservation and biases all of them (measured 0.03-0.14 px
for profiles and ~3 px for centres of mass): restrict the mask to a region that always
contains the whole sample (e.g. a column band around the rotation axis wider than the
sample's orbit) rather than one that cuts through it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft

from .errors import InvalidFrameError
from .phase_correlation import PhaseCorrelator
from .types import MirrorPairOffset, ShiftEstimate, SinusoidFit
from .validate import check_frame


def _weights_for(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    weights = np.asarray(mask, dtype=np.float64)
    if weights.shape != shape:
        raise ValueError(f"mask shape {weights.shape} does not match the frame shape {shape}")
    if not np.isfinite(weights).all() or weights.min() < 0 or weights.max() > 1:
        raise ValueError("mask weights must be finite and within [0, 1]")
    if not weights.any():
        raise ValueError("mask selects no pixel")
    return weights


def _row_profile(image: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    data = np.asarray(image, dtype=np.float64)
    return (data if weights is None else data * weights).sum(axis=1)


def mass_profile_shift(
    reference: np.ndarray,
    frame: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    upsample: int = 100,
) -> ShiftEstimate:
    """Vertical shift from integrated-mass row profiles.

    The sum of absorption along a detector row is the mass in that horizontal slice of the
    sample, whatever the rotation angle, so frames at any two angles can be compared. The two
    profiles are cross-correlated (zero-padded, no wrap-around) and the peak refined by a 1-D
    matrix DFT to ``1 / upsample`` pixel.

    Parameters
    ----------
    reference, frame : numpy.ndarray
        2-D absorption images of equal shape, background ~ 0.
    mask : numpy.ndarray, optional
        Weights in [0, 1] (or boolean) selecting the sample region in both images. Best a
        band of whole columns: a mask that cuts rows the sample moves through biases ``dy``.
    upsample : int
        Sub-pixel resolution ``1 / upsample`` pixel.

    Returns
    -------
    ShiftEstimate
        ``dy`` (content moved down by ``+dy`` rows), ``dx = nan`` (not measured).
        ``peak`` = cosine similarity of the profiles at the best shift; ``confidence`` =
        fraction of the reference profile's variance explained by the frame profile shifted
        back by ``dy`` (coefficient of determination, clipped to [0, 1]; it also drops when
        the total mass differs); ``peak_ratio = nan``.

    Raises
    ------
    InvalidFrameError
        If either image is unusable, the shapes differ, or a profile has no mass.
    """
    if int(upsample) != upsample or upsample < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    ref = check_frame(reference, name="reference", max_saturated_fraction=1.0)
    frm = check_frame(frame, expected_shape=ref.shape, max_saturated_fraction=1.0)
    weights = _weights_for(mask, ref.shape)
    p_ref, p_frm = _row_profile(ref, weights), _row_profile(frm, weights)
    for name, prof in (("reference", p_ref), ("frame", p_frm)):
        if not np.any(prof):
            raise InvalidFrameError(f"{name} has no mass inside the mask (all-zero profile)")
    length = p_ref.size
    padded = scipy.fft.next_fast_len(2 * length, real=True)
    spec_ref = scipy.fft.rfft(p_ref, padded)
    spec_frm = scipy.fft.rfft(p_frm, padded)
    cross = spec_frm * np.conj(spec_ref)
    corr = scipy.fft.irfft(cross, padded)
    i = int(np.argmax(corr))
    start = i - padded if i > padded // 2 else i
    # 1-D matrix DFT of the half spectrum around the integer peak.
    k = np.arange(cross.size)
    mult = np.full(cross.size, 2.0)
    mult[0] = 1.0
    if padded % 2 == 0:
        mult[-1] = 1.0
    offsets = start + np.arange(-upsample, upsample + 1) / upsample
    values = (np.exp(2j * np.pi * np.outer(offsets, k) / padded) @ (mult * cross)).real / padded
    best = int(np.argmax(values))
    dy = float(offsets[best])
    norm = float(np.linalg.norm(p_ref) * np.linalg.norm(p_frm))
    peak = float(np.clip(values[best] / norm, 0.0, 1.0))
    back = scipy.fft.irfft(spec_frm * np.exp(2j * np.pi * k * dy / padded), padded)[:length]
    spread = float(np.sum((p_ref - p_ref.mean()) ** 2))
    explained = 1.0 - float(np.sum((p_ref - back) ** 2)) / spread if spread > 0 else 0.0
    confidence = float(np.clip(explained, 0.0, 1.0))
    return ShiftEstimate(
        dy=dy,
        dx=float("nan"),
        confidence=confidence,
        peak=peak,
        peak_ratio=float("nan"),
        method="mass_profile",
    )


def centre_of_mass(frame: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Centre of mass ``(row, col)`` of an absorption image, in pixels.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D absorption image (background ~ 0; negative noise values are kept, so that noise
        averages out instead of biasing towards the frame centre).
    mask : numpy.ndarray, optional
        Weights in [0, 1] (or boolean) that select the sample.

    Returns
    -------
    tuple of float
        ``(row, col)`` of the mass-weighted mean position.

    Raises
    ------
    InvalidFrameError
        If the frame is unusable or its total (masked) mass is not positive.
    """
    data = np.asarray(check_frame(frame, max_saturated_fraction=1.0), dtype=np.float64)
    weights = _weights_for(mask, data.shape)
    if weights is not None:
        data = data * weights
    total = float(data.sum())
    if not total > 0:
        raise InvalidFrameError(
            f"total mass {total:g} is not positive; is this an absorption image?"
        )
    rows = data.sum(axis=1)
    cols = data.sum(axis=0)
    return (
        float(rows @ np.arange(rows.size) / total),
        float(cols @ np.arange(cols.size) / total),
    )


def fit_com_sinusoid(
    angles_deg: np.ndarray,
    com_x: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    robust: bool = False,
    huber_k: float = 1.345,
    max_iter: int = 50,
) -> SinusoidFit:
    """Fit ``c + A cos(theta) + B sin(theta)`` to horizontal centres of mass.

    For a parallel projection the horizontal centre of mass of a rigid sample rotating about
    a fixed axis follows exactly this curve; the residuals are the horizontal drift of each
    frame (minus any constant or once-per-turn component, which the fit cannot tell apart
    from the sample's own orbit). Needs angles spanning a good part of a turn.

    Parameters
    ----------
    angles_deg : numpy.ndarray
        Rotation angles (degrees), one per frame.
    com_x : numpy.ndarray
        Horizontal centres of mass (px), e.g. from :func:`centre_of_mass`.
    weights : numpy.ndarray, optional
        Non-negative per-frame weights (e.g. confidences); 0 excludes a frame.
    robust : bool
        Iteratively reweighted least squares with Huber weights (scale from the median
        absolute deviation), so outlier frames barely pull the fit.
    huber_k : float
        Huber threshold in units of the robust scale.
    max_iter : int
        Maximum reweighting iterations.

    Returns
    -------
    SinusoidFit
        Coefficients, amplitude/phase, fitted values, residuals (= drift) and final weights.

    Raises
    ------
    ValueError
        If inputs have different lengths, contain NaN/inf, have negative weights, or fewer
        than 3 weighted frames / angles that do not determine the sinusoid.
    """
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    y = np.asarray(com_x, dtype=np.float64)
    if theta.ndim != 1 or y.shape != theta.shape:
        raise ValueError(
            f"angles_deg and com_x must be 1-D of equal length, got {theta.shape} and {y.shape}"
        )
    w0 = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if w0.shape != y.shape:
        raise ValueError(f"weights shape {w0.shape} does not match com_x shape {y.shape}")
    if not (np.isfinite(theta).all() and np.isfinite(y).all() and np.isfinite(w0).all()):
        raise ValueError("angles_deg, com_x and weights must be finite")
    if (w0 < 0).any():
        raise ValueError("weights must be >= 0")
    if np.count_nonzero(w0) < 3:
        raise ValueError(f"need at least 3 frames with weight > 0, got {np.count_nonzero(w0)}")
    if huber_k <= 0 or max_iter < 1:
        raise ValueError("huber_k must be > 0 and max_iter >= 1")
    design = np.column_stack([np.ones_like(theta), np.cos(theta), np.sin(theta)])

    def solve(w: np.ndarray) -> np.ndarray:
        sw = np.sqrt(w)
        coef, _, rank, _ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
        if rank < 3:
            raise ValueError(
                "angles do not determine c + A cos + B sin (rank-deficient); "
                "use frames spread over a larger part of the turn"
            )
        return coef

    w = w0.copy()
    coef = solve(w)
    n_iter = 1
    if robust:
        used = w0 > 0
        for n_iter in range(2, max_iter + 1):  # noqa: B007 - n_iter is reported
            resid = y - design @ coef
            dev = np.abs(resid[used] - np.median(resid[used]))
            scale = 1.4826 * float(np.median(dev))
            if scale <= 1e-12 * (1.0 + np.abs(y).max()):
                break  # (near) exact fit: nothing to down-weight
            huber = np.minimum(1.0, huber_k * scale / np.maximum(np.abs(resid), 1e-300))
            w = w0 * huber
            new = solve(w)
            done = np.max(np.abs(new - coef)) <= 1e-10 * (1.0 + np.max(np.abs(coef)))
            coef = new
            if done:
                break
    fitted = design @ coef
    residuals = y - fitted
    rms = float(np.sqrt(np.sum(w * residuals**2) / np.sum(w)))
    c, a, b = (float(v) for v in coef)
    return SinusoidFit(
        centre=c,
        a_cos=a,
        b_sin=b,
        amplitude=float(np.hypot(a, b)),
        phase_deg=float(np.rad2deg(np.arctan2(b, a))),
        fitted=fitted,
        residuals=residuals,
        weights=w,
        rms=rms,
        n_iter=n_iter,
    )


def mirror_pair_offset(
    proj_0: np.ndarray,
    proj_180: np.ndarray,
    mask: np.ndarray | None = None,
    **correlator_options: Any,
) -> MirrorPairOffset:
    """Rotation-centre offset and vertical shift from projections 180 degrees apart.

    A parallel projection at ``theta + 180`` is the one at ``theta`` mirrored about the
    rotation axis. Mirroring the 180-degree projection left-right about the frame centre
    therefore reproduces the 0-degree one shifted by ``dx = -2 * offset``, where ``offset`` is
    the axis column minus the frame-centre column ``(width - 1) / 2``. Any horizontal drift
    between the two exposures enters ``offset`` as half its difference; vertical drift is
    ``dy``.

    Parameters
    ----------
    proj_0, proj_180 : numpy.ndarray
        2-D absorption projections of equal shape.
    mask : numpy.ndarray, optional
        Weights applied to ``proj_0`` and to the *mirrored* ``proj_180``; must contain the
        sample in both (e.g. a column band centred on the frame, wider than the sample).
    **correlator_options
        Further :class:`PhaseCorrelator` options (``upsample``, ``binning``, ``lowpass``...).

    Returns
    -------
    MirrorPairOffset
        ``centre_offset`` (px), ``dy`` (px), confidence and the raw shift estimate.

    Raises
    ------
    InvalidFrameError
        If a projection is unusable or the shapes differ.
    """
    ref = check_frame(proj_0, name="proj_0", max_saturated_fraction=1.0)
    other = check_frame(
        proj_180, expected_shape=ref.shape, name="proj_180", max_saturated_fraction=1.0
    )
    mirrored = np.ascontiguousarray(other[:, ::-1])
    options = {"max_saturated_fraction": 1.0, **correlator_options}
    estimate = PhaseCorrelator(ref, mask=mask, **options).estimate(mirrored)
    return MirrorPairOffset(
        centre_offset=-estimate.dx / 2.0,
        dy=estimate.dy,
        confidence=estimate.confidence,
        shift=estimate,
    )
