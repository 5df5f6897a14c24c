"""Cramer-Rao lower bound for estimating the shift of a Poisson-noise image.

For pixel counts ``n_i ~ Poisson(lambda_i(s))`` with ``s = (dy, dx)`` the image shift, the
Fisher information is

    I_ab = sum_i (d lambda_i / d s_a) (d lambda_i / d s_b) / var_i,   var_i = lambda_i,

and any unbiased estimator has ``cov(s_hat) >= I^-1``. The bound returned is
``sqrt(diag(I^-1))`` per axis (the off-diagonal term is kept: it matters for oriented
texture). Drift estimators compare a frame with a reference that is itself noisy; for two
independent frames of the same expected image the variance of the relative shift doubles to
first order (``both_noisy``: sigma times sqrt(2)).

Gradients: the bound is only as good as ``d lambda / d s``. Finite differences on the pixel
grid underestimate it for fine texture, so the default is a spectral derivative on an
even-symmetric extension (no wrap-around discontinuity at the frame edges). For exact
gradients of a simulated image, re-render at ``s +- h`` (:func:`shift_gradient`) and pass
them in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import fft


def spectral_gradient(image: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(d/drow, d/dcol)`` of an image by a spectral derivative.

    The image is mirrored to twice its size, which makes it periodic without jumps, so the
    derivative is accurate up to the frame edges for band-limited content.

    Parameters
    ----------
    image : array_like
        2-D array.

    Returns
    -------
    tuple of ndarray
        Derivatives along rows and columns (per pixel), float64.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 2:
        raise ValueError(f"image must be 2-D and at least 2 x 2, got shape {img.shape}")
    rows, cols = img.shape
    ext = np.pad(img, ((0, rows), (0, cols)), mode="symmetric")
    spec = fft.rfft2(ext, workers=-1)
    ky = 2.0 * np.pi * fft.fftfreq(2 * rows)
    kx = 2.0 * np.pi * fft.rfftfreq(2 * cols)
    # The Nyquist mode has no well-defined real derivative: drop it.
    ky[rows] = 0.0
    kx[-1] = 0.0
    d_row = fft.irfft2(spec * (1j * ky[:, None]), s=ext.shape, workers=-1)[:rows, :cols]
    d_col = fft.irfft2(spec * (1j * kx[None, :]), s=ext.shape, workers=-1)[:rows, :cols]
    return d_row, d_col


def shift_gradient(
    render: Callable[[tuple[float, float]], ArrayLike],
    shift_px: tuple[float, float] = (0.0, 0.0),
    *,
    h: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(d/d dy, d/d dx)`` of a renderer by central differences in the shift.

    Parameters
    ----------
    render : callable
        ``render((dy, dx)) -> image``; exact at subpixel shifts (e.g. an analytic projector).
    shift_px : tuple of float
        Shift at which to differentiate.
    h : float
        Step in pixels (error O(h^2); too small amplifies float rounding).

    Returns
    -------
    tuple of ndarray
        Derivatives of the image with respect to ``dy`` and ``dx``, float64.
    """
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be > 0, got {h}")
    dy, dx = (float(v) for v in shift_px)
    grads = []
    for step in ((h, 0.0), (0.0, h)):
        plus = np.asarray(render((dy + step[0], dx + step[1])), dtype=np.float64)
        minus = np.asarray(render((dy - step[0], dx - step[1])), dtype=np.float64)
        grads.append((plus - minus) / (2.0 * h))
    return grads[0], grads[1]


def poisson_crlb_shift(
    expected_counts: ArrayLike,
    *,
    both_noisy: bool = True,
    gradient: tuple[ArrayLike, ArrayLike] | None = None,
    variance: ArrayLike | None = None,
    method: Literal["spectral", "central"] = "spectral",
) -> tuple[float, float]:
    """Cramer-Rao bound on the shift ``(dy, dx)`` of a Poisson image, in pixels.

    Parameters
    ----------
    expected_counts : array_like
        Noise-free expected counts per pixel (2-D, > 0).
    both_noisy : bool
        If True (default), bound the relative shift between two independent noisy frames of
        this expected image (variance doubled); if False, the shift of one noisy frame
        against a noise-free model.
    gradient : tuple of array_like, optional
        ``(d lambda / d dy, d lambda / d dx)``; default computed from ``expected_counts``
        with ``method``. The sign convention does not matter.
    variance : array_like, optional
        Per-pixel noise variance; default ``expected_counts`` (pure Poisson). Pass
        ``signal + read_noise**2`` when the counts include a noiseless offset.
    method : {"spectral", "central"}
        Gradient method when ``gradient`` is not given: spectral (accurate for fine texture)
        or second-order central differences (``numpy.gradient``).

    Returns
    -------
    tuple of float
        ``(sigma_dy, sigma_dx)``: lower bounds on the standard deviation of any unbiased
        estimator. ``inf`` along an axis without information (e.g. a flat image).
    """
    lam = np.asarray(expected_counts, dtype=np.float64)
    if lam.ndim != 2 or min(lam.shape) < 2:
        raise ValueError(f"expected_counts must be 2-D and at least 2 x 2, got {lam.shape}")
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError("expected_counts must be finite and > 0 everywhere")
    var = lam if variance is None else np.asarray(variance, dtype=np.float64)
    if var.shape != lam.shape or not np.all(np.isfinite(var)) or np.any(var <= 0):
        raise ValueError("variance must match expected_counts in shape and be finite and > 0")
    if gradient is None:
        if method == "spectral":
            g_y, g_x = spectral_gradient(lam)
        elif method == "central":
            g_y, g_x = np.gradient(lam)
        else:
            raise ValueError(f"method must be 'spectral' or 'central', got {method!r}")
    else:
        g_y, g_x = (np.asarray(g, dtype=np.float64) for g in gradient)
        if g_y.shape != lam.shape or g_x.shape != lam.shape:
            raise ValueError("gradient arrays must have the shape of expected_counts")
    fisher = np.array([
        [np.sum(g_y * g_y / var), np.sum(g_y * g_x / var)],
        [np.sum(g_y * g_x / var), np.sum(g_x * g_x / var)],
    ])
    factor = math.sqrt(2.0) if both_noisy else 1.0
    det = fisher[0, 0] * fisher[1, 1] - fisher[0, 1] ** 2
    if det > 1e-12 * fisher[0, 0] * fisher[1, 1]:
        cov = np.linalg.inv(fisher)
        return factor * math.sqrt(cov[0, 0]), factor * math.sqrt(cov[1, 1])
    # Singular: an axis is bounded only if it carries information and the other none
    # (then the two are uncorrelated); otherwise a direction is unobservable.
    sigmas = []
    for i in (0, 1):
        alone = fisher[i, i] > 0 and fisher[1 - i, 1 - i] == 0
        sigmas.append(factor / math.sqrt(fisher[i, i]) if alone else math.inf)
    return sigmas[0], sigmas[1]
