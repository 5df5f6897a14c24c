"""Fourier basis in the rotation angle, shared by the runout fit and the fusion filter.

The runout of axis ``a`` is ``offset + sum_k (cos_k cos(k theta) + sin_k sin(k theta))`` for
``k = 1..N``; coefficients are stored interleaved ``[cos_1, sin_1, cos_2, sin_2, ...]``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["harmonic_basis", "largest_angular_gap_deg"]


def harmonic_basis(angles_deg: ArrayLike, n_harmonics: int) -> NDArray[np.float64]:
    """Evaluate the interleaved cos/sin basis of harmonics ``1..n_harmonics``.

    Parameters
    ----------
    angles_deg : array_like
        Rotation angles in degrees, any shape ``S``.
    n_harmonics : int
        Highest harmonic order N (>= 0).

    Returns
    -------
    numpy.ndarray
        Shape ``S + (2 N,)``: ``[cos(theta), sin(theta), cos(2 theta), sin(2 theta), ...]``.
    """
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    k_theta = theta[..., None] * np.arange(1, n_harmonics + 1, dtype=np.float64)
    basis = np.empty((*theta.shape, 2 * n_harmonics), dtype=np.float64)
    basis[..., 0::2] = np.cos(k_theta)
    basis[..., 1::2] = np.sin(k_theta)
    return basis


def largest_angular_gap_deg(angles_deg: ArrayLike) -> float:
    """Largest arc of the circle (degrees) containing none of the given angles.

    Parameters
    ----------
    angles_deg : array_like
        Angles in degrees (any range; taken modulo 360).

    Returns
    -------
    float
        360 for no angles, otherwise the widest empty arc between neighbouring angles.
    """
    wrapped = np.unique(np.mod(np.asarray(angles_deg, dtype=np.float64).ravel(), 360.0))
    if wrapped.size == 0:
        return 360.0
    gaps = np.diff(np.append(wrapped, wrapped[0] + 360.0))
    return float(gaps.max())
