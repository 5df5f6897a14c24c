"""Rotation-stage runout: weighted least-squares Fourier fit from a calibration sweep.

Model, per lab axis ``a`` (micrometres)::

    reading_a(theta, t) = offset_a + sum_{k=1..N} (c_ak cos k theta + s_ak sin k theta)
                          + sum_{d=1..D} g_ad tau(t)^d + noise

``tau`` is the sweep time scaled to [-1, 1]. The polynomial in time (degree D, default 1)
absorbs thermal drift during the sweep so it does not leak into the harmonics; it is kept
in the diagnostics but is not part of the stored runout. A sweep forward then back (or
several turns) separates the two best; a single partial arc cannot, and the fit refuses when
the column-equilibrated design matrix is too ill-conditioned to determine the requested
harmonics (the condition number is the factor by which reading noise is amplified into the
coefficients).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .harmonics import harmonic_basis, largest_angular_gap_deg

__all__ = ["CoverageWarning", "RunoutDiagnostics", "RunoutModel"]

_FORMAT = "tomolock.runout"
_FORMAT_VERSION = 1
_DEFAULT_AXES = ("x", "y", "z")


class CoverageWarning(UserWarning):
    """The calibration sweep determines the harmonics only poorly (fit still returned)."""


@dataclass(frozen=True)
class RunoutDiagnostics:
    """Quality figures of a runout fit.

    Attributes
    ----------
    n_points : list of int
        Finite readings used, per axis.
    rms_residual_um : list of float
        Unweighted RMS of the fit residual, per axis (um).
    reduced_chi2 : list of float or None
        ``sum(w r^2) / (n - p)`` per axis when sigmas were given (expect ~1), else None.
    condition_number : float
        Largest (over axes) condition number of the column-equilibrated weighted design.
    largest_gap_deg : float
        Widest arc of the circle without a sample (degrees).
    angle_span_deg : float
        ``max(angle) - min(angle)`` of the sweep (degrees, not wrapped).
    t_ref_s, t_scale_s : float
        Time normalisation of the thermal term: ``tau = (t - t_ref_s) / t_scale_s``.
    time_coefficients_um : list of list of float
        Per axis, the thermal polynomial coefficients ``g_a1..g_aD`` (um per unit ``tau^d``).
    warnings : list of str
        Human-readable coverage / conditioning warnings.
    """

    n_points: list[int]
    rms_residual_um: list[float]
    reduced_chi2: list[float] | None
    condition_number: float
    largest_gap_deg: float
    angle_span_deg: float
    t_ref_s: float
    t_scale_s: float
    time_coefficients_um: list[list[float]]
    warnings: list[str] = field(default_factory=list)


class RunoutModel:
    """Fourier-series runout of the rotation stage, per lab axis.

    Parameters
    ----------
    n_harmonics : int
        Highest harmonic N (1st = eccentricity, higher = wobble / bearing errors).
    time_degree : int
        Degree of the polynomial in time fitted alongside to absorb thermal drift during the
        sweep (0 = none, 1 = linear, default).
    max_condition : float
        Refuse the fit (``ValueError``) when the condition number exceeds this.
    warn_condition : float
        Emit a :class:`CoverageWarning` above this condition number.

    Examples
    --------
    >>> model = RunoutModel(n_harmonics=2).fit(angles_deg, readings_um, sigmas=0.002)
    >>> mean_um, std_um = model.predict(37.5)
    """

    def __init__(
        self,
        n_harmonics: int = 4,
        time_degree: int = 1,
        max_condition: float = 1e3,
        warn_condition: float = 30.0,
    ) -> None:
        if isinstance(n_harmonics, bool) or not isinstance(n_harmonics, int | np.integer):
            raise TypeError(f"n_harmonics must be an int, got {n_harmonics!r}")
        if not 1 <= n_harmonics <= 64:
            raise ValueError(f"n_harmonics must be in 1..64, got {n_harmonics}")
        if isinstance(time_degree, bool) or not isinstance(time_degree, int | np.integer):
            raise TypeError(f"time_degree must be an int, got {time_degree!r}")
        if not 0 <= time_degree <= 3:
            raise ValueError(f"time_degree must be in 0..3, got {time_degree}")
        if not (math.isfinite(max_condition) and max_condition > 1.0):
            raise ValueError(f"max_condition must be finite and > 1, got {max_condition}")
        if not (math.isfinite(warn_condition) and 1.0 < warn_condition <= max_condition):
            raise ValueError(
                f"warn_condition must be in (1, max_condition={max_condition}], got "
                f"{warn_condition}"
            )
        self.n_harmonics = int(n_harmonics)
        self.time_degree = int(time_degree)
        self.max_condition = float(max_condition)
        self.warn_condition = float(warn_condition)
        self._axes: tuple[str, ...] | None = None
        self._coefficients: NDArray[np.float64] | None = None
        self._covariance: NDArray[np.float64] | None = None
        self._diagnostics: RunoutDiagnostics | None = None

    # ------------------------------------------------------------------ fitted state
    @property
    def n_params(self) -> int:
        """Number of runout parameters per axis: offset + 2 N harmonic coefficients."""
        return 1 + 2 * self.n_harmonics

    @property
    def is_fitted(self) -> bool:
        """Whether coefficients are available (from :meth:`fit` or :meth:`from_dict`)."""
        return self._coefficients is not None

    def _require_fit(self) -> None:
        if self._coefficients is None:
            raise RuntimeError("RunoutModel is not fitted: call fit() or from_dict() first")

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names, in the column order of the readings."""
        self._require_fit()
        assert self._axes is not None
        return self._axes

    @property
    def coefficients(self) -> NDArray[np.float64]:
        """Runout coefficients ``(n_axes, 1 + 2N)``: ``[offset, cos_1, sin_1, cos_2, ...]`` um."""
        self._require_fit()
        assert self._coefficients is not None
        return self._coefficients.copy()

    @property
    def covariance(self) -> NDArray[np.float64]:
        """Covariance of :attr:`coefficients`, ``(n_axes, 1 + 2N, 1 + 2N)`` in um^2."""
        self._require_fit()
        assert self._covariance is not None
        return self._covariance.copy()

    @property
    def harmonic_coefficients(self) -> NDArray[np.float64]:
        """Harmonic part of :attr:`coefficients` without the offset, ``(n_axes, 2N)``."""
        return self.coefficients[:, 1:]

    @property
    def harmonic_covariance(self) -> NDArray[np.float64]:
        """Covariance of :attr:`harmonic_coefficients`, ``(n_axes, 2N, 2N)``."""
        return self.covariance[:, 1:, 1:]

    @property
    def amplitudes_um(self) -> NDArray[np.float64]:
        """Amplitude ``hypot(cos_k, sin_k)`` of each harmonic, ``(n_axes, N)``, um."""
        h = self.harmonic_coefficients
        return np.hypot(h[:, 0::2], h[:, 1::2])

    @property
    def diagnostics(self) -> RunoutDiagnostics:
        """Fit diagnostics (see :class:`RunoutDiagnostics`)."""
        self._require_fit()
        assert self._diagnostics is not None
        return self._diagnostics

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        angles_deg: ArrayLike,
        readings_um: ArrayLike,
        sigmas_um: ArrayLike | float | None = None,
        times_s: ArrayLike | None = None,
        axes: Sequence[str] | None = None,
    ) -> RunoutModel:
        """Fit the harmonic coefficients of every axis from a calibration sweep.

        Parameters
        ----------
        angles_deg : array_like, shape (n,)
            Rotation angle of each reading, degrees (unwrapped or wrapped).
        readings_um : array_like, shape (n,) or (n, n_axes)
            Displacement readings in um; NaN marks a missing reading (excluded per axis).
        sigmas_um : float or array_like, optional
            Reading standard deviations: scalar, ``(n,)``, ``(n_axes,)`` or ``(n, n_axes)``.
            Given, the covariance is absolute; omitted, readings are equally weighted and the
            covariance is scaled by the residual variance.
        times_s : array_like, shape (n,), optional
            Time of each reading (s). Omitted, readings are taken as equally spaced in order.
        axes : sequence of str, optional
            Axis names; required unless there are 3 axes (then ``("x", "y", "z")``).

        Returns
        -------
        RunoutModel
            ``self``, fitted.

        Raises
        ------
        ValueError
            On malformed inputs, or when the angle coverage cannot determine the requested
            harmonics (too few points or distinct angles, or condition number above
            ``max_condition``).
        """
        angles = np.asarray(angles_deg, dtype=np.float64)
        if angles.ndim != 1 or angles.size == 0:
            raise ValueError(f"angles_deg must be a non-empty 1-D array, got shape {angles.shape}")
        if not np.all(np.isfinite(angles)):
            raise ValueError("angles_deg must all be finite")
        n = angles.size
        y = np.asarray(readings_um, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(
                f"readings_um must have shape (n,) or (n, n_axes) with n={n}, got "
                f"{np.shape(readings_um)}"
            )
        n_axes = y.shape[1]
        axes_t = self._resolve_axes(axes, n_axes)
        sig = self._resolve_sigmas(sigmas_um, n, n_axes)
        t = self._resolve_times(times_s, n)

        t_ref = 0.5 * (t.max() + t.min())
        t_scale = 0.5 * float(np.ptp(t)) or 1.0
        tau = (t - t_ref) / t_scale
        design = np.column_stack(
            [np.ones(n), harmonic_basis(angles, self.n_harmonics)]
            + [tau**d for d in range(1, self.time_degree + 1)]
        )
        p = design.shape[1]

        coef = np.empty((n_axes, p))
        cov = np.empty((n_axes, p, p))
        n_points: list[int] = []
        rms: list[float] = []
        chi2: list[float] = []
        worst_condition = 1.0
        for a in range(n_axes):
            valid = np.isfinite(y[:, a])
            name = axes_t[a]
            self._check_coverage(name, angles[valid], t[valid], p)
            w = 1.0 / sig[valid, a]
            aw = design[valid] * w[:, None]
            yw = y[valid, a] * w
            # Equilibrate columns so the condition number measures geometry, not units.
            scale = np.linalg.norm(aw, axis=0)
            u, s, vt = np.linalg.svd(aw / scale, full_matrices=False)
            condition = float(s[0] / s[-1]) if s[-1] > 0 else math.inf
            if not condition <= self.max_condition:
                raise ValueError(
                    f"axis {name!r}: angle coverage cannot determine {self.n_harmonics} "
                    f"harmonics{' with a time term' if self.time_degree else ''}: condition "
                    f"number {condition:.3g} > max_condition {self.max_condition:.3g} (span "
                    f"{np.ptp(angles[valid]):.1f} deg, largest gap "
                    f"{largest_angular_gap_deg(angles[valid]):.1f} deg). Sweep a full turn, "
                    "forward and back, or lower n_harmonics / time_degree."
                )
            worst_condition = max(worst_condition, condition)
            beta = (vt.T @ ((u.T @ yw) / s)) / scale
            cov_a = (vt.T / s**2) @ vt / np.outer(scale, scale)
            resid = y[valid, a] - design[valid] @ beta
            dof = int(valid.sum()) - p
            wrss = float(np.sum((resid * w) ** 2))
            if sigmas_um is None:
                # Unknown noise: estimate it from the residual (needs redundancy).
                if dof < 1:
                    raise ValueError(
                        f"axis {name!r}: {valid.sum()} readings for {p} parameters leave no "
                        "residual to estimate the noise; give sigmas_um or more readings"
                    )
                cov_a = cov_a * (wrss / dof)
            elif dof >= 1:
                chi2.append(wrss / dof)
            else:
                chi2.append(math.nan)
            coef[a] = beta
            cov[a] = 0.5 * (cov_a + cov_a.T)
            n_points.append(int(valid.sum()))
            rms.append(float(np.sqrt(np.mean(resid**2))))

        gap = largest_angular_gap_deg(angles)
        notes: list[str] = []
        if worst_condition > self.warn_condition:
            notes.append(
                f"condition number {worst_condition:.3g} > {self.warn_condition:.3g}: reading "
                "noise is strongly amplified into the coefficients (widen the sweep)"
            )
        if gap > 360.0 / (2 * self.n_harmonics + 1):
            notes.append(
                f"largest angular gap {gap:.1f} deg exceeds 360/(2N+1) = "
                f"{360.0 / (2 * self.n_harmonics + 1):.1f} deg: harmonics are extrapolated "
                "across the gap"
            )
        for note in notes:
            warnings.warn(note, CoverageWarning, stacklevel=2)

        r = 1 + 2 * self.n_harmonics
        self._axes = axes_t
        self._coefficients = coef[:, :r].copy()
        self._covariance = cov[:, :r, :r].copy()
        self._diagnostics = RunoutDiagnostics(
            n_points=n_points,
            rms_residual_um=rms,
            reduced_chi2=None if sigmas_um is None else chi2,
            condition_number=worst_condition,
            largest_gap_deg=gap,
            angle_span_deg=float(np.ptp(angles)),
            t_ref_s=float(t_ref),
            t_scale_s=float(t_scale),
            time_coefficients_um=coef[:, r:].tolist(),
            warnings=notes,
        )
        return self

    def _resolve_axes(self, axes: Sequence[str] | None, n_axes: int) -> tuple[str, ...]:
        if axes is None:
            if n_axes != len(_DEFAULT_AXES):
                raise ValueError(f"readings have {n_axes} axes: name them with axes=[...]")
            return _DEFAULT_AXES
        names = tuple(axes)
        if len(names) != n_axes or not all(isinstance(a, str) and a for a in names):
            raise ValueError(f"axes must be {n_axes} non-empty strings, got {axes!r}")
        if len(set(names)) != n_axes:
            raise ValueError(f"axes names must be unique, got {axes!r}")
        return names

    @staticmethod
    def _resolve_sigmas(
        sigmas_um: ArrayLike | float | None, n: int, n_axes: int
    ) -> NDArray[np.float64]:
        if sigmas_um is None:
            return np.ones((n, n_axes))
        sig = np.asarray(sigmas_um, dtype=np.float64)
        if sig.ndim == 1 and sig.shape[0] == n:
            sig = sig[:, None]
        try:
            sig = np.broadcast_to(sig, (n, n_axes))
        except ValueError:
            raise ValueError(
                f"sigmas_um must be a scalar, (n,) or (n, n_axes) = ({n}, {n_axes}), got "
                f"shape {np.shape(sigmas_um)}"
            ) from None
        if not np.all(np.isfinite(sig) & (sig > 0)):
            raise ValueError("sigmas_um must all be finite and > 0")
        return sig

    def _resolve_times(self, times_s: ArrayLike | None, n: int) -> NDArray[np.float64]:
        if times_s is None:
            return np.arange(n, dtype=np.float64)
        t = np.asarray(times_s, dtype=np.float64)
        if t.shape != (n,):
            raise ValueError(f"times_s must have shape ({n},), got {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("times_s must all be finite")
        return t

    def _check_coverage(
        self, name: str, angles: NDArray[np.float64], t: NDArray[np.float64], p: int
    ) -> None:
        if angles.size < p:
            raise ValueError(
                f"axis {name!r}: {angles.size} finite readings cannot determine {p} parameters "
                f"(offset + {self.n_harmonics} harmonics + {self.time_degree} time terms)"
            )
        distinct = np.unique(np.round(np.mod(angles, 360.0), 9)).size
        needed = 2 * self.n_harmonics + 1
        if distinct < needed:
            raise ValueError(
                f"axis {name!r}: angle coverage cannot determine {self.n_harmonics} harmonics: "
                f"{distinct} distinct angles (mod 360), at least {needed} needed"
            )
        if self.time_degree and np.ptp(t) == 0:
            raise ValueError(f"axis {name!r}: all readings at one time; use time_degree=0")

    # ------------------------------------------------------------------ prediction
    def predict(self, angle_deg: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Runout (offset + harmonics) and its 1-sigma uncertainty at given angles.

        Parameters
        ----------
        angle_deg : float or array_like
            Angle(s) in degrees, shape ``S``.

        Returns
        -------
        mean_um, std_um : numpy.ndarray
            Shape ``S + (n_axes,)``, micrometres.
        """
        self._require_fit()
        angles = np.asarray(angle_deg, dtype=np.float64)
        if not np.all(np.isfinite(angles)):
            raise ValueError("angle_deg must be finite")
        basis = np.concatenate(
            [np.ones((*angles.shape, 1)), harmonic_basis(angles, self.n_harmonics)], axis=-1
        )
        mean = basis @ self.coefficients.T
        var = np.einsum("...p,apq,...q->...a", basis, self._covariance, basis)
        return mean, np.sqrt(np.maximum(var, 0.0))

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe representation (plain lists and numbers, no NaN).

        Returns
        -------
        dict
            Keys ``format``, ``version``, ``n_harmonics``, ``time_degree``, ``max_condition``,
            ``warn_condition``, ``axes``, ``coefficients``, ``covariance``, ``diagnostics``.
        """
        self._require_fit()
        assert self._coefficients is not None and self._covariance is not None
        return _json_safe(
            {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "n_harmonics": self.n_harmonics,
                "time_degree": self.time_degree,
                "max_condition": self.max_condition,
                "warn_condition": self.warn_condition,
                "axes": list(self.axes),
                "coefficients": self._coefficients.tolist(),
                "covariance": self._covariance.tolist(),
                "diagnostics": asdict(self.diagnostics),
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunoutModel:
        """Rebuild a fitted model from :meth:`to_dict` output.

        Parameters
        ----------
        data : dict
            As produced by :meth:`to_dict` (e.g. after a JSON round trip).

        Returns
        -------
        RunoutModel
            Fitted model.

        Raises
        ------
        ValueError
            When the format, version or array shapes do not match.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a serialised RunoutModel (expected format {_FORMAT!r})")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"unsupported RunoutModel version {data.get('version')!r}, expected "
                f"{_FORMAT_VERSION}"
            )
        try:
            model = cls(
                n_harmonics=int(data["n_harmonics"]),
                time_degree=int(data["time_degree"]),
                max_condition=float(data["max_condition"]),
                warn_condition=float(data["warn_condition"]),
            )
            axes = model._resolve_axes(data["axes"], len(data["axes"]))
            coef = np.asarray(data["coefficients"], dtype=np.float64)
            cov = np.asarray(data["covariance"], dtype=np.float64)
            diag = dict(data["diagnostics"])
            diag["condition_number"] = _float_or_inf(diag["condition_number"])
            if diag.get("reduced_chi2") is not None:
                diag["reduced_chi2"] = [_float_or_nan(v) for v in diag["reduced_chi2"]]
            diagnostics = RunoutDiagnostics(**diag)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed RunoutModel dict: {exc!r}") from exc
        r = model.n_params
        if coef.shape != (len(axes), r) or cov.shape != (len(axes), r, r):
            raise ValueError(
                f"coefficients/covariance shapes {coef.shape}/{cov.shape} do not match "
                f"{len(axes)} axes x {r} parameters"
            )
        if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(cov))):
            raise ValueError("coefficients and covariance must be finite")
        model._axes = axes
        model._coefficients = coef
        model._covariance = cov
        model._diagnostics = diagnostics
        return model

    def __repr__(self) -> str:
        state = f"axes={self._axes}" if self.is_fitted else "unfitted"
        return f"RunoutModel(n_harmonics={self.n_harmonics}, {state})"


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN / Infinity)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _float_or_nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _float_or_inf(value: Any) -> float:
    return math.inf if value is None else float(value)
