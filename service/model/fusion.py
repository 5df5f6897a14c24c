"""Online fusion of image, interferometer and microscope drift feeds; next-exposure prediction.

Model
-----
Per lab axis ``a`` (independent axes, so one small filter per axis, vectorised across axes)
the state is::

    [c_1, s_1, ..., c_N, s_N,  T, V,  B_1 .. B_m]

* ``c_k, s_k``: runout harmonic coefficients, ``runout(theta) = sum c_k cos k theta + s_k sin
  k theta``. The runout's constant offset is not separable from the thermal offset and lives
  in ``T``.
* ``T, V``: thermal offset and velocity of the *sample*, a white-noise-acceleration model
  (spectral density ``thermal_accel_psd``) that follows exponential or polynomial warm-ups.
* ``B_j``: one bias per source configured with ``has_bias`` (default: the interferometer),
  a random walk. The interferometer sees ``runout + stage thermal``; ``B`` is the stage minus
  sample thermal difference (sample-holder drift, laser dead path), observable only through
  the other feeds.

Measurement rows: image and microscope ``z = h(theta) . c + T``; interferometer
``z = h(theta) . c + T + B``. The drift predicted for an exposure is ``h(theta) . c + T``.

Why a Kalman filter (and not a robust sliding-window least squares)
---------------------------------------------------------------------
* Latency and cost: one update is a propagation and a scalar-measurement update of an
  ``(2N + 2 + m)``-state filter per axis, O(n^2) with n ~ 11: tens of microseconds, constant,
  independent of history length. A sliding-window IRLS re-solves a window (hundreds of rows,
  several iterations) for each frame, and its cost grows with the window needed to pin down
  the harmonics over a rotation.
* Missing or stale feeds: a feed that stops simply stops updating; process noise makes the
  predicted uncertainty grow with the time since the last accepted measurement, which the
  feedback interlocks can act on. A window fit needs ad-hoc rules for empty windows and gives
  no calibrated staleness.
* Priors: a calibrated :class:`~tomolock.service.model.runout.RunoutModel` enters as a
  Gaussian prior (mean and covariance) on the harmonic states; without it, a broad prior lets
  images alone converge (the filter is then recursive least squares on the harmonics).
* Robustness: Huber weights tolerate outliers but still let garbage pull the estimate;
  innovation gating (Mahalanobis distance of the innovation against its predicted covariance,
  chi-square threshold) rejects a garbage frame *before* it touches the state, so the state
  is bit-identical after a rejected measurement. Gating has two known weaknesses, handled
  explicitly with one consensus rule: (1) while the state is still broad, the first frame
  could be garbage and seed it, so a source is fused only once ``recovery_count`` of its
  measurements agree (lie on one line in time within their noise); (2) a real step would
  be locked out forever, so after ``recovery_count`` consistent gated rejections the step is
  accepted: the covariance of the thermal offset and velocity (or of the source's bias) is
  inflated by the step and slope seen and the consistent measurements are fused.

The price of the Kalman filter is model-dependence: unmodelled motion (harmonics above N,
non-smooth thermal drift) must fit in the process noise. ``thermal_accel_psd`` defaults to
1e-6 um^2/s^3, measured to keep the next-exposure error at ~0.5 nm even when the true runout
has harmonics up to 4 and the model only 1, at the cost of ~0.1-0.2 nm in the matched case.

Measurement noise
-----------------
Each measurement carries ``sigma_um`` (used as given) or a ``confidence`` c in [0, 1] mapped
to ``sigma = sigma_um(source) / c ** confidence_exponent`` (defaults: image 0.0006 um, i.e.
0.02 px at 30 nm; interferometer 0.002 um; microscope 0.02 um; exponent 1). Measurements with
``c < min_confidence`` (beam dump, shutter closed: c = 0; microscope quality flag False) are
rejected without touching the state.

White noise the configuration misses (sample jitter / vibration, optimistic sigmas) is
learned per source from second differences of its own readings (model-free, so a wrong
state cannot feed back into it) and added to its variance. Without it, a 0.6 nm image sigma
against 5 nm of real jitter made the gate/recovery logic diverge by micrometres.

Measurements older than the filter time (an image processed after newer interferometer
samples were fused) are applied with the retrodicted row ``T - V lag`` and the process noise
accumulated over the lag added to their variance (the standard one-step approximation for
out-of-sequence measurements); they never move the filter time backwards.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import chi2

from .harmonics import harmonic_basis
from .runout import RunoutModel

__all__ = [
    "REJECTION_REASONS",
    "SOURCES",
    "DriftFusion",
    "FusionConfig",
    "Measurement",
    "Prediction",
    "SourceConfig",
    "UpdateResult",
    "default_sources",
]

SOURCES = ("image", "interferometer", "microscope")
"""Standard measurement sources (a config may define more)."""

_MIN_NOISE_SAMPLES = 10
_NOISE_EVERY = 5  # re-estimate the excess noise every this many readings of a source
_CHI2_1_MEDIAN = float(chi2.median(1))  # 0.4549...

REJECTION_REASONS = ("low_confidence", "no_values", "too_old", "initialising", "gated")
"""Why :meth:`DriftFusion.update` may reject a measurement."""


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SourceConfig:
    """Noise and bias model of one measurement source.

    Parameters
    ----------
    sigma_um : float
        Measurement standard deviation (um) at confidence 1.
    confidence_exponent : float
        ``sigma = sigma_um / confidence ** confidence_exponent``.
    min_confidence : float
        Measurements with a lower confidence are rejected (``"low_confidence"``).
    has_bias : bool
        Give the source its own offset state: for a sensor that does not see the sample's
        own thermal drift (interferometer), or whose zero differs from the images'. A source
        without bias must share the images' zero, or the two will keep re-initialising the
        thermal offset against each other.
    bias_random_walk_um2_per_s : float
        Random-walk intensity of the bias (variance growth per second).
    initial_bias_std_um : float
        Prior standard deviation of the bias.
    """

    sigma_um: float
    confidence_exponent: float = 1.0
    min_confidence: float = 0.05
    has_bias: bool = False
    bias_random_walk_um2_per_s: float = 1e-5
    initial_bias_std_um: float = 10.0

    def __post_init__(self) -> None:
        _require_positive("sigma_um", self.sigma_um)
        _require_positive("confidence_exponent", self.confidence_exponent)
        if not (math.isfinite(self.min_confidence) and 0.0 < self.min_confidence <= 1.0):
            raise ValueError(f"min_confidence must be in (0, 1], got {self.min_confidence}")
        _require_non_negative("bias_random_walk_um2_per_s", self.bias_random_walk_um2_per_s)
        _require_positive("initial_bias_std_um", self.initial_bias_std_um)


def default_sources() -> dict[str, SourceConfig]:
    """Default noise models: image 0.6 nm, interferometer 2 nm (biased), microscope 20 nm.

    Returns
    -------
    dict of str to SourceConfig
        Keyed by source name.
    """
    return {
        "image": SourceConfig(sigma_um=0.0006),
        "interferometer": SourceConfig(sigma_um=0.002, has_bias=True),
        "microscope": SourceConfig(sigma_um=0.02),
    }


@dataclass(frozen=True)
class FusionConfig:
    """Configuration of :class:`DriftFusion` (units: um, s).

    Parameters
    ----------
    axes : tuple of str
        Lab axes, in the order of every measurement's ``values_um``.
    n_harmonics : int
        Runout harmonics modelled (1..N).
    sources : mapping of str to SourceConfig
        Noise / bias model per source name.
    thermal_accel_psd_um2_per_s3 : float
        Spectral density of the white acceleration driving the thermal velocity.
    harmonic_random_walk_um2_per_s : float
        Variance growth per second of each harmonic coefficient (slowly changing runout).
    initial_harmonic_std_um : float
        Prior standard deviation of the harmonics without a runout calibration.
    runout_prior_floor_std_um : float
        Added (in quadrature) to a calibrated runout prior, so small changes since the
        calibration can still be learned.
    initial_offset_std_um : float
        Prior standard deviation of the thermal offset.
    initial_velocity_std_um_per_s : float
        Prior standard deviation of the thermal velocity.
    gate_probability : float
        Chi-square probability of the innovation gate (per measurement, dof = valid axes).
    recovery_count : int
        Consistent gated rejections of one source that are accepted as a real step.
    recovery_window : int
        How many recent consecutive gated rejections are searched for a consistent step.
    max_lag_s : float
        Measurements older than the filter time by more than this are rejected.
    noise_window : int
        Recent readings per source used to learn excess white noise (0 = do not learn).
    """

    axes: tuple[str, ...] = ("x", "y", "z")
    n_harmonics: int = 4
    sources: Mapping[str, SourceConfig] = field(default_factory=default_sources)
    thermal_accel_psd_um2_per_s3: float = 1e-6
    harmonic_random_walk_um2_per_s: float = 0.0
    initial_harmonic_std_um: float = 5.0
    runout_prior_floor_std_um: float = 0.002
    initial_offset_std_um: float = 10.0
    initial_velocity_std_um_per_s: float = 0.01
    gate_probability: float = 0.9999
    recovery_count: int = 3
    recovery_window: int = 8
    max_lag_s: float = 5.0
    noise_window: int = 100

    def __post_init__(self) -> None:
        axes = tuple(self.axes)
        if (
            not axes
            or not all(isinstance(a, str) and a for a in axes)
            or len(set(axes)) != len(axes)
        ):
            raise ValueError(f"axes must be unique non-empty strings, got {self.axes!r}")
        object.__setattr__(self, "axes", axes)
        if isinstance(self.n_harmonics, bool) or not isinstance(self.n_harmonics, int):
            raise TypeError(f"n_harmonics must be an int, got {self.n_harmonics!r}")
        if not 1 <= self.n_harmonics <= 16:
            raise ValueError(f"n_harmonics must be in 1..16, got {self.n_harmonics}")
        if not self.sources:
            raise ValueError("sources must define at least one source")
        for name, src in self.sources.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"source names must be non-empty strings, got {name!r}")
            if not isinstance(src, SourceConfig):
                raise TypeError(f"sources[{name!r}] must be a SourceConfig, got {src!r}")
        _require_positive("thermal_accel_psd_um2_per_s3", self.thermal_accel_psd_um2_per_s3)
        _require_non_negative("harmonic_random_walk_um2_per_s", self.harmonic_random_walk_um2_per_s)
        _require_positive("initial_harmonic_std_um", self.initial_harmonic_std_um)
        _require_non_negative("runout_prior_floor_std_um", self.runout_prior_floor_std_um)
        _require_positive("initial_offset_std_um", self.initial_offset_std_um)
        _require_positive("initial_velocity_std_um_per_s", self.initial_velocity_std_um_per_s)
        if not 0.5 < self.gate_probability < 1.0:
            raise ValueError(f"gate_probability must be in (0.5, 1), got {self.gate_probability}")
        if isinstance(self.recovery_count, bool) or not isinstance(self.recovery_count, int):
            raise TypeError(f"recovery_count must be an int, got {self.recovery_count!r}")
        if not 2 <= self.recovery_count <= self.recovery_window:
            raise ValueError(
                f"need 2 <= recovery_count ({self.recovery_count}) <= recovery_window "
                f"({self.recovery_window})"
            )
        _require_positive("max_lag_s", self.max_lag_s)
        if isinstance(self.noise_window, bool) or not isinstance(self.noise_window, int):
            raise TypeError(f"noise_window must be an int, got {self.noise_window!r}")
        if self.noise_window != 0 and self.noise_window < _MIN_NOISE_SAMPLES:
            raise ValueError(
                f"noise_window must be 0 or >= {_MIN_NOISE_SAMPLES}, got {self.noise_window}"
            )


# ---------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Measurement:
    """One drift reading of one source.

    Parameters
    ----------
    source : str
        ``"image"``, ``"interferometer"``, ``"microscope"`` (or a source added in the config).
    t : float
        Time of the reading (s, any epoch shared by all feeds; exposure mid-time for images).
    angle_deg : float
        Rotation angle at the reading (degrees).
    values_um : array_like
        Displacement per configured axis, um; NaN for axes the source does not measure.
        Image and microscope readings are sample drift (stage offset already removed);
        interferometer readings are stage runout plus stage thermal drift.
    sigma_um : float or array_like, optional
        Standard deviation (scalar or per axis). Given, it overrides the confidence mapping
        (the confidence still rejects below the source's ``min_confidence``).
    confidence : float
        In [0, 1]; mapped to a standard deviation (see module docstring). 0 = unusable.
    """

    source: str
    t: float
    angle_deg: float
    values_um: NDArray[np.float64]
    sigma_um: NDArray[np.float64] | float | None = None
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a non-empty string, got {self.source!r}")
        if not math.isfinite(self.t):
            raise ValueError(f"t must be finite, got {self.t}")
        if not math.isfinite(self.angle_deg):
            raise ValueError(f"angle_deg must be finite, got {self.angle_deg}")
        values = np.array(self.values_um, dtype=np.float64).reshape(-1)
        if values.size == 0 or np.any(np.isinf(values)):
            raise ValueError("values_um must be a non-empty sequence of finite numbers or NaN")
        values.flags.writeable = False
        object.__setattr__(self, "values_um", values)
        if not (math.isfinite(self.confidence) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")
        if self.sigma_um is not None:
            sigma = np.array(self.sigma_um, dtype=np.float64)
            if sigma.ndim > 1 or not np.all(np.isfinite(sigma) & (sigma > 0)):
                raise ValueError(f"sigma_um must be finite and > 0, got {self.sigma_um!r}")
            sigma.flags.writeable = False
            object.__setattr__(self, "sigma_um", sigma)

    @classmethod
    def image(
        cls,
        t: float,
        angle_deg: float,
        values_um: ArrayLike,
        confidence: float,
        sigma_um: float | ArrayLike | None = None,
    ) -> Measurement:
        """Image drift estimate (px already converted to um, stage offset removed)."""
        return cls("image", t, angle_deg, values_um, sigma_um, confidence)  # type: ignore[arg-type]

    @classmethod
    def interferometer(
        cls,
        t: float,
        angle_deg: float,
        values_um: ArrayLike,
        sigma_um: float | ArrayLike | None = None,
        confidence: float = 1.0,
    ) -> Measurement:
        """Interferometer reading (nm already converted to um); confidence 0 = signal lost."""
        return cls("interferometer", t, angle_deg, values_um, sigma_um, confidence)  # type: ignore[arg-type]

    @classmethod
    def microscope(
        cls,
        t: float,
        angle_deg: float,
        values_um: ArrayLike,
        quality: bool,
        sigma_um: float | ArrayLike | None = None,
    ) -> Measurement:
        """Visible-light microscope tracking; ``quality=False`` maps to confidence 0."""
        return cls("microscope", t, angle_deg, values_um, sigma_um, 1.0 if quality else 0.0)  # type: ignore[arg-type]


@dataclass(frozen=True)
class UpdateResult:
    """Outcome of :meth:`DriftFusion.update`.

    Attributes
    ----------
    accepted : bool
        Whether the measurement was fused.
    reason : str
        ``"accepted"``; ``"confirmed"`` (first fusion of a source, with the earlier
        measurements it agreed with); ``"recovered"`` (accepted as a real step, with the
        consistent rejected measurements before it); or one of :data:`REJECTION_REASONS`.
    source : str
        The measurement's source.
    t : float
        The measurement's time.
    innovation_um : tuple of float
        Measurement minus prediction per axis (NaN where not computed).
    mahalanobis2 : float
        Squared Mahalanobis distance of the innovation (NaN where not computed).
    gate2 : float
        Threshold the distance was compared with (NaN where not computed).
    """

    accepted: bool
    reason: str
    source: str
    t: float
    innovation_um: tuple[float, ...]
    mahalanobis2: float = math.nan
    gate2: float = math.nan


@dataclass(frozen=True)
class Prediction:
    """Predicted sample drift (runout + thermal) at an angle and time.

    Attributes
    ----------
    mean_um, std_um : numpy.ndarray
        Per axis (config order), micrometres.
    t : float
        Time predicted for (s).
    angle_deg : float
        Angle predicted for (degrees).
    axes : tuple of str
        Axis names.
    """

    mean_um: NDArray[np.float64]
    std_um: NDArray[np.float64]
    t: float
    angle_deg: float
    axes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form, ``{"t", "angle_deg", "mean_um": {axis: v}, "std_um": {axis: v}}``."""
        return {
            "t": self.t,
            "angle_deg": self.angle_deg,
            "mean_um": {
                a: _finite_or_none(v) for a, v in zip(self.axes, self.mean_um, strict=True)
            },
            "std_um": {a: _finite_or_none(v) for a, v in zip(self.axes, self.std_um, strict=True)},
        }


@dataclass
class _SourceStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    recoveries: int = 0
    reused: int = 0
    confirmed: bool = False
    last_accepted_t: float | None = None
    # Consecutive rejected (gated / initialising) measurements, kept to detect real steps.
    pending: deque[_Pending] = field(default_factory=deque)
    # Recent readings (t, values, configured variance) for the model-free noise estimate.
    noise: deque[tuple[float, NDArray[np.float64], NDArray[np.float64]]] = field(
        default_factory=deque
    )
    noise_updates: int = 0
    excess_var: NDArray[np.float64] | float = 0.0


@dataclass(frozen=True)
class _Pending:
    m: Measurement
    r: NDArray[np.float64]


@dataclass
class _Candidate:
    """A measurement's prediction: the propagated state and its innovation statistics."""

    x: NDArray[np.float64]
    p: NDArray[np.float64]
    h: NDArray[np.float64]
    ph: NDArray[np.float64]
    s: NDArray[np.float64]
    innov: NDArray[np.float64]
    r: NDArray[np.float64]
    valid: NDArray[np.bool_]


def _weighted_line(
    tau: NDArray[np.float64], y: NDArray[np.float64], var: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-column weighted fit ``y = offset + slope tau`` (NaN rows ignored; flat if one time)."""
    w = np.where(np.isnan(y), 0.0, 1.0 / var)
    y0 = np.nan_to_num(y)
    sw = w.sum(axis=0)
    safe = np.where(sw > 0, sw, 1.0)
    t_mean = (w * tau[:, None]).sum(axis=0) / safe
    y_mean = (w * y0).sum(axis=0) / safe
    dt = tau[:, None] - t_mean
    stt = (w * dt**2).sum(axis=0)
    slope = np.where(stt > 0, (w * dt * (y0 - y_mean)).sum(axis=0) / np.where(stt > 0, stt, 1), 0)
    offset = y_mean - slope * t_mean
    return np.where(sw > 0, offset, np.nan), np.where(sw > 0, slope, np.nan)


# ---------------------------------------------------------------------------- the filter
class DriftFusion:
    """Kalman filter fusing drift feeds per axis; predicts the drift at the next exposure.

    Parameters
    ----------
    config : FusionConfig, optional
        Model and noise configuration (defaults: axes x, y, z; 4 harmonics).
    runout : RunoutModel, optional
        Calibrated runout used as the prior on the harmonic coefficients of the axes it
        shares (by name) with ``config.axes``; harmonics beyond its order keep the broad prior.

    Examples
    --------
    >>> fusion = DriftFusion(FusionConfig(), runout=calibrated)
    >>> fusion.update(Measurement.image(t, angle, [dx_um, np.nan, dz_um], confidence=0.9))
    >>> pred = fusion.predict(next_angle, next_t)
    >>> setpoint_um = -pred.mean_um
    """

    def __init__(self, config: FusionConfig | None = None, runout: RunoutModel | None = None):
        self.config = config if config is not None else FusionConfig()
        cfg = self.config
        self.n_axes = len(cfg.axes)
        n_h = 2 * cfg.n_harmonics
        self._i_t = n_h
        self._i_v = n_h + 1
        biased = [name for name, src in cfg.sources.items() if src.has_bias]
        self._bias_index = {name: n_h + 2 + j for j, name in enumerate(biased)}
        self.n_states = n_h + 2 + len(biased)
        self._gate_sigma2_1dof = float(chi2.ppf(cfg.gate_probability, 1))
        self._gate2 = np.array(
            [math.nan]
            + [float(chi2.ppf(cfg.gate_probability, k)) for k in range(1, 1 + self.n_axes)]
        )
        # Constant process-noise diagonal of the random-walk states, per second.
        self._q_rw = np.zeros(self.n_states)
        self._q_rw[:n_h] = cfg.harmonic_random_walk_um2_per_s
        for name, i in self._bias_index.items():
            self._q_rw[i] = cfg.sources[name].bias_random_walk_um2_per_s
        self._x0, self._p0 = self._prior(runout)
        self._from_runout = runout is not None
        self.reset()

    # ------------------------------------------------------------------ set-up
    def _prior(self, runout: RunoutModel | None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        cfg = self.config
        n_h = 2 * cfg.n_harmonics
        x0 = np.zeros((self.n_axes, self.n_states))
        var = np.zeros(self.n_states)
        var[:n_h] = cfg.initial_harmonic_std_um**2
        var[self._i_t] = cfg.initial_offset_std_um**2
        var[self._i_v] = cfg.initial_velocity_std_um_per_s**2
        for name, i in self._bias_index.items():
            var[i] = cfg.sources[name].initial_bias_std_um ** 2
        p0 = np.broadcast_to(np.diag(var), (self.n_axes, self.n_states, self.n_states)).copy()
        if runout is None:
            return x0, p0
        if not isinstance(runout, RunoutModel):
            raise TypeError(f"runout must be a RunoutModel, got {type(runout).__name__}")
        if not runout.is_fitted:
            raise ValueError("runout model is not fitted")
        shared = [a for a in cfg.axes if a in runout.axes]
        if not shared:
            raise ValueError(
                f"runout model axes {runout.axes} share none with the fusion axes {cfg.axes}"
            )
        m = 2 * min(cfg.n_harmonics, runout.n_harmonics)
        coef = runout.harmonic_coefficients
        cov = runout.harmonic_covariance
        floor = cfg.runout_prior_floor_std_um**2 * np.eye(m)
        for a in shared:
            i, j = cfg.axes.index(a), runout.axes.index(a)
            x0[i, :m] = coef[j, :m]
            p0[i, :m, :m] = cov[j, :m, :m] + floor
        return x0, p0

    def reset(self) -> None:
        """Forget all measurements and counters; return to the initial prior."""
        self._x = self._x0.copy()
        self._p = self._p0.copy()
        self._t: float | None = None
        self._stats = {name: _SourceStats() for name in self.config.sources}
        for stats in self._stats.values():
            stats.pending = deque(maxlen=self.config.recovery_window)
            stats.noise = deque(maxlen=max(self.config.noise_window, 1))
            stats.excess_var = np.zeros(self.n_axes)

    # ------------------------------------------------------------------ model pieces
    def _row(self, angle_deg: float, source: str | None, lag: float) -> NDArray[np.float64]:
        """Measurement row for ``source`` (None = the sample drift) ``lag`` s in the past."""
        h = np.zeros(self.n_states)
        h[: self._i_t] = harmonic_basis(angle_deg, self.config.n_harmonics)
        h[self._i_t] = 1.0
        h[self._i_v] = -lag
        if source in self._bias_index:
            h[self._bias_index[source]] = 1.0
        return h

    def _lag_variance(self, h: NDArray[np.float64], lag: float) -> float:
        """Process noise accumulated over ``lag`` seen through ``h`` (one-step OOSM approx)."""
        if lag <= 0.0:
            return 0.0
        q = self.config.thermal_accel_psd_um2_per_s3
        return q * lag**3 / 3.0 + float(np.dot(h * h, self._q_rw)) * lag

    def _propagated(self, t: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """State and covariance propagated to ``t`` >= filter time (not committed)."""
        x = self._x.copy()
        p = self._p.copy()
        if self._t is None or t <= self._t:
            return x, p
        dt = t - self._t
        it, iv = self._i_t, self._i_v
        x[:, it] += dt * x[:, iv]
        # F P F^T with F = I + dt e_T e_V^T: rows then columns.
        p[:, it, :] += dt * p[:, iv, :]
        p[:, :, it] += dt * p[:, :, iv]
        q = self.config.thermal_accel_psd_um2_per_s3
        p[:, it, it] += q * dt**3 / 3.0
        p[:, it, iv] += q * dt**2 / 2.0
        p[:, iv, it] += q * dt**2 / 2.0
        p[:, iv, iv] += q * dt
        idx = np.arange(self.n_states)
        p[:, idx, idx] += self._q_rw * dt
        return x, p

    def _sigma(self, m: Measurement, src: SourceConfig) -> NDArray[np.float64]:
        if m.sigma_um is not None:
            sigma = np.broadcast_to(np.asarray(m.sigma_um), (self.n_axes,))
        else:
            sigma = np.full(self.n_axes, src.sigma_um / m.confidence**src.confidence_exponent)
        return sigma

    # ------------------------------------------------------------------ update
    def update(self, measurement: Measurement) -> UpdateResult:
        """Fuse one measurement, or reject it leaving the state untouched.

        A source is fused only once ``recovery_count`` of its measurements agree with each
        other (``"initialising"`` until then), so garbage cannot seed the state. Afterwards a
        measurement whose innovation fails the chi-square gate is rejected (``"gated"``) and
        kept aside; when ``recovery_count`` of the kept ones (the newest included) lie on one
        line in time within their noise, they are a real step: the thermal offset and velocity
        (or the source's bias) covariance is inflated by the step seen and they are fused
        (``"recovered"``).

        Parameters
        ----------
        measurement : Measurement
            The reading; ``values_um`` must have one entry per configured axis.

        Returns
        -------
        UpdateResult
            ``accepted`` / ``confirmed`` / ``recovered``, or rejected with the reason.

        Raises
        ------
        TypeError
            Not a Measurement.
        ValueError
            Unknown source, wrong number of values or sigmas.
        """
        m = measurement
        if not isinstance(m, Measurement):
            raise TypeError(f"update() needs a Measurement, got {type(m).__name__}")
        src = self.config.sources.get(m.source)
        if src is None:
            raise ValueError(
                f"unknown source {m.source!r}; configured: {sorted(self.config.sources)}"
            )
        if m.values_um.shape != (self.n_axes,):
            raise ValueError(
                f"{m.source} measurement has {m.values_um.size} values, expected one per axis "
                f"{self.config.axes} (NaN for unmeasured axes)"
            )
        if m.sigma_um is not None and np.size(m.sigma_um) not in (1, self.n_axes):
            raise ValueError(f"sigma_um must be a scalar or have {self.n_axes} entries")
        stats = self._stats[m.source]

        if m.confidence < src.min_confidence:
            return self._reject(stats, m, "low_confidence")
        valid = np.isfinite(m.values_um)
        n_valid = int(valid.sum())
        if n_valid == 0:
            return self._reject(stats, m, "no_values")
        if self._t is not None and self._t - m.t > self.config.max_lag_s:
            return self._reject(stats, m, "too_old")

        var = self._sigma(m, src) ** 2
        self._learn_noise(stats, m, var)
        r = var + stats.excess_var
        cand = self._innovation(m, r)
        innov_t = tuple(float(v) for v in cand.innov)
        d2 = float(np.sum(cand.innov[valid] ** 2 / cand.s[valid]))
        gate2 = float(self._gate2[n_valid])
        if stats.confirmed and d2 <= gate2:
            self._commit(m, cand)
            stats.accepted += 1
            stats.pending.clear()
            return UpdateResult(True, "accepted", m.source, m.t, innov_t, d2, gate2)

        # Evidence older than max_lag_s cannot be re-fused reliably: forget it.
        while self._t is not None and stats.pending:
            if self._t - stats.pending[0].m.t <= self.config.max_lag_s:
                break
            stats.pending.popleft()
        stats.pending.append(_Pending(m, r))
        found = self._consensus(list(stats.pending))
        if found is None:
            reason = "gated" if stats.confirmed else "initialising"
            return self._reject(stats, m, reason, innov_t, d2, gate2)

        members, step, slope = found
        # Let the data move what the step says moved: the source's own bias if it has one,
        # else the sample's thermal offset and velocity (only on axes the batch measured).
        if m.source in self._bias_index:
            i = self._bias_index[m.source]
            self._p[:, i, i] += step**2
        else:
            self._p[:, self._i_t, self._i_t] += step**2
            self._p[:, self._i_v, self._i_v] += slope**2
        for entry in sorted(members, key=lambda e: e.m.t):
            self._commit(entry.m, self._innovation(entry.m, entry.r))
        reason = "recovered" if stats.confirmed else "confirmed"
        stats.recoveries += reason == "recovered"
        stats.confirmed = True
        stats.accepted += 1
        stats.reused += len(members) - 1
        stats.pending.clear()
        return UpdateResult(True, reason, m.source, m.t, innov_t, d2, gate2)

    def _learn_noise(self, stats: _SourceStats, m: Measurement, var: NDArray[np.float64]) -> None:
        """Learn white noise the configuration misses (sample jitter, optimistic sigmas).

        Model-free, so a wrong state cannot feed back into it: the second difference
        ``z[i-1] - 2 z[i] + z[i+1]`` of a source's evenly spaced readings cancels the smooth
        drift and has variance ``var[i-1] + 4 var[i] + var[i+1] + 6 e`` for an extra white
        variance ``e``. ``e`` is estimated from the median of the squared differences (after
        clipping those beyond 5 sigma, i.e. garbage frames) and added to the source's
        variance. It only ever adds variance. On coarse angular steps (several degrees per
        reading) the runout curvature also shows up here, making the filter more cautious.
        """
        window = self.config.noise_window
        if window == 0:
            return
        stats.noise.append((m.t, m.values_um, var))
        stats.noise_updates += 1
        if len(stats.noise) < _MIN_NOISE_SAMPLES or stats.noise_updates % _NOISE_EVERY:
            return
        entries = sorted(stats.noise, key=lambda e: e[0])
        t = np.array([e[0] for e in entries])
        z = np.array([e[1] for e in entries])
        v = np.array([e[2] for e in entries])
        d2 = (z[:-2] - 2.0 * z[1:-1] + z[2:]) ** 2
        base = v[:-2] + 4.0 * v[1:-1] + v[2:]
        gap_a, gap_b = t[1:-1] - t[:-2], t[2:] - t[1:-1]
        even = (np.minimum(gap_a, gap_b) > 0) & (
            np.maximum(gap_a, gap_b) <= 2 * np.minimum(gap_a, gap_b)
        )
        d2[~even] = np.nan
        excess = np.zeros(self.n_axes)
        for a in range(self.n_axes):
            ok = np.isfinite(d2[:, a])
            if ok.sum() < _MIN_NOISE_SAMPLES - 2:
                continue
            sq, b = d2[ok, a], base[ok, a]
            sq_clip = sq[sq <= 25.0 * np.median(sq) / _CHI2_1_MEDIAN]
            total = np.median(sq_clip) / _CHI2_1_MEDIAN
            excess[a] = max(0.0, (total - float(np.median(b))) / 6.0)
        stats.excess_var = excess

    def _reject(
        self,
        stats: _SourceStats,
        m: Measurement,
        reason: str,
        innov: tuple[float, ...] | None = None,
        d2: float = math.nan,
        gate2: float = math.nan,
    ) -> UpdateResult:
        stats.rejected[reason] += 1
        if innov is None:
            innov = (math.nan,) * self.n_axes
        return UpdateResult(False, reason, m.source, m.t, innov, d2, gate2)

    def _innovation(self, m: Measurement, r: NDArray[np.float64]) -> _Candidate:
        """Predict ``m`` from the committed state (propagated or retrodicted to ``m.t``)."""
        x, p = self._propagated(m.t)
        lag = 0.0 if self._t is None else max(0.0, self._t - m.t)
        h = self._row(m.angle_deg, m.source, lag)
        r_total = r + self._lag_variance(h, lag)
        ph = p @ h
        s = ph @ h + r_total
        valid = np.isfinite(m.values_um)
        innov = np.where(valid, m.values_um - x @ h, np.nan)
        return _Candidate(x, p, h, ph, s, innov, r_total, valid)

    def _commit(self, m: Measurement, c: _Candidate) -> None:
        """Scalar Kalman update of the measured axes (Joseph form); advance the filter time."""
        idx = np.flatnonzero(c.valid)
        gain = c.ph[idx] / c.s[idx, None]
        x, p = c.x, c.p
        x[idx] += gain * c.innov[idx, None]
        a = np.eye(c.h.size) - gain[:, :, None] * c.h[None, None, :]
        p_new = a @ p[idx] @ a.transpose(0, 2, 1)
        p_new += c.r[idx, None, None] * gain[:, :, None] * gain[:, None, :]
        p[idx] = 0.5 * (p_new + p_new.transpose(0, 2, 1))
        self._x, self._p = x, p
        if self._t is None or m.t > self._t:
            self._t = m.t
        stats = self._stats[m.source]
        if stats.last_accepted_t is None or m.t > stats.last_accepted_t:
            stats.last_accepted_t = m.t

    def _consensus(
        self, entries: list[_Pending]
    ) -> tuple[list[_Pending], NDArray[np.float64], NDArray[np.float64]] | None:
        """Find ``recovery_count`` entries, the newest included, on one line in time.

        Residuals are taken against the committed state, so other sources' updates since an
        entry arrived are accounted for. A line (offset + slope per axis) absorbs the local
        motion the state does not explain: a step, or the drift since a stale state.

        Returns
        -------
        tuple or None
            Members, and per axis the offset at the newest entry and the slope (0 on axes
            nobody measured); None without a consensus.
        """
        k = self.config.recovery_count
        if len(entries) < k:
            return None
        t_new = entries[-1].m.t
        tau = np.array([e.m.t - t_new for e in entries])
        resid = np.array([e.m.values_um - self._x @ self._row_at(e.m) for e in entries])
        var = np.array([e.r for e in entries])
        tol2 = self._gate_sigma2_1dof * (var + var[-1])
        newest = len(entries) - 1

        def inliers(offset: NDArray[np.float64], slope: NDArray[np.float64]) -> NDArray:
            dev2 = (resid - offset - slope * tau[:, None]) ** 2
            return np.all((dev2 <= tol2) | np.isnan(resid), axis=1)

        # Candidate lines through the newest entry: flat, and through each other entry.
        zero = np.zeros(self.n_axes)
        best = inliers(resid[newest], zero)
        for i in range(newest):
            dt = tau[i]
            if dt == 0.0:
                continue
            slope = np.nan_to_num((resid[i] - resid[newest]) / dt)
            mask = inliers(resid[newest], slope)
            if mask.sum() > best.sum():
                best = mask
        if best.sum() < k or not best[newest]:
            return None
        # Weighted line fit on the inliers, then confirm they still agree with it.
        offset, slope = _weighted_line(tau[best], resid[best], var[best])
        final = inliers(offset, slope)
        if final.sum() < k or not final[newest]:
            return None
        members = [e for e, keep in zip(entries, final, strict=True) if keep]
        return members, np.nan_to_num(offset), np.nan_to_num(slope)

    def _row_at(self, m: Measurement) -> NDArray[np.float64]:
        """Row predicting ``m`` from the committed state (extrapolating over any time gap)."""
        dt = 0.0 if self._t is None else m.t - self._t
        return self._row(m.angle_deg, m.source, -dt)

    # ------------------------------------------------------------------ prediction
    def predict(self, angle_deg: float, t: float) -> Prediction:
        """Predict the sample drift (runout + thermal) at an angle and time.

        Parameters
        ----------
        angle_deg : float
            Rotation angle of the exposure (degrees).
        t : float
            Time of the exposure (s); usually the next exposure's mid-time. Before the first
            measurement, the prior is returned.

        Returns
        -------
        Prediction
            Mean and 1-sigma per axis; the sigma grows with the time since the last accepted
            measurement (process noise).
        """
        if not (math.isfinite(angle_deg) and math.isfinite(t)):
            raise ValueError(f"angle_deg and t must be finite, got {angle_deg}, {t}")
        lag = 0.0 if self._t is None else max(0.0, self._t - t)
        x, p = self._propagated(t)
        h = self._row(angle_deg, None, lag)
        mean = x @ h
        var = (p @ h) @ h + self._lag_variance(h, lag)
        return Prediction(
            mean, np.sqrt(np.maximum(var, 0.0)), float(t), float(angle_deg), self.config.axes
        )

    # ------------------------------------------------------------------ diagnostics
    @property
    def t(self) -> float | None:
        """Filter time: the latest accepted measurement time (None before the first)."""
        return self._t

    @property
    def state(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Copies of the state ``(n_axes, n_states)`` and covariance ``(n_axes, n, n)``."""
        return self._x.copy(), self._p.copy()

    def counts(self) -> dict[str, dict[str, Any]]:
        """Return accepted / rejected (per reason) / recovered counts per source."""
        return {
            name: {
                "accepted": st.accepted,
                "rejected": dict(st.rejected),
                "recoveries": st.recoveries,
                "reused": st.reused,
            }
            for name, st in self._stats.items()
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe status: coefficients, thermal, biases, per-source counts and times.

        Returns
        -------
        dict
            ``t``, ``axes``, ``n_harmonics``, ``initialised_from_runout``, ``harmonics_um`` /
            ``harmonics_std_um`` (per axis ``[cos_1, sin_1, ...]``), ``thermal`` (per axis
            offset / velocity and their std), ``bias_um`` (per biased source and axis), and
            ``sources`` (per source: counts, ``last_accepted_t``, ``age_s`` relative to ``t``,
            ``pending_rejections``).
        """
        cfg = self.config
        std = np.sqrt(np.maximum(np.diagonal(self._p, axis1=1, axis2=2), 0.0))
        n_h = 2 * cfg.n_harmonics
        it, iv = self._i_t, self._i_v
        sources: dict[str, Any] = {}
        for name, st in self._stats.items():
            age = None
            if st.last_accepted_t is not None and self._t is not None:
                age = self._t - st.last_accepted_t
            sources[name] = {
                "accepted": st.accepted,
                "rejected": dict(st.rejected),
                "recoveries": st.recoveries,
                "reused": st.reused,
                "confirmed": st.confirmed,
                "last_accepted_t": st.last_accepted_t,
                "age_s": age,
                "pending_rejections": len(st.pending),
                "excess_noise_um": {
                    a: _finite_or_none(v)
                    for a, v in zip(cfg.axes, np.sqrt(st.excess_var), strict=True)
                },
            }
        return {
            "t": self._t,
            "axes": list(cfg.axes),
            "n_harmonics": cfg.n_harmonics,
            "initialised_from_runout": self._from_runout,
            "harmonics_um": {a: _list(self._x[i, :n_h]) for i, a in enumerate(cfg.axes)},
            "harmonics_std_um": {a: _list(std[i, :n_h]) for i, a in enumerate(cfg.axes)},
            "thermal": {
                a: {
                    "offset_um": _finite_or_none(self._x[i, it]),
                    "offset_std_um": _finite_or_none(std[i, it]),
                    "velocity_um_per_s": _finite_or_none(self._x[i, iv]),
                    "velocity_std_um_per_s": _finite_or_none(std[i, iv]),
                }
                for i, a in enumerate(cfg.axes)
            },
            "bias_um": {
                name: {
                    a: {"value": _finite_or_none(self._x[i, j]), "std": _finite_or_none(std[i, j])}
                    for i, a in enumerate(cfg.axes)
                }
                for name, j in self._bias_index.items()
            },
            "sources": sources,
        }


# ---------------------------------------------------------------------------- helpers
def _require_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _require_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _list(values: Sequence[float] | NDArray[np.float64]) -> list[float | None]:
    return [_finite_or_none(v) for v in values]
