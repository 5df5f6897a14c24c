"""Simulated TXM tomography scans: raw detector frames with known drift.

A scan is ``n_darks`` dark frames, ``n_flats`` flat fields, then ``n_projections``
projections, one every ``frame_period_s``. Frame ``k`` (counted over the whole scan) is
stamped at mid-exposure, ``t_s = t_start_s + k * frame_period_s + exposure_s / 2`` (seconds
since the drift clock's ``t0``); the drift is evaluated at that instant.

Detector model per pixel (counts): ``dark_level + Poisson(beam * flat * exp(-p))`` (or its
Gaussian approximation, ``noise_model="gaussian"``) plus
optional Gaussian read noise, rounded and clipped to the output dtype, with ``p`` the exact
line integral of the phantom at the frame's angle and true shift, ``flat`` a fixed smooth
flat-field pattern and ``beam`` a per-frame intensity factor ``1 + beam_fluctuation * N(0, 1)``.
Dark frames have no beam; flats have the beam but no sample.

Noise is drawn from per-frame seeds, in fixed row blocks, so frames are bit-identical for a
given config whatever the order of rendering or the number of noise threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .crlb import poisson_crlb_shift, shift_gradient
from .drift import DriftParams, SimulatedDrift
from .phantom import Phantom, _check_shape, make_phantom
from .projector import Projector

FrameKind = Literal["projection", "dark", "flat"]
StageOffset = ArrayLike | Callable[[int, float, float], ArrayLike] | None

_DTYPES = ("uint8", "uint16", "uint32", "float32")
_KIND_CODE = {"dark": 1, "flat": 2, "projection": 3}
# Noise is generated in blocks of this many rows, each with its own seed.
_NOISE_BLOCK_ROWS = 256


@dataclass(frozen=True)
class ScanConfig:
    """Configuration of a simulated scan.

    Parameters
    ----------
    shape : tuple of int
        Detector ``(rows, cols)``.
    n_projections : int
        Number of projections, equally spaced from ``angle_start_deg`` to ``angle_stop_deg``
        inclusive.
    angle_start_deg, angle_stop_deg : float
        Angular range in degrees.
    exposure_s, frame_period_s : float
        Exposure and frame period in seconds (``exposure_s <= frame_period_s``).
    counts : float
        Mean flat-field counts per pixel at ``beam = 1``.
    flat_structure : float
        Relative amplitude (peak) of the smooth fixed flat-field pattern, in ``[0, 1)``.
    beam_fluctuation : float
        Relative RMS of the per-frame beam intensity.
    dark_level : float
        Dark offset in counts (noiseless electronic offset).
    read_noise : float
        Gaussian read noise RMS in counts.
    n_darks, n_flats : int
        Numbers of dark and flat frames before the projections.
    dtype : str
        Raw frame type: ``uint8``, ``uint16``, ``uint32`` (clipped) or ``float32``.
    seed : int
        Seed for the noise, flat pattern and beam; also the default phantom and drift seed.
    drift : DriftParams
        Drift model.
    drift_seed, phantom_seed : int, optional
        Separate seeds; default ``seed``.
    t_start_s : float
        Drift clock at the start of the first frame (e.g. minutes into a thermal transient).
    n_particles, n_pores, n_texture, host_attenuation : phantom parameters
        Passed to :func:`~.phantom.make_phantom` (``n_texture=None``: 1 per 300 px^2).
    supersample : int
        Projector anti-aliasing (sub-samples per axis at ellipsoid outlines).
    keep_expected : bool
        Attach the noise-free expected counts to every frame (memory!).
    noise_threads : int
        Threads used to draw the noise (results do not depend on it).
    noise_model : {"poisson", "gaussian"}
        ``poisson`` (exact); ``gaussian`` draws ``N(lambda, lambda)`` instead, about 3x
        faster at large frames and indistinguishable at hundreds of counts per pixel.
    phantom_shape : tuple of int, optional
        ``(rows, cols)`` of the frame the phantom is designed for; default ``shape``. A
        detector wider than this (e.g. ``shape=(128, 192)``, ``phantom_shape=(128, 128)``)
        sees the same sample with margins: the host then stays inside the field of view
        horizontally at every angle (no local tomography).
    """

    shape: tuple[int, int] = (512, 512)
    n_projections: int = 361
    angle_start_deg: float = 0.0
    angle_stop_deg: float = 180.0
    exposure_s: float = 0.1
    frame_period_s: float = 0.12
    counts: float = 1000.0
    flat_structure: float = 0.05
    beam_fluctuation: float = 0.01
    dark_level: float = 100.0
    read_noise: float = 0.0
    n_darks: int = 10
    n_flats: int = 10
    dtype: str = "uint16"
    seed: int = 0
    drift: DriftParams = field(default_factory=DriftParams.typical)
    drift_seed: int | None = None
    phantom_seed: int | None = None
    t_start_s: float = 0.0
    n_particles: int = 24
    n_pores: int = 12
    n_texture: int | None = None
    host_attenuation: float = 1.3
    supersample: int = 4
    keep_expected: bool = False
    noise_threads: int = 1
    noise_model: Literal["poisson", "gaussian"] = "poisson"
    phantom_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _check_shape(self.shape, "shape"))
        if self.phantom_shape is not None:
            object.__setattr__(self, "phantom_shape",
                               _check_shape(self.phantom_shape, "phantom_shape"))
        for name in ("n_projections", "n_darks", "n_flats", "seed", "noise_threads",
                     "drift_seed", "phantom_seed"):
            value = getattr(self, name)
            if value is None and name.endswith("_seed"):
                continue
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if name.endswith("seed") and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.n_projections < 1:
            raise ValueError(f"n_projections must be >= 1, got {self.n_projections}")
        if self.n_darks < 0 or self.n_flats < 0:
            raise ValueError("n_darks and n_flats must be >= 0")
        if self.noise_threads < 1:
            raise ValueError(f"noise_threads must be >= 1, got {self.noise_threads}")
        for name in ("angle_start_deg", "angle_stop_deg", "t_start_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not (self.exposure_s > 0 and self.frame_period_s >= self.exposure_s
                and math.isfinite(self.frame_period_s)):
            raise ValueError("need 0 < exposure_s <= frame_period_s (finite), got "
                             f"{self.exposure_s}, {self.frame_period_s}")
        if not (math.isfinite(self.counts) and self.counts > 0):
            raise ValueError(f"counts must be > 0, got {self.counts}")
        if not 0 <= self.flat_structure < 1:
            raise ValueError(f"flat_structure must be in [0, 1), got {self.flat_structure}")
        for name in ("beam_fluctuation", "dark_level", "read_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.noise_model not in ("poisson", "gaussian"):
            raise ValueError(f"noise_model must be 'poisson' or 'gaussian', got "
                             f"{self.noise_model!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if not isinstance(self.drift, DriftParams):
            raise TypeError(f"drift must be DriftParams, got {type(self.drift).__name__}")


@dataclass(frozen=True)
class SimFrame:
    """One simulated detector frame with its ground truth.

    Attributes
    ----------
    kind : {"projection", "dark", "flat"}
        Frame type.
    index : int
        Index within its kind (0-based).
    angle_deg : float
        Rotation angle (darks and flats: ``angle_start_deg``).
    t_s : float
        Mid-exposure time, seconds since the drift clock's ``t0``.
    image : ndarray
        Raw detector counts, ``config.dtype``.
    true_shift_px : tuple of float
        ``(dy, dx)`` true image shift of (drift + stage offset); ``(0, 0)`` for darks/flats.
    beam_factor : float
        Relative beam intensity of this frame (0 for darks).
    expected : ndarray or None
        Noise-free expected counts (float32) when requested.
    stage_offset_um : tuple of float
        Fine-stage offset ``(x, y, z)`` applied during this frame.
    """

    kind: FrameKind
    index: int
    angle_deg: float
    t_s: float
    image: np.ndarray
    true_shift_px: tuple[float, float]
    beam_factor: float
    expected: np.ndarray | None = None
    stage_offset_um: tuple[float, float, float] = (0.0, 0.0, 0.0)


class ScanSimulator:
    """Render a simulated scan frame by frame.

    Parameters
    ----------
    config : ScanConfig
        Scan configuration.

    Attributes
    ----------
    phantom : Phantom
    projector : Projector
    drift : SimulatedDrift
    flat_field : ndarray
        Noise-free expected flat counts at ``beam = 1`` (float32).
    """

    def __init__(self, config: ScanConfig | None = None) -> None:
        if config is None:
            config = ScanConfig()
        if not isinstance(config, ScanConfig):
            raise TypeError(f"config must be ScanConfig, got {type(config).__name__}")
        self.config = config
        seed = config.seed
        self.phantom: Phantom = make_phantom(
            seed if config.phantom_seed is None else config.phantom_seed,
            size_px=config.shape if config.phantom_shape is None else config.phantom_shape,
            n_particles=config.n_particles, n_pores=config.n_pores,
            n_texture=config.n_texture, host_attenuation=config.host_attenuation)
        self.projector = Projector(self.phantom, config.shape, supersample=config.supersample)
        self.drift = SimulatedDrift(config.drift,
                                    seed if config.drift_seed is None else config.drift_seed)
        self.flat_field = _flat_pattern(config)
        self._out_dtype = np.dtype(config.dtype)
        self._pool = (ThreadPoolExecutor(config.noise_threads, "sim-noise")
                      if config.noise_threads > 1 else None)

    # ------------------------------------------------------------------ geometry/timing
    def angles_deg(self) -> np.ndarray:
        """Projection angles in degrees (endpoints included)."""
        c = self.config
        return np.linspace(c.angle_start_deg, c.angle_stop_deg, c.n_projections)

    def _frame_time(self, frame_number: ArrayLike) -> np.ndarray:
        c = self.config
        return c.t_start_s + np.asarray(frame_number) * c.frame_period_s + c.exposure_s / 2

    def times_s(self) -> np.ndarray:
        """Mid-exposure times of the projections (seconds since the drift clock's t0)."""
        c = self.config
        return self._frame_time(c.n_darks + c.n_flats + np.arange(c.n_projections))

    def true_shifts_px(self, stage_offset_um: StageOffset = None) -> np.ndarray:
        """Return the true ``(dy, dx)`` of every projection, ``(n_projections, 2)``, unrendered."""
        angles, times = self.angles_deg(), self.times_s()
        offsets = np.array([self._offset(stage_offset_um, i, a, t)
                            for i, (a, t) in enumerate(zip(angles, times, strict=True))])
        return self.drift.detector_shift_px(angles, times, offsets)

    # ------------------------------------------------------------------ rendering
    def expected(self, angle_deg: float, shift_px: tuple[float, float] = (0.0, 0.0),
                 beam_factor: float = 1.0) -> np.ndarray:
        """Noise-free expected counts (float32) of a projection at ``angle_deg``, ``shift_px``."""
        if not (math.isfinite(beam_factor) and beam_factor >= 0):
            raise ValueError(f"beam_factor must be finite and >= 0, got {beam_factor}")
        out = self.projector.line_integrals(angle_deg, shift_px)
        np.negative(out, out=out)
        np.exp(out, out=out)
        out *= self.flat_field
        if beam_factor != 1.0:
            out *= np.float32(beam_factor)
        out += np.float32(self.config.dark_level)
        return out

    def render(
        self,
        angle_deg: float,
        shift_px: tuple[float, float] = (0.0, 0.0),
        *,
        t_s: float = 0.0,
        rng: np.random.Generator | None = None,
        beam_factor: float = 1.0,
        noise: bool = True,
    ) -> np.ndarray:
        """Render raw detector counts of a projection.

        Parameters
        ----------
        angle_deg : float
            Rotation angle in degrees.
        shift_px : tuple of float
            ``(dy, dx)`` image shift in pixels (content moves by +dy rows, +dx columns).
        t_s : float
            Frame time; with ``rng=None`` it seeds the noise, so the same
            ``(config.seed, t_s)`` gives the same noise.
        rng : numpy.random.Generator, optional
            Noise source; default derived from ``(config.seed, t_s)``.
        beam_factor : float
            Relative beam intensity.
        noise : bool
            False: return the rounded, clipped expected counts.

        Returns
        -------
        ndarray
            Raw counts in ``config.dtype``.
        """
        expected = self.expected(angle_deg, shift_px, beam_factor)
        if not noise:
            return self._to_dtype(expected)
        if rng is None:
            seq = np.random.SeedSequence([self.config.seed, 4, _ticks(t_s)])
            return self._noisy(expected, seq)
        return self._noisy(expected, rng)

    def _to_dtype(self, values: np.ndarray) -> np.ndarray:
        dt = self._out_dtype
        if dt.kind == "f":
            return values.astype(dt)
        info = np.iinfo(dt)
        return np.clip(np.rint(values), info.min, info.max).astype(dt)

    def _noisy(self, expected: np.ndarray,
               source: np.random.SeedSequence | np.random.Generator) -> np.ndarray:
        """Poisson signal + dark offset + read noise, per row block from ``source``."""
        c = self.config
        signal = expected - np.float32(c.dark_level)
        np.maximum(signal, 0, out=signal)
        out = np.empty(expected.shape, dtype=self._out_dtype)
        blocks = [slice(r, r + _NOISE_BLOCK_ROWS)
                  for r in range(0, expected.shape[0], _NOISE_BLOCK_ROWS)]
        if isinstance(source, np.random.Generator):
            gens = [source] * len(blocks)
        else:
            gens = [np.random.default_rng(s) for s in source.spawn(len(blocks))]

        def fill(i: int) -> None:
            gen, rows = gens[i], blocks[i]
            lam = signal[rows]
            if c.noise_model == "poisson":
                counts = gen.poisson(lam).astype(np.float32)
            else:
                counts = gen.standard_normal(lam.shape, dtype=np.float32)
                counts *= np.sqrt(lam)
                counts += lam
                np.maximum(counts, 0, out=counts)
            counts += np.float32(c.dark_level)
            if c.read_noise > 0:
                counts += np.float32(c.read_noise) * gen.standard_normal(
                    counts.shape, dtype=np.float32)
            out[rows] = self._to_dtype(counts)

        if self._pool is None or isinstance(source, np.random.Generator):
            for i in range(len(blocks)):
                fill(i)
        else:
            list(self._pool.map(fill, range(len(blocks))))
        return out

    # ------------------------------------------------------------------ frames
    def _beam(self, frame_number: int) -> float:
        rng = np.random.default_rng([self.config.seed, 5, frame_number])
        return max(0.0, 1.0 + self.config.beam_fluctuation * float(rng.standard_normal()))

    def _offset(self, stage_offset_um: StageOffset, index: int, angle: float, t_s: float
                ) -> np.ndarray:
        if stage_offset_um is None:
            return np.zeros(3)
        value = stage_offset_um(index, angle, t_s) if callable(stage_offset_um) \
            else stage_offset_um
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 2 and arr.shape == (self.config.n_projections, 3):
            arr = arr[index]
        if arr.shape != (3,) or not np.all(np.isfinite(arr)):
            raise ValueError("stage_offset_um must be (x, y, z), (n_projections, 3) or a "
                             "callable (index, angle_deg, t_s) -> (x, y, z); got shape "
                             f"{arr.shape}")
        return arr

    def dark(self, index: int, *, with_expected: bool | None = None) -> SimFrame:
        """Render dark frame ``index`` (no beam)."""
        c = self.config
        _check_index(index, c.n_darks, "dark")
        expected = np.full(c.shape, c.dark_level, dtype=np.float32)
        seq = np.random.SeedSequence([c.seed, _KIND_CODE["dark"], index])
        keep = c.keep_expected if with_expected is None else with_expected
        return SimFrame("dark", index, c.angle_start_deg, float(self._frame_time(index)),
                        self._noisy(expected, seq), (0.0, 0.0), 0.0,
                        expected if keep else None)

    def flat(self, index: int, *, with_expected: bool | None = None) -> SimFrame:
        """Render flat frame ``index`` (beam, sample out)."""
        c = self.config
        _check_index(index, c.n_flats, "flat")
        number = c.n_darks + index
        beam = self._beam(number)
        expected = self.flat_field * np.float32(beam) + np.float32(c.dark_level)
        seq = np.random.SeedSequence([c.seed, _KIND_CODE["flat"], index])
        keep = c.keep_expected if with_expected is None else with_expected
        return SimFrame("flat", index, c.angle_start_deg, float(self._frame_time(number)),
                        self._noisy(expected, seq), (0.0, 0.0), beam,
                        expected if keep else None)

    def projection(self, index: int, stage_offset_um: StageOffset = None, *,
                   with_expected: bool | None = None) -> SimFrame:
        """Render projection ``index`` at its angle and time, shifted by the true drift.

        Parameters
        ----------
        index : int
            Projection number.
        stage_offset_um : array_like or callable, optional
            Fine-stage offset: ``(x, y, z)``, ``(n_projections, 3)``, or
            ``f(index, angle_deg, t_s) -> (x, y, z)`` (e.g. a feedback loop's setpoint).
        with_expected : bool, optional
            Attach the noise-free expected counts; default ``config.keep_expected``.
        """
        c = self.config
        _check_index(index, c.n_projections, "projection")
        number = c.n_darks + c.n_flats + index
        angle = float(self.angles_deg()[index])
        t_s = float(self._frame_time(number))
        offset = self._offset(stage_offset_um, index, angle, t_s)
        dy, dx = (float(v) for v in self.drift.detector_shift_px(angle, t_s, offset))
        beam = self._beam(number)
        expected = self.expected(angle, (dy, dx), beam)
        seq = np.random.SeedSequence([c.seed, _KIND_CODE["projection"], index])
        keep = c.keep_expected if with_expected is None else with_expected
        return SimFrame("projection", index, angle, t_s, self._noisy(expected, seq),
                        (dy, dx), beam, expected if keep else None,
                        (float(offset[0]), float(offset[1]), float(offset[2])))

    def darks(self) -> Iterator[SimFrame]:
        """Yield the dark frames."""
        for i in range(self.config.n_darks):
            yield self.dark(i)

    def flats(self) -> Iterator[SimFrame]:
        """Yield the flat frames."""
        for i in range(self.config.n_flats):
            yield self.flat(i)

    def projections(self, stage_offset_um: StageOffset = None) -> Iterator[SimFrame]:
        """Yield the projections; see :meth:`projection` for ``stage_offset_um``."""
        for i in range(self.config.n_projections):
            yield self.projection(i, stage_offset_um)

    def __iter__(self) -> Iterator[SimFrame]:
        """Yield darks, flats, then projections (no stage offset)."""
        yield from self.darks()
        yield from self.flats()
        yield from self.projections()

    # ------------------------------------------------------------------ bounds
    def crlb_shift(self, angle_deg: float, shift_px: tuple[float, float] = (0.0, 0.0), *,
                   beam_factor: float = 1.0, both_noisy: bool = True) -> tuple[float, float]:
        """Cramer-Rao bound ``(sigma_dy, sigma_dx)`` in pixels for a projection.

        Gradients come from exact re-renders at ``shift +- 0.05 px`` (float64 projector);
        the variance is the Poisson signal plus the read noise (the dark offset is noiseless).
        """
        c = self.config
        proj = Projector(self.phantom, c.shape, supersample=c.supersample, dtype=np.float64)
        flat = self.flat_field.astype(np.float64) * beam_factor

        def signal(s: tuple[float, float]) -> np.ndarray:
            return flat * np.exp(-proj.line_integrals(angle_deg, s))

        grad = shift_gradient(signal, shift_px)
        sig = signal(tuple(shift_px))  # type: ignore[arg-type]
        return poisson_crlb_shift(sig + c.dark_level, gradient=grad,
                                  variance=sig + c.read_noise**2 + 1e-12,
                                  both_noisy=both_noisy)

    def close(self) -> None:
        """Stop the noise thread pool (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _check_index(index: int, n: int, kind: str) -> None:
    if isinstance(index, bool) or int(index) != index or not 0 <= index < n:
        raise IndexError(f"{kind} index must be an integer in [0, {n}), got {index!r}")


def _ticks(t_s: float) -> int:
    if not math.isfinite(t_s):
        raise ValueError(f"t_s must be finite, got {t_s!r}")
    return round(t_s * 1e6) % 2**63


def _flat_pattern(config: ScanConfig) -> np.ndarray:
    """Smooth fixed flat field: ``counts * (1 + flat_structure * pattern)``, pattern in [-1, 1]."""
    rows, cols = config.shape
    rng = np.random.default_rng([config.seed, 3])
    y = np.linspace(0.0, 1.0, rows)[:, None]
    x = np.linspace(0.0, 1.0, cols)[None, :]
    pattern = np.zeros((rows, cols))
    # A few low spatial frequencies (up to 3 cycles per frame): beam profile and optics
    # vignetting, smooth on the scale of the sample features.
    for ky in range(4):
        for kx in range(4):
            if ky == kx == 0:
                continue
            amp = rng.standard_normal() / (1.0 + ky * ky + kx * kx)
            py, px = rng.uniform(0, 2 * np.pi, 2)
            pattern += amp * np.cos(np.pi * ky * y + py) * np.cos(np.pi * kx * x + px)
    pattern -= pattern.mean()
    pattern /= max(float(np.abs(pattern).max()), 1e-12)
    return (config.counts * (1.0 + config.flat_structure * pattern)).astype(np.float32)
