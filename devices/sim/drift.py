"""Physical drift truth of a simulated nano-CT sample stage.

The sample displacement (lab frame, micrometres) is the sum of

* rotation-stage runout: harmonics of the rotation angle, periodic in 360 degrees;
* thermal drift of the rotation stage and, separately, of the sample holder: exponential
  approach to an asymptote with time constant ``thermal_tau_s`` plus an optional linear creep;
* jitter: smooth vibration (sines with seeded phases and directions) plus white noise that is a
  hash of ``(seed, axis, time)``, so any time can be evaluated in any order;
* jumps (stick-slip): a seeded Poisson process of steps that persist.

A laser interferometer on the rotation stage sees runout + stage thermal drift; a visible-light
microscope tracking the sample sees everything. The detector sees the sample displacement plus
the fine-stage offset (the piezo sits below the rotation stage, lab frame: +m um of piezo moves
the sample by +m um), mapped to pixels as ``dx = x / pixel``, ``dy = z / pixel``.

All methods are vectorised over arrays of angles (degrees) and times (seconds since ``t0``)
and deterministic given the seed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

Harmonics = tuple[tuple[float, float], ...]
Vec3 = tuple[float, float, float]

# Times beyond this are almost surely an absolute clock passed by mistake.
_MAX_T_S = 1.0e7
# Jumps are drawn per block of this many seconds, seeded by (seed, block): order-independent.
_JUMP_BLOCK_S = 3600.0
# White jitter is a function of time quantised to this step (one value per microsecond).
_JITTER_TICK_S = 1e-6


def _pairs(value: object, name: str, *, positive_second: bool = False) -> tuple[
        tuple[float, float], ...]:
    try:
        pairs = tuple((float(a), float(b)) for a, b in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of (number, number) pairs, got "
                         f"{value!r}") from None
    for a, b in pairs:
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0:
            raise ValueError(f"{name}: amplitudes must be finite and >= 0, got {(a, b)}")
        if positive_second and b <= 0:
            raise ValueError(f"{name}: frequencies must be > 0, got {(a, b)}")
    return pairs


def _vec3(value: object, name: str) -> Vec3:
    arr = np.asarray(value, dtype=float)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be 3 finite numbers (x, y, z), got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class DriftParams:
    """Parameters of the simulated drift (micrometres, seconds, degrees).

    The defaults are :meth:`typical`: about 0.7 um (23 px at 30 nm) peak x runout and about
    1 um of thermal drift settling over tens of minutes.

    Parameters
    ----------
    pixel_size_um : float
        Detector pixel size referred to the sample.
    runout_x_um, runout_y_um, runout_z_um : tuple of (float, float)
        ``(amplitude_um, phase_rad)`` of harmonics 1, 2, ... of the rotation angle:
        ``sum_n A_n cos(n * angle + phase_n)``.
    thermal_stage_um : tuple of float
        Asymptotic thermal drift ``(x, y, z)`` of the rotation stage (the interferometer sees it).
    thermal_sample_um : tuple of float
        Asymptotic thermal drift of the sample holder (only images and the microscope see it).
    thermal_tau_s : float
        Time constant of the exponential approach to the asymptotes.
    thermal_stage_rate_um_per_h, thermal_sample_rate_um_per_h : tuple of float
        Linear creep added to the stage and the sample holder drift.
    jitter_rms_um : float
        RMS per axis of the white per-exposure jitter.
    vibration : tuple of (float, float)
        ``(amplitude_um, freq_hz)`` of smooth vibrations, each along a seeded random direction.
    jump_rate_per_h : float
        Mean rate of sudden jumps (stick-slip).
    jump_size_um : float
        Length of each jump (random direction).
    detector_signs : tuple of float
        ``(sign_dy, sign_dx)``, each +1 or -1: how the detector sees +z and +x.
    """

    pixel_size_um: float = 0.03
    runout_x_um: Harmonics = ((0.62, 0.4), (0.12, 1.9), (0.04, 4.0))
    runout_y_um: Harmonics = ((0.55, 2.0), (0.10, 0.3))
    runout_z_um: Harmonics = ((0.08, 1.0), (0.03, 2.5))
    thermal_stage_um: Vec3 = (0.35, 0.20, 0.15)
    thermal_sample_um: Vec3 = (0.30, 0.10, 0.40)
    thermal_tau_s: float = 900.0
    thermal_stage_rate_um_per_h: Vec3 = (0.02, 0.0, 0.01)
    thermal_sample_rate_um_per_h: Vec3 = (0.05, 0.0, 0.08)
    jitter_rms_um: float = 0.005
    vibration: tuple[tuple[float, float], ...] = ((0.004, 2.3), (0.002, 11.0))
    jump_rate_per_h: float = 0.5
    jump_size_um: float = 0.1
    detector_signs: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pixel_size_um) and self.pixel_size_um > 0):
            raise ValueError(f"pixel_size_um must be > 0, got {self.pixel_size_um}")
        for name in ("runout_x_um", "runout_y_um", "runout_z_um"):
            object.__setattr__(self, name, _pairs(getattr(self, name), name))
        object.__setattr__(self, "vibration",
                           _pairs(self.vibration, "vibration", positive_second=True))
        for name in ("thermal_stage_um", "thermal_sample_um", "thermal_stage_rate_um_per_h",
                     "thermal_sample_rate_um_per_h"):
            object.__setattr__(self, name, _vec3(getattr(self, name), name))
        if not (math.isfinite(self.thermal_tau_s) and self.thermal_tau_s > 0):
            raise ValueError(f"thermal_tau_s must be > 0, got {self.thermal_tau_s}")
        for name in ("jitter_rms_um", "jump_rate_per_h", "jump_size_um"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        signs = tuple(float(s) for s in self.detector_signs)
        if len(signs) != 2 or any(s not in (-1.0, 1.0) for s in signs):
            raise ValueError(f"detector_signs must be two of +1/-1, got {self.detector_signs!r}")
        object.__setattr__(self, "detector_signs", signs)

    @classmethod
    def quiet(cls) -> DriftParams:
        """Return a good air-bearing stage in a settled hutch: ~25 nm runout, little drift."""
        return cls(
            runout_x_um=((0.02, 0.4), (0.005, 1.9)),
            runout_y_um=((0.02, 2.0),),
            runout_z_um=((0.005, 1.0),),
            thermal_stage_um=(0.02, 0.01, 0.01),
            thermal_sample_um=(0.03, 0.01, 0.03),
            thermal_tau_s=1800.0,
            thermal_stage_rate_um_per_h=(0.0, 0.0, 0.0),
            thermal_sample_rate_um_per_h=(0.005, 0.0, 0.005),
            jitter_rms_um=0.002,
            vibration=((0.001, 2.3),),
            jump_rate_per_h=0.0,
            jump_size_um=0.0,
        )

    @classmethod
    def typical(cls) -> DriftParams:
        """Return a typical nano-CT stage: >= 20 px peak x runout, thermal drift (defaults)."""
        return cls()

    @classmethod
    def severe(cls) -> DriftParams:
        """Return a poor stage after a hutch access: ~2 um runout, fast thermal drift, jumps."""
        return cls(
            runout_x_um=((1.8, 0.4), (0.4, 1.9), (0.15, 4.0), (0.05, 0.7)),
            runout_y_um=((1.5, 2.0), (0.3, 0.3)),
            runout_z_um=((0.3, 1.0), (0.1, 2.5)),
            thermal_stage_um=(1.2, 0.8, 0.6),
            thermal_sample_um=(1.0, 0.5, 1.5),
            thermal_tau_s=400.0,
            thermal_stage_rate_um_per_h=(0.1, 0.05, 0.05),
            thermal_sample_rate_um_per_h=(0.2, 0.0, 0.3),
            jitter_rms_um=0.015,
            vibration=((0.012, 2.3), (0.006, 11.0), (0.004, 37.0)),
            jump_rate_per_h=4.0,
            jump_size_um=0.3,
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of each element (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hashed_normal(key: np.ndarray, salt: int) -> np.ndarray:
    """Return standard normal deviates as a pure function of ``(key, salt)`` (Box-Muller)."""
    with np.errstate(over="ignore"):
        base = _splitmix64(key ^ np.uint64(salt))
        h1 = _splitmix64(base)
        h2 = _splitmix64(base ^ np.uint64(0xD1B54A32D192ED03))
    scale = 2.0**-53
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 1.0) * scale  # in (0, 1]
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * scale
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class SimulatedDrift:
    """Deterministic drift of a simulated sample, evaluated at any angles and times.

    Parameters
    ----------
    params : DriftParams
        Drift model parameters.
    seed : int
        Seed for jitter, vibration directions/phases and jumps.
    t0 : float
        Absolute clock reading (e.g. ``time.time()``) at ``t_s = 0``. All methods take
        ``t_s`` in seconds since ``t0``; use :meth:`elapsed_s` to convert an absolute clock.
        Thermal drift and jumps start at ``t_s = 0`` (zero before).
    """

    def __init__(self, params: DriftParams | None = None, seed: int = 0, t0: float = 0.0
                 ) -> None:
        if params is None:
            params = DriftParams()
        if not isinstance(params, DriftParams):
            raise TypeError(f"params must be DriftParams, got {type(params).__name__}")
        if int(seed) != seed:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not math.isfinite(t0):
            raise ValueError(f"t0 must be finite, got {t0!r}")
        self.params = params
        self.seed = int(seed)
        self.t0 = float(t0)
        self._seed64 = np.uint64(self.seed % 2**64)
        rng = np.random.default_rng([self.seed % 2**63, 1])
        n_vib = len(params.vibration)
        directions = rng.standard_normal((n_vib, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        amps = np.array([a for a, _ in params.vibration]).reshape(n_vib)
        self._vib_vec = directions * amps[:, None]
        self._vib_freq = np.array([f for _, f in params.vibration]).reshape(n_vib)
        self._vib_phase = rng.uniform(0.0, 2.0 * np.pi, n_vib)
        self._lock = threading.Lock()
        self._jump_blocks = 0
        self._jump_times = np.zeros(0)
        self._jump_cum = np.zeros((1, 3))  # cumulative displacement after 0, 1, 2... jumps

    def elapsed_s(self, t_abs: ArrayLike) -> np.ndarray:
        """Convert an absolute clock reading to ``t_s`` (seconds since ``t0``)."""
        return np.asarray(t_abs, dtype=float) - self.t0

    # ------------------------------------------------------------------ components
    def runout_um(self, angle_deg: ArrayLike) -> np.ndarray:
        """Runout ``(..., 3)`` (x, y, z) of the rotation stage, periodic in 360 degrees."""
        theta = np.radians(_finite(angle_deg, "angle_deg"))
        out = np.zeros((*theta.shape, 3))
        p = self.params
        for axis, harmonics in enumerate((p.runout_x_um, p.runout_y_um, p.runout_z_um)):
            for n, (amp, phase) in enumerate(harmonics, start=1):
                out[..., axis] += amp * np.cos(n * theta + phase)
        return out

    def _thermal(self, t_s: ArrayLike, asym: Vec3, rate: Vec3) -> np.ndarray:
        t = np.maximum(_times(t_s), 0.0)
        settle = -np.expm1(-t / self.params.thermal_tau_s)
        return (settle[..., None] * np.asarray(asym)
                + (t / 3600.0)[..., None] * np.asarray(rate))

    def thermal_stage_um(self, t_s: ArrayLike) -> np.ndarray:
        """Thermal drift ``(..., 3)`` of the rotation stage at ``t_s`` seconds since ``t0``."""
        p = self.params
        return self._thermal(t_s, p.thermal_stage_um, p.thermal_stage_rate_um_per_h)

    def thermal_sample_um(self, t_s: ArrayLike) -> np.ndarray:
        """Thermal drift ``(..., 3)`` of the sample holder (not seen by the interferometer)."""
        p = self.params
        return self._thermal(t_s, p.thermal_sample_um, p.thermal_sample_rate_um_per_h)

    def jitter_um(self, t_s: ArrayLike) -> np.ndarray:
        """Vibration plus white jitter ``(..., 3)``, a deterministic function of (seed, t)."""
        t = _times(t_s)
        phase = 2.0 * np.pi * t[..., None] * self._vib_freq + self._vib_phase
        out = np.sin(phase) @ self._vib_vec if self._vib_freq.size else np.zeros((*t.shape, 3))
        rms = self.params.jitter_rms_um
        if rms > 0:
            ticks = np.asarray(np.round(t / _JITTER_TICK_S), dtype=np.int64).view(np.uint64)
            with np.errstate(over="ignore"):
                key = _splitmix64(ticks ^ _splitmix64(np.asarray(self._seed64)))
            for axis in range(3):
                out[..., axis] += rms * _hashed_normal(key, 0x5EED + axis)
        return out

    def _extend_jumps(self, n_blocks: int) -> None:
        p = self.params
        rate = p.jump_rate_per_h * _JUMP_BLOCK_S / 3600.0
        times, steps = [self._jump_times], []
        for block in range(self._jump_blocks, n_blocks):
            rng = np.random.default_rng([self.seed % 2**63, 2, block])
            n = int(rng.poisson(rate))
            times.append(np.sort(block * _JUMP_BLOCK_S + _JUMP_BLOCK_S * rng.random(n)))
            direction = rng.standard_normal((n, 3))
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            steps.append(p.jump_size_um * direction)
        if steps:
            new = np.concatenate(steps).reshape(-1, 3)
            self._jump_cum = np.concatenate([self._jump_cum,
                                             self._jump_cum[-1] + np.cumsum(new, axis=0)])
        self._jump_times = np.concatenate(times)
        self._jump_blocks = n_blocks

    def jump_times_s(self, t_max_s: float) -> np.ndarray:
        """Return the times of all jumps in ``[0, t_max_s]`` (for tests and diagnostics)."""
        self.jumps_um(t_max_s)
        return self._jump_times[self._jump_times <= t_max_s].copy()

    def jumps_um(self, t_s: ArrayLike) -> np.ndarray:
        """Accumulated stick-slip jumps ``(..., 3)`` up to ``t_s`` (zero before ``t_s = 0``)."""
        t = _times(t_s)
        p = self.params
        if p.jump_rate_per_h == 0 or p.jump_size_um == 0 or t.size == 0:
            return np.zeros((*t.shape, 3))
        needed = int(np.floor(max(float(t.max()), 0.0) / _JUMP_BLOCK_S)) + 1
        with self._lock:
            if needed > self._jump_blocks:
                self._extend_jumps(needed)
            times, cum = self._jump_times, self._jump_cum
        count = np.searchsorted(times, t, side="right")
        return cum[count]

    # ------------------------------------------------------------------ observables
    def sample_displacement_um(self, angle_deg: ArrayLike, t_s: ArrayLike) -> np.ndarray:
        """Total sample displacement ``(..., 3)``, lab frame: every drift component."""
        angle, t = np.broadcast_arrays(_finite(angle_deg, "angle_deg"), _times(t_s))
        return (self.runout_um(angle) + self.thermal_stage_um(t) + self.thermal_sample_um(t)
                + self.jitter_um(t) + self.jumps_um(t))

    def interferometer_um(self, angle_deg: ArrayLike, t_s: ArrayLike) -> np.ndarray:
        """Return what a rotation-stage interferometer sees: runout + stage thermal (noise-free).

        In micrometres; a real interferometer IOC publishes nanometres (multiply by 1000).
        """
        angle, t = np.broadcast_arrays(_finite(angle_deg, "angle_deg"), _times(t_s))
        return self.runout_um(angle) + self.thermal_stage_um(t)

    def microscope_um(self, angle_deg: ArrayLike, t_s: ArrayLike) -> np.ndarray:
        """Return what a visible-light microscope tracking the sample sees: all displacement."""
        return self.sample_displacement_um(angle_deg, t_s)

    def detector_shift_px(
        self,
        angle_deg: ArrayLike,
        t_s: ArrayLike,
        stage_offset_um: ArrayLike | Sequence[float] = (0.0, 0.0, 0.0),
    ) -> np.ndarray:
        """Image shift ``(..., 2)`` = ``(dy, dx)`` pixels of (displacement + stage offset).

        Parameters
        ----------
        angle_deg, t_s : array_like
            Rotation angles (degrees) and times (seconds since ``t0``), broadcast together.
        stage_offset_um : array_like
            Fine-stage (piezo) offset ``(..., 3)`` in um, lab frame, broadcast against them.
            An offset equal to minus the displacement cancels the shift exactly.

        Returns
        -------
        ndarray
            ``dy = sign_dy * z / pixel``, ``dx = sign_dx * x / pixel`` of the residual.
        """
        offset = np.asarray(stage_offset_um, dtype=float)
        if offset.shape[-1:] != (3,) or not np.all(np.isfinite(offset)):
            raise ValueError(f"stage_offset_um must be finite with last axis (x, y, z), got "
                             f"shape {offset.shape}")
        residual = self.sample_displacement_um(angle_deg, t_s) + offset
        p = self.params
        sign_dy, sign_dx = p.detector_signs
        return np.stack([sign_dy * residual[..., 2], sign_dx * residual[..., 0]],
                        axis=-1) / p.pixel_size_um


def _finite(value: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _times(t_s: ArrayLike) -> np.ndarray:
    t = _finite(t_s, "t_s")
    if t.size and float(np.max(np.abs(t))) > _MAX_T_S:
        raise ValueError(f"t_s must be seconds since t0 (|t_s| <= {_MAX_T_S:g}); got "
                         f"{float(np.max(np.abs(t))):g}: pass an absolute clock through "
                         "elapsed_s() first")
    return t
