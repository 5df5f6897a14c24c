"""Result types shared by the drift estimators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class ShiftEstimate:
    """Image shift of a frame relative to its reference.

    Attributes
    ----------
    dy, dx : float
        Shift in full-resolution detector pixels: ``frame(r, c) ≈ reference(r - dy, c - dx)``,
        i.e. the content moved by ``+dy`` rows and ``+dx`` columns. (This is the opposite sign
        of :func:`skimage.registration.phase_cross_correlation`.) ``nan`` for an axis an
        estimator does not measure.
    confidence : float
        Quality in [0, 1]; its definition depends on ``method`` and is documented by the
        estimator that produced it. 0 means "do not use".
    peak : float
        Normalised correlation peak height in [0, 1] (coherent fraction of the cross-power).
    peak_ratio : float
        Primary peak divided by the highest secondary peak (``inf`` if none, ``nan`` if not
        evaluated).
    method : str
        Which estimator and search produced the estimate, e.g. ``"phase/full"``.
    """

    dy: float
    dx: float
    confidence: float
    peak: float
    peak_ratio: float
    method: str

    @property
    def shift(self) -> tuple[float, float]:
        """Return ``(dy, dx)`` in pixels."""
        return (self.dy, self.dx)


@dataclass(frozen=True, slots=True)
class SinusoidFit:
    """Fit of ``c + A cos(theta) + B sin(theta)`` to horizontal centres of mass.

    Attributes
    ----------
    centre : float
        Constant term ``c`` (px): detector column of the rotation axis plus any constant drift.
    a_cos, b_sin : float
        Coefficients ``A`` and ``B``. For the projection convention
        ``u = x cos(theta) - y sin(theta)``, an object whose centre of mass sits at ``(x, y)``
        (px, relative to the rotation axis) gives ``A = x`` and ``B = -y``.
    amplitude : float
        ``hypot(A, B)``: radius of the centre-of-mass orbit (px).
    phase_deg : float
        ``atan2(B, A)`` in degrees, so that the model is ``c + amplitude*cos(theta - phase)``.
    fitted : numpy.ndarray
        Model values at the input angles (px).
    residuals : numpy.ndarray
        ``com_x - fitted`` (px): the horizontal drift at each frame, minus its projection on
        ``{1, cos, sin}`` (a constant or once-per-turn drift is indistinguishable from the
        object's own orbit and is absorbed by the fit).
    weights : numpy.ndarray
        Final per-frame weights (input weights times robust weights; 0 = rejected).
    rms : float
        Weighted RMS of the residuals (px).
    n_iter : int
        Iterations of the reweighting loop (1 for a plain least-squares fit).
    """

    centre: float
    a_cos: float
    b_sin: float
    amplitude: float
    phase_deg: float
    fitted: np.ndarray
    residuals: np.ndarray
    weights: np.ndarray
    rms: float
    n_iter: int


@dataclass(frozen=True, slots=True)
class MirrorPairOffset:
    """Rotation-centre offset and vertical shift from a 0/180-degree projection pair.

    Attributes
    ----------
    centre_offset : float
        Rotation-axis column minus the frame-centre column ``(width - 1) / 2`` (px).
    dy : float
        Vertical shift of the 180-degree projection relative to the 0-degree one (px, content
        moved by ``+dy`` rows).
    confidence : float
        Confidence of the underlying phase correlation, see :class:`ShiftEstimate`.
    shift : ShiftEstimate
        The raw estimate of mirrored(proj_180) relative to proj_0.
    """

    centre_offset: float
    dy: float
    confidence: float
    shift: ShiftEstimate
