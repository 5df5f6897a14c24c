"""Sub-pixel phase correlation against a cached reference.

Building blocks: ROI crop -> optional block binning -> optional mask / window -> ``rfft2``
-> periodic-plus-smooth correction (Moisan 2011) -> weighted cross-power spectrum -> peak
search (inverse FFT of the whole or of the central half of the spectrum, or a local matrix DFT
around a predicted shift) -> two-stage matrix-multiply DFT refinement (Guizar-Sicairos et al.
2008) to ``1 / upsample`` pixel, plus a parabolic vertex fit on the final grid.

Default path (``refine_overlap=True``):

* full search: a 2x2-binned copy of the correlator finds the shift to a fraction of a pixel;
  reference and frame are then cropped to their common area (the frame crop offset by the
  integer shift) and the sub-pixel remainder is refined on the full-resolution crops. Content
  that entered or left the frame is thus excluded instead of biasing the result.
* with ``predicted`` and ``search_radius``: the crops are aligned on the prediction first, so a
  single forward FFT of the frame crop serves the local search and the refinement.

The reference crop spectra are cached per integer shift (drift is slow).

Normalisation
-------------
The two stages need different weights of the cross-power spectrum ``C = F conj(R)``; the
default ``normalisation="bandpass"`` gives each its own (``G`` is the Gaussian low-pass of
``lowpass`` pixels, ``|f|`` the spatial frequency in cycles/pixel):

* search (the whole frame, content entering and leaving): phase normalisation
  ``C / |C| * G``. Real projections are dominated by large smooth structure (a host particle
  crossing the frame edges); without whitening its broad correlation peak is pulled by
  the content that enters and leaves the frame, toward smaller shifts by several pixels
  (measured on simulator projections with shifts up to 10 % of the frame: plain
  cross-correlation 2-6 px RMS, phase + low-pass 0.01-0.2 px).
* refinement (the overlap crops, same content): the fixed band-pass ``C * |f| * G``, folded
  into the cached reference spectrum (free per frame). Plain cross-correlation is the most
  noise-efficient weighting but is biased there too: periodic components of crops cut
  through large structure are not exactly shift-consistent at a sub-pixel remainder
  (0.024 px RMS bias on noiseless 1024² projections; 0.001 with ``|f|``). Full phase
  normalisation is unbiased but amplifies noise. Measured with the benchmark frames
  (512² and 1024², 100/1000/10000 counts/px, both frames noisy), RMS error / Cramer-Rao
  bound: band-pass 3.1/1.7/2.2 and 4.5/1.4/2.0; ``|C|^-0.5 G`` 4.0/2.2/2.2 and 4.9/1.6/2.2;
  phase 6.4/3.6/2.9 and 6.6/2.8/3.3; plain 3.5/3.7/5.5 and 5.0/3.4/10.7 (these last with
  the search stage of the default). On smooth blob textures (256², the tests) the band-pass
  is as good as plain correlation (0.002/0.053/0.010 px vs 0.002/0.064/0.012 at
  0/100/1000 counts), where full phase normalisation was 5-40x worse.

``"phase"`` uses phase normalisation in both stages (sharp, broadband images); ``"none"`` plain
cross-correlation with the low-pass in both (the former default; biased on projections with
large structure, kept for comparison).

Confidence
----------
``peak`` is the normalised correlation peak: the correlation at the refined maximum divided by
the sum of the magnitudes of the (weighted) cross-power spectrum, so it lies in [0, 1] and is 1
for a frame that is an exact circular shift of the reference. ``peak_ratio`` divides it by the
highest correlation value outside an exclusion square around the peak. The square's
half-width is the extent of the reference's own correlation peak (where its weighted
autocorrelation exceeds 10 % of the maximum; at least ``4 + 3 * lowpass`` pixels, at most a
quarter of the frame), so the shoulder of a broad true peak is not mistaken for a competitor.
The returned ``confidence = 1 - 1 / peak_ratio`` (clipped to [0, 1]) is near 1 when a single
peak stands far above all others, and near 0 when the best peak is barely above the noise
floor or competes with another (unrelated, featureless or periodic content). For a local
search the secondary peak is taken inside the search window only; when the window is smaller
than the exclusion square, ``peak_ratio`` is ``nan`` and ``confidence = peak``.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import scipy.fft
from scipy.signal import windows

from ._spectral import (
    band_limit,
    bandpass_weights,
    bin_sum,
    dft_patch,
    flat_view,
    fused_cross_power,
    gaussian_lowpass,
    periodic_smooth_tables,
    periodic_spectrum,
)
from ._threads import blas_single_threaded
from .errors import InvalidFrameError
from .types import ShiftEstimate
from .validate import check_frame

Window = Literal["hann", "tukey"] | None
Normalisation = Literal["bandpass", "phase", "none"]
FFTSize = Literal["trim", "pad"]


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _refine_stages(upsample: int, uncertainty: float) -> list[tuple[float, int]]:
    """Return ``(spacing, points)`` per matrix-DFT refinement stage.

    ``upsample <= 5``: one grid at ``1 / upsample`` spanning the start point's
    ``uncertainty`` (pixels) plus a margin; the answer stays on that grid. Finer: a grid at
    0.2 px spanning the uncertainty (9 x 9 points for 0.5 px), then 3 x 3 points at 0.2 px
    centred on its fitted vertex; the answer is the vertex of a 2-D quadratic fitted there.
    A finer grid does not help: the complex64 matrix DFT carries ~1e-6 relative noise, as
    large as the peak's variation over 0.01 px (measured: a 15 x 15 grid at 0.01 px left
    0.0046 px RMS numerical error on 1024² projections, the 0.2 px fit 0.001 px).
    """
    if upsample <= 1:
        return []
    final = 1.0 / upsample
    if final >= 0.2:
        return [(final, 2 * math.ceil((uncertainty + 0.2) / final) + 1)]
    return [(0.2, 2 * math.ceil((uncertainty + 0.2) / 0.2) + 1), (0.2, 3)]


def _quadratic_vertex(patch: np.ndarray) -> tuple[float, float]:
    """Vertex (row, col offsets in grid steps) of a 2-D quadratic fitted to a 3 x 3 patch.

    Includes the cross term, which separate 1-D parabolas ignore (biased for a tilted peak).
    Returns (0, 0) if the fit is not a maximum; offsets are clipped to one step.
    """
    p = np.asarray(patch, dtype=np.float64)
    dy = (p[2, :].sum() - p[0, :].sum()) / 6.0
    dx = (p[:, 2].sum() - p[:, 0].sum()) / 6.0
    dyy = (p[0, :].sum() - 2.0 * p[1, :].sum() + p[2, :].sum()) / 3.0
    dxx = (p[:, 0].sum() - 2.0 * p[:, 1].sum() + p[:, 2].sum()) / 3.0
    dxy = (p[2, 2] - p[2, 0] - p[0, 2] + p[0, 0]) / 4.0
    det = dyy * dxx - dxy * dxy
    if not (dyy < 0 and det > 0):
        return 0.0, 0.0
    oy = (-dxx * dy + dxy * dx) / det
    ox = (-dyy * dx + dxy * dy) / det
    return float(np.clip(oy, -1.0, 1.0)), float(np.clip(ox, -1.0, 1.0))


def _parabolic_offset(minus: float, centre: float, plus: float) -> float:
    """Vertex offset in [-0.5, 0.5] of the parabola through three equally spaced samples."""
    curvature = minus - 2.0 * centre + plus
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


#: Peak-core widths of phase-normalised searches, per (grid, lowpass, minimum exclusion).
_PHASE_CORE_WIDTH: dict[tuple[object, ...], int] = {}


class PhaseCorrelator:
    """Estimate the shift of frames relative to a fixed reference by phase correlation.

    The reference spectra and all large work buffers are computed once, so repeated calls to
    :meth:`estimate` pay for one full-resolution forward FFT (plus a quarter-size FFT pair for
    a full search) and a few fused element-wise passes. An instance is not thread-safe (it
    reuses buffers): use one per thread.

    Parameters
    ----------
    reference : numpy.ndarray
        2-D reference image (absorption images are recommended: they are mass-additive).
    upsample : int
        Sub-pixel resolution is ``1 / upsample`` analysed pixel. Beyond 100 nothing is gained
        (the remaining error is model bias, not quantisation).
    binning : int
        Block-sum ``binning x binning`` pixels before correlating (speed). Shifts are returned
        in full-resolution pixels.
    window : {None, "hann", "tukey"}
        Optional apodisation; rarely useful with ``periodic_smooth`` (which removes the edge
        discontinuity without discarding the frame border).
    lowpass : float or None
        Standard deviation, in analysed (binned) pixels, of a Gaussian that smooths the
        correlation surface (a Gaussian low-pass on the cross-power spectrum). The default 2.0
        was the best of 1.0, 1.5 and 2.0 for the default normalisation on both simulator
        projections and blob textures at 100-10000 counts/px. ``None`` disables it (not
        advisable: the band-pass weight then grows up to the Nyquist frequency).
    mask : numpy.ndarray, optional
        Weights in [0, 1] (or boolean) with the frame's shape, applied identically to reference
        and frames after removing the weighted mean, e.g. to keep only the sample. The mask is
        fixed on the detector: it must contain the sample with a margin larger than the shifts.
    roi : tuple of int, optional
        ``(row_start, row_stop, col_start, col_stop)`` sub-rectangle to analyse.
    periodic_smooth : bool
        Apply the periodic-plus-smooth decomposition to both images (removes the bias from
        content entering or leaving the frame). Keep it on unless you know why.
    normalisation : {"bandpass", "phase", "none"}
        ``"bandpass"`` (default): phase-normalised search, band-pass weighted refinement;
        ``"phase"``: classic phase correlation (cross-power divided by its magnitude);
        ``"none"``: plain cross-correlation. See the module notes.
    fft_size : {"trim", "pad"}
        How to reach an FFT-friendly size: ``"trim"`` (default) analyses the largest fast size
        that fits (drops at most a few edge pixels and keeps the periodic-smooth decomposition
        exact); ``"pad"`` zero-pads to :func:`scipy.fft.next_fast_len` after removing the mean.
    coarse_search : bool
        Find the integer peak of a full search on a half-resolution correlation surface
        (inverse FFT of the central half of the cross-power spectrum, 4x fewer points; the
        matrix-DFT refinement then starts from +-1 pixel). Used for analysed frames of at
        least 256 pixels on a side; saves most of the inverse FFT.
    refine_overlap : bool, optional
        Default: on. After the first estimate, crop reference and
        frame to their common area (shifted by the integer part of the shift) and refine the
        sub-pixel remainder on these crops, so content that entered or left the frame no
        longer biases it. Costs one forward FFT of the frame crop (the full search
        then runs on a 2x2-binned copy for frames of 512 px and more). Measured on 256²
        noiseless textures with shifts up to 15 px: 0.006 px RMS instead of 0.066. Without
        it, ``"bandpass"`` refines on the phase-normalised search spectrum. Ignores
        ``window``. A ``mask`` is applied on the content: to the
        reference crop and to the frame crop at the same content position (so near the
        mask border the frame is weighted up to one shift away from the fixed mask).
    workers : int, optional
        Threads for ``scipy.fft``; default all CPUs available to the process. Use 1 when
        several frames are processed in parallel threads.
    saturation_value, max_saturated_fraction
        Passed to :func:`~tomolock.service.estimate.validate.check_frame` for every frame.

    Raises
    ------
    InvalidFrameError
        If the reference is unusable.
    ValueError
        If an option is out of range or inconsistent with the reference.
    """

    def __init__(
        self,
        reference: np.ndarray,
        *,
        upsample: int = 100,
        binning: int = 1,
        window: Window = None,
        lowpass: float | None = 2.0,
        mask: np.ndarray | None = None,
        roi: tuple[int, int, int, int] | None = None,
        periodic_smooth: bool = True,
        normalisation: Normalisation = "bandpass",
        fft_size: FFTSize = "trim",
        coarse_search: bool = True,
        refine_overlap: bool | None = None,
        workers: int | None = None,
        saturation_value: float | None = None,
        max_saturated_fraction: float = 0.05,
    ) -> None:
        if int(upsample) != upsample or upsample < 1:
            raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
        if int(binning) != binning or binning < 1:
            raise ValueError(f"binning must be a positive integer, got {binning!r}")
        if window not in (None, "hann", "tukey"):
            raise ValueError(f"window must be None, 'hann' or 'tukey', got {window!r}")
        if lowpass is not None and not (np.isfinite(lowpass) and lowpass > 0):
            raise ValueError(f"lowpass must be a positive number of pixels, got {lowpass!r}")
        if normalisation not in ("bandpass", "phase", "none"):
            raise ValueError(
                f"normalisation must be 'bandpass', 'phase' or 'none', got {normalisation!r}"
            )
        if fft_size not in ("trim", "pad"):
            raise ValueError(f"fft_size must be 'trim' or 'pad', got {fft_size!r}")
        if workers is not None and (int(workers) != workers or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.upsample = int(upsample)
        self.binning = int(binning)
        self.window = window
        self.lowpass = None if lowpass is None else float(lowpass)
        self.periodic_smooth = bool(periodic_smooth)
        self.normalisation = normalisation
        self.fft_size = fft_size
        self.workers = int(workers) if workers is not None else _default_workers()
        self.saturation_value = saturation_value
        self.max_saturated_fraction = max_saturated_fraction
        self._roi_spec = roi
        self._mask_input = mask
        self.coarse_search = bool(coarse_search)
        self.refine_overlap = True if refine_overlap is None else bool(refine_overlap)
        self._frame_shape: tuple[int, int] | None = None
        self.set_reference(reference)

    # ------------------------------------------------------------------ geometry / buffers
    @property
    def _search_phase(self) -> bool:
        """Whether the peak search runs on the phase-normalised cross-power spectrum."""
        return self.normalisation != "none"

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape frames must have (the reference's)."""
        assert self._frame_shape is not None
        return self._frame_shape

    @property
    def analysed_shape(self) -> tuple[int, int]:
        """Shape of the image actually correlated (after ROI, binning and trimming)."""
        return self._analysed

    @property
    def fft_shape(self) -> tuple[int, int]:
        """Shape of the FFT grid."""
        return self._grid

    def _setup_geometry(self, shape: tuple[int, int]) -> None:
        rows, cols = shape
        if self._roi_spec is None:
            r0, r1, c0, c1 = 0, rows, 0, cols
        else:
            if len(self._roi_spec) != 4:
                raise ValueError(
                    f"roi must be (row_start, row_stop, col_start, col_stop), got {self._roi_spec}"
                )
            r0, r1, c0, c1 = (int(v) for v in self._roi_spec)
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise ValueError(f"roi {self._roi_spec} does not fit inside a {shape} frame")
        self._roi = (slice(r0, r1), slice(c0, c1))
        binned = ((r1 - r0) // self.binning, (c1 - c0) // self.binning)
        if min(binned) < 8:
            raise ValueError(
                f"the analysed area {binned} (roi {r1 - r0}x{c1 - c0}, binning {self.binning}) "
                "is smaller than 8 pixels on a side"
            )
        if self.fft_size == "trim":
            grid = tuple(scipy.fft.prev_fast_len(n, real=True) for n in binned)
            analysed = grid
        else:
            grid = tuple(scipy.fft.next_fast_len(n, real=True) for n in binned)
            analysed = binned
        self._binned_shape = binned
        self._analysed = (int(analysed[0]), int(analysed[1]))
        self._grid = (int(grid[0]), int(grid[1]))
        m, n = self._grid
        half = n // 2 + 1
        # Persistent buffers: the hot path writes into these instead of allocating.
        self._work = np.zeros(self._grid, np.float32)
        self._bin_buf = np.empty(binned, np.float32) if self.binning > 1 else None
        self._cross = np.empty((m, half), np.complex64)
        self._mag = np.empty((m, half), np.float32)
        self._tmp = np.empty((m, half), np.complex64)
        self._ps = periodic_smooth_tables(self._grid) if self.periodic_smooth else None
        self._window2d = self._make_window() if self.window else None
        self._weights, self._weight_sum = self._make_mask(shape)
        self._lowpass_w = self._make_lowpass()
        self._coarse_grid = (m // 2 - m // 2 % 2, n // 2 - n // 2 % 2)
        self._use_coarse = self.coarse_search and min(m, n) >= 256
        self._coarse_buf = (
            np.empty((self._coarse_grid[0], self._coarse_grid[1] // 2 + 1), np.complex64)
            if self._use_coarse
            else None
        )
        self._min_exclusion = 4 + math.ceil(3 * (self.lowpass or 0.0))
        self._exclusion = self._min_exclusion

    def _make_window(self) -> np.ndarray:
        rows, cols = self._analysed
        if self.window == "hann":
            wr, wc = windows.hann(rows, sym=False), windows.hann(cols, sym=False)
        else:
            wr, wc = windows.tukey(rows, alpha=0.25), windows.tukey(cols, alpha=0.25)
        return np.outer(wr, wc).astype(np.float32)

    def _make_mask(self, shape: tuple[int, int]) -> tuple[np.ndarray | None, float]:
        if self._mask_input is None:
            return None, 0.0
        mask = np.asarray(self._mask_input)
        if mask.shape != shape:
            raise ValueError(f"mask shape {mask.shape} does not match the frame shape {shape}")
        mask = mask.astype(np.float32)
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask weights must be finite and within [0, 1]")
        region = mask[self._roi]
        if self.binning > 1:
            binned = np.empty(self._binned_shape, np.float32)
            region = bin_sum(region, self.binning, binned) / self.binning**2
        self._weights_binned = np.ascontiguousarray(region, dtype=np.float32)
        weights = np.ascontiguousarray(region[: self._analysed[0], : self._analysed[1]])
        total = float(weights.sum())
        if total < 16:
            raise ValueError(
                f"mask keeps only {total:.1f} effective pixels of the analysed area; need >= 16"
            )
        return weights, total

    def _make_lowpass(self) -> np.ndarray | None:
        return None if self.lowpass is None else gaussian_lowpass(self._grid, self.lowpass)

    # ------------------------------------------------------------------ reference
    @blas_single_threaded
    def set_reference(self, reference: np.ndarray) -> None:
        """Replace the reference image and cache its spectrum.

        Parameters
        ----------
        reference : numpy.ndarray
            2-D image. A different shape than before rebuilds all buffers.

        Raises
        ------
        InvalidFrameError
            If the reference is unusable.
        """
        ref = check_frame(
            reference,
            saturation_value=self.saturation_value,
            max_saturated_fraction=self.max_saturated_fraction,
            name="reference",
        )
        if ref.shape != self._frame_shape:
            self._setup_geometry(ref.shape)
            self._frame_shape = ref.shape
        work = self._prepare(ref)
        self._ref_region = np.array(self._last_region, dtype=np.float32)
        self._crop_cache: dict[tuple[int, int], np.ndarray] = {}
        if not np.ptp(work[: self._analysed[0], : self._analysed[1]]) > 0:
            raise InvalidFrameError("reference is constant inside the analysed area (roi/mask)")
        spectrum = self._spectrum(work)
        self._ref_conj = np.conj(spectrum)
        if not self._search_phase and self._lowpass_w is not None:
            self._ref_conj *= self._lowpass_w  # a fixed weight costs nothing per frame here
        self._exclusion = self._peak_core_width(spectrum)
        self._pyramid = self._make_pyramid()

    def _make_pyramid(self) -> PhaseCorrelator | None:
        """Half-resolution correlator that finds the shift to ~0.2 px before the overlap step.

        With the overlap refinement the full-resolution spectrum of the whole frame is not
        needed: a 2x2-binned search (4x fewer pixels) locates the shift well enough to align
        the crops, whose full-resolution spectrum then gives the final sub-pixel value.
        """
        if not (self.refine_overlap and min(self._binned_shape) >= 256):
            return None
        return PhaseCorrelator(
            self._ref_region,
            upsample=10,
            binning=2,
            lowpass=self.lowpass,
            mask=self._weights_binned if self._weights is not None else None,
            periodic_smooth=self.periodic_smooth,
            normalisation=self.normalisation,
            coarse_search=True,
            refine_overlap=False,
            workers=self.workers,
            max_saturated_fraction=1.0,
        )

    def _peak_core_width(self, spectrum: np.ndarray) -> int:
        """Half-width of the reference's own correlation peak (exclusion for the 2nd peak).

        The autocorrelation of the reference, weighted like a cross-power spectrum, is the
        shape of the correlation peak of a perfect match. Everything above 10 % of its maximum
        belongs to the main peak, not to a competitor. Computed once per reference.
        """
        if self._search_phase:
            # Phase-normalised search: the peak shape is the low-pass kernel's, whatever the
            # reference, so it is computed once per geometry (it cost ~115 ms per reference
            # at 2048², and a scan uses a new reference for every projection).
            key = (self._grid, self.lowpass, self._min_exclusion)
            width = _PHASE_CORE_WIDTH.get(key)
            if width is None:
                ones = np.ones(spectrum.shape, np.float32)
                width = self._core_width_of(ones)
                _PHASE_CORE_WIDTH[key] = width
            return width
        return self._core_width_of(np.abs(spectrum) ** 2)

    def _core_width_of(self, power: np.ndarray) -> int:
        """Chebyshev half-width of the autocorrelation core of a (weighted) power spectrum."""
        if self._lowpass_w is not None:
            power *= self._lowpass_w
        power[0, 0] = 0.0
        auto = scipy.fft.irfft2(power, s=self._grid, workers=self.workers)
        m, n = self._grid
        dist_y = np.minimum(np.arange(m), m - np.arange(m))[:, None]
        dist_x = np.minimum(np.arange(n), n - np.arange(n))[None, :]
        core = np.maximum(dist_y, dist_x)[auto > 0.1 * auto[0, 0]]
        width = int(core.max()) + 1 if core.size else 0
        return int(min(max(width, self._min_exclusion), min(m, n) // 4))

    # ------------------------------------------------------------------ hot path
    def _region(self, image: np.ndarray) -> np.ndarray:
        """ROI crop and binning (a view, or the persistent binning buffer)."""
        region = image[self._roi]
        if self._bin_buf is not None:
            region = bin_sum(region, self.binning, self._bin_buf)
        return region

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """Crop, bin, mask/window ``image`` into the persistent work buffer."""
        region = self._region(image)
        self._last_region = region  # kept for the overlap refinement
        rows, cols = self._analysed
        region = region[:rows, :cols]
        target = self._work[:rows, :cols]
        if self._weights is not None:
            mean = float(np.vdot(self._weights, region.astype(np.float32, copy=False)))
            np.subtract(region, mean / self._weight_sum, out=target, casting="unsafe")
            target *= self._weights
        elif self._window2d is not None or self.fft_size == "pad":
            np.subtract(region, region.mean(dtype=np.float64), out=target, casting="unsafe")
            if self._window2d is not None:
                target *= self._window2d
        else:
            np.copyto(target, region, casting="unsafe")
        return self._work

    def _spectrum(self, work: np.ndarray) -> np.ndarray:
        """Forward FFT of the work buffer minus the smooth component (periodic part)."""
        jumps = self._ps.jump_spectra(work, self.workers) if self._ps is not None else None
        spectrum = scipy.fft.rfft2(work, workers=self.workers, overwrite_x=True)
        if jumps is not None:
            a, b = jumps
            spectrum -= self._ps.g_row * a[None, :]
            spectrum -= self._ps.g_col * b[:, None]
        return spectrum

    def _cross_power(self, work: np.ndarray) -> float:
        """Fill ``self._cross`` with the weighted cross-power; return the sum of its magnitude."""
        jumps = self._ps.jump_spectra(work, self.workers) if self._ps is not None else None
        spectrum = scipy.fft.rfft2(work, workers=self.workers, overwrite_x=True)
        return fused_cross_power(
            spectrum,
            self._grid[1],
            jumps,
            self._ps,
            self._ref_conj,
            self._cross,
            self._mag,
            self._tmp,
            phase=self._search_phase,
            lowpass=self._lowpass_w,
        )

    @blas_single_threaded
    def estimate(
        self,
        frame: np.ndarray,
        *,
        predicted: tuple[float, float] | None = None,
        search_radius: float | None = None,
    ) -> ShiftEstimate:
        """Estimate the shift of ``frame`` relative to the reference.

        Parameters
        ----------
        frame : numpy.ndarray
            2-D image with the reference's shape.
        predicted : tuple of float, optional
            Expected ``(dy, dx)`` in full-resolution pixels. With ``search_radius`` the search
            is restricted to that neighbourhood (no inverse FFT when a local matrix DFT is
            cheaper), which is faster and immune to far-away spurious peaks.
        search_radius : float, optional
            Half-width (full-resolution pixels) of the square searched around ``predicted``
            (around 0 when ``predicted`` is omitted).

        Returns
        -------
        ShiftEstimate
            ``dy, dx`` in full-resolution pixels, content moved by ``+dy, +dx``.

        Raises
        ------
        InvalidFrameError
            If the frame is unusable or its shape differs from the reference's.
        ValueError
            If ``predicted`` is given without ``search_radius`` or the radius is invalid.
        """
        if predicted is not None and search_radius is None:
            raise ValueError("predicted requires search_radius (the half-width to search)")
        if search_radius is not None and not (np.isfinite(search_radius) and search_radius >= 0):
            raise ValueError(f"search_radius must be a finite number >= 0, got {search_radius!r}")
        if predicted is not None and (len(predicted) != 2 or not np.all(np.isfinite(predicted))):
            raise ValueError(f"predicted must be a finite (dy, dx) pair, got {predicted!r}")
        raw = check_frame(
            frame,
            expected_shape=self.frame_shape,
            saturation_value=self.saturation_value,
            max_saturated_fraction=self.max_saturated_fraction,
        )
        if search_radius is None and self._pyramid is not None:
            region = self._region(raw)
            coarse = self._pyramid._estimate_checked(region, None, None)
            self._last_region = region
            ky, kx = round(coarse.dy), round(coarse.dx)
            overlap = self._overlap_cross(ky, kx)
            if overlap is not None and coarse.peak > 0:
                cross, grid, norm = overlap
                y, x, value = self._refine(cross, grid, coarse.dy - ky, coarse.dx - kx, 0.5)
                ratio = coarse.peak_ratio
                second = 1.0 / ratio if np.isfinite(ratio) and ratio > 0 else float("nan")
                if ratio == np.inf:
                    second = 0.0
                return self._result(y + ky, x + kx, value, norm, 1.0, second, "full+overlap")
        return self._estimate_checked(raw, predicted, search_radius)

    def _estimate_checked(
        self,
        raw: np.ndarray,
        predicted: tuple[float, float] | None,
        search_radius: float | None,
    ) -> ShiftEstimate:
        """Estimate for a frame that passed the checks (shared with the pyramid level)."""
        if search_radius is not None and self.refine_overlap:
            # Online path: the prediction aligns the crops before anything is transformed, so
            # one forward FFT of the frame crop serves both the local search and refinement.
            self._last_region = self._region(raw)
            found = self._aligned_local_estimate(predicted or (0.0, 0.0), float(search_radius))
            if found is not None:
                y, x, value, norm, first, second = found
                return self._result(y, x, value, norm, first, second, "local+overlap")
        work = self._prepare(raw)
        total = self._cross_power(work)
        norm = total / (self._grid[0] * self._grid[1])
        if norm <= 0:
            return ShiftEstimate(0.0, 0.0, 0.0, 0.0, float("nan"), f"{self.normalisation}/none")
        uncertainty = 0.5
        if search_radius is None and self._use_coarse:
            iy, ix, first, second = self._coarse_full_search()
            method, uncertainty = "full", 1.0
        elif search_radius is None:
            iy, ix, first, second = self._full_search()
            method = "full"
        else:
            centre = (0.0, 0.0) if predicted is None else predicted
            ys, xs = self._window_points(centre, float(search_radius), self._grid)
            iy, ix, first, second = self._local_search(self._cross, self._grid, ys, xs)
            method = "local"
        ky, kx = round(iy), round(ix)
        # The band-pass refinement weights exist only on the overlap crops: always use them.
        aligned = (
            (ky, kx) != (0, 0)
            or self._binned_shape != self._grid
            or self.normalisation == "bandpass"
        )
        overlap = self._overlap_cross(ky, kx) if self.refine_overlap and aligned else None
        if overlap is None:
            y, x, value = self._refine(self._cross, self._grid, iy, ix, uncertainty)
        else:
            # The integer part of the shift aligns the crops; only a remainder is refined.
            cross, grid, norm = overlap
            y, x, value = self._refine(cross, grid, iy - ky, ix - kx, uncertainty)
            y, x = y + ky, x + kx
            method += "+overlap"
        return self._result(y, x, value, norm, first, second, method)

    def _aligned_local_estimate(
        self, centre: tuple[float, float], radius: float
    ) -> tuple[float, float, float, float, float, float] | None:
        b = self.binning
        ky, kx = round(centre[0] / b), round(centre[1] / b)
        overlap = self._overlap_cross(ky, kx)
        if overlap is None:
            return None
        cross, grid, norm = overlap
        if norm <= 0:
            return None
        ys, xs = self._window_points((centre[0] - ky * b, centre[1] - kx * b), radius, grid)
        iy, ix, first, second = self._local_search(cross, grid, ys, xs)
        y, x, value = self._refine(cross, grid, iy, ix, 0.5)
        return y + ky, x + kx, value, norm, first, second

    def _result(
        self,
        y: float,
        x: float,
        value: float,
        norm: float,
        first: float,
        second: float,
        method: str,
    ) -> ShiftEstimate:
        peak = float(np.clip(value / norm, 0.0, 1.0))
        # Primary and secondary peak come from the same (integer-grid) surface.
        if np.isnan(second):
            ratio = float("nan")
            confidence = peak
        elif first <= 0:
            ratio, confidence = float("nan"), 0.0
        else:
            ratio = float("inf") if second <= 0 else first / second
            confidence = float(np.clip(1.0 - second / first, 0.0, 1.0))
        b = self.binning
        return ShiftEstimate(
            dy=float(y * b),
            dx=float(x * b),
            confidence=confidence,
            peak=peak,
            peak_ratio=ratio,
            method=f"{self.normalisation}/{method}",
        )

    def _refine(
        self, cross: np.ndarray, grid: tuple[int, int], y: float, x: float, uncertainty: float
    ) -> tuple[float, float, float]:
        """Two-stage matrix-DFT refinement of a peak known to within ``uncertainty`` px."""
        value = -np.inf
        band = band_limit(grid, self.lowpass)
        for spacing, points in _refine_stages(self.upsample, uncertainty):
            offsets = (np.arange(points) - points // 2) * spacing
            for _ in range(8):
                patch = dft_patch(cross, grid, y + offsets, x + offsets, band)
                j, i = np.unravel_index(int(np.argmax(patch)), patch.shape)
                y, x, value = y + offsets[j], x + offsets[i], float(patch[j, i])
                # A maximum on the patch border means the start point was further off than
                # assumed: look again around it.
                if 0 < j < points - 1 and 0 < i < points - 1:
                    break
            if self.upsample <= 5:
                continue  # a coarse-resolution request stays on its grid
            if 0 < j < points - 1 and 0 < i < points - 1:
                # Least-squares quadratic on the maximum and its 8 neighbours: the next
                # grid is centred on its vertex, and the last vertex is the answer.
                oy, ox = _quadratic_vertex(patch[j - 1 : j + 2, i - 1 : i + 2])
                y, x = y + spacing * oy, x + spacing * ox
        if not np.isfinite(value):  # upsample == 1: the integer peak is the answer
            value = float(dft_patch(cross, grid, np.array([y]), np.array([x]), band)[0, 0])
        return float(y), float(x), value

    def _overlap_cross(self, ky: int, kx: int) -> tuple[np.ndarray, tuple[int, int], float] | None:
        """Cross-power of reference and frame cropped to their common area.

        The frame crop is taken ``(ky, kx)`` analysed pixels further along the shift, so both
        crops hold the same content up to a remainder and nothing enters or leaves. Returns
        ``None`` when the overlap is too small.
        """
        rows, cols = self._binned_shape
        crop_r = scipy.fft.prev_fast_len(rows - abs(ky), real=True) if rows > abs(ky) else 0
        crop_c = scipy.fft.prev_fast_len(cols - abs(kx), real=True) if cols > abs(kx) else 0
        if min(crop_r, crop_c) < 16:
            return None
        r0, c0 = max(0, -ky), max(0, -kx)
        grid = (crop_r, crop_c)
        frame = flat_view(self._work, grid)
        view = self._last_region[r0 + ky : r0 + ky + crop_r, c0 + kx : c0 + kx + crop_c]
        weights = None
        if self._weights is not None:
            weights = self._weights_binned[r0 : r0 + crop_r, c0 : c0 + crop_c]
            if weights.sum() < 16:
                return None
            mean = float(np.vdot(weights, view.astype(np.float32, copy=False)))
            np.subtract(view, mean / float(weights.sum()), out=frame, casting="unsafe")
            frame *= weights
        else:
            np.copyto(frame, view, casting="unsafe")
        ref_conj = self._reference_crop_conj(ky, kx, grid, weights)
        tables = periodic_smooth_tables(grid) if self.periodic_smooth else None
        if tables is None:
            frame -= frame.mean(dtype=np.float64)
        jumps = tables.jump_spectra(frame, self.workers) if tables is not None else None
        spectrum = scipy.fft.rfft2(frame, workers=self.workers, overwrite_x=True)
        half = (crop_r, crop_c // 2 + 1)
        cross = flat_view(self._cross, half)
        total = fused_cross_power(
            spectrum,
            crop_c,
            jumps,
            tables,
            ref_conj,
            cross,
            flat_view(self._mag, half),
            flat_view(self._tmp, half),
            phase=self.normalisation == "phase",
            lowpass=gaussian_lowpass(grid, self.lowpass) if self.lowpass is not None else None,
        )
        return cross, grid, total / (crop_r * crop_c)

    def _reference_crop_conj(
        self, ky: int, kx: int, grid: tuple[int, int], weights: np.ndarray | None
    ) -> np.ndarray:
        """Conjugate periodic spectrum of the reference crop; cached (the drift is slow)."""
        key = (ky, kx)
        cached = self._crop_cache.get(key)
        if cached is not None:
            return cached
        r0, c0 = max(0, -ky), max(0, -kx)
        ref = np.array(self._ref_region[r0 : r0 + grid[0], c0 : c0 + grid[1]])
        if weights is not None:
            ref = (ref - float(np.vdot(weights, ref)) / float(weights.sum())) * weights
        conj = np.conj(periodic_spectrum(ref, self.workers, self.periodic_smooth))
        # Fixed refinement weights are folded into the cached reference: free per frame.
        if self.normalisation == "bandpass":
            conj *= bandpass_weights(grid, self.lowpass)
        elif self.normalisation == "none" and self.lowpass is not None:
            conj *= gaussian_lowpass(grid, self.lowpass)
        if len(self._crop_cache) >= 4:
            self._crop_cache.pop(next(iter(self._crop_cache)))
        self._crop_cache[key] = conj
        return conj

    def _full_search(self) -> tuple[int, int, float, float]:
        m, n = self._grid
        surface = scipy.fft.irfft2(self._cross, s=self._grid, workers=self.workers)
        i, j = np.unravel_index(int(np.argmax(surface)), surface.shape)
        first = float(surface[i, j])
        e = self._exclusion
        rows = np.arange(i - e, i + e + 1) % m
        cols = np.arange(j - e, j + e + 1) % n
        surface[np.ix_(rows, cols)] = -np.inf
        second = float(surface.max())
        # Wrap to signed shifts: the largest recoverable shift is just under half the grid.
        iy = int(i) - m if i > m // 2 else int(i)
        ix = int(j) - n if j > n // 2 else int(j)
        return iy, ix, first, second

    def _coarse_full_search(self) -> tuple[float, float, float, float]:
        """Integer-peak search on the surface of the central half of the spectrum.

        Returns the peak position in analysed pixels (sub-pixel, from a parabolic fit, good to
        about a pixel), and ``(first, second)`` as a ratio pair on the coarse surface.
        """
        mc, nc = self._coarse_grid
        buf = self._coarse_buf
        assert buf is not None
        half_rows = mc // 2
        buf[:half_rows] = self._cross[:half_rows, : buf.shape[1]]
        buf[half_rows:] = self._cross[-half_rows:, : buf.shape[1]]
        surface = scipy.fft.irfft2(buf, s=self._coarse_grid, workers=self.workers)
        i, j = np.unravel_index(int(np.argmax(surface)), surface.shape)
        first = float(surface[i, j])
        fy = _parabolic_offset(surface[(i - 1) % mc, j], first, surface[(i + 1) % mc, j])
        fx = _parabolic_offset(surface[i, (j - 1) % nc], first, surface[i, (j + 1) % nc])
        e = max(1, math.ceil(self._exclusion / 2))
        rows = np.arange(i - e, i + e + 1) % mc
        cols = np.arange(j - e, j + e + 1) % nc
        surface[np.ix_(rows, cols)] = -np.inf
        second = float(surface.max())
        ci = int(i) - mc if i > mc // 2 else int(i)
        cj = int(j) - nc if j > nc // 2 else int(j)
        # Coarse pixels are two analysed pixels.
        return 2.0 * (ci + fy), 2.0 * (cj + fx), first, second

    def _window_points(
        self, centre: tuple[float, float], radius: float, grid: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Integer grid points (analysed px) of the search square around ``centre`` (full px)."""
        b = self.binning
        half = math.ceil(radius / b)
        if 2 * half + 1 > min(grid) // 2:
            raise ValueError(
                f"search_radius {radius} px covers more than half of the analysed frame; "
                "use a full search (search_radius=None)"
            )
        ys = round(centre[0] / b) + np.arange(-half, half + 1)
        xs = round(centre[1] / b) + np.arange(-half, half + 1)
        return ys, xs

    def _local_search(
        self, cross: np.ndarray, grid: tuple[int, int], ys: np.ndarray, xs: np.ndarray
    ) -> tuple[int, int, float, float]:
        m, n = grid
        # A matrix DFT costs ~ points x M x N/2 complex MACs through BLAS; an inverse FFT
        # ~ M N log2(M N) in pocketfft. Measured break-even: ~2 log2(M N) points.
        if ys.size <= 2 * math.log2(m * n):
            band = band_limit(grid, self.lowpass)
            values = dft_patch(cross, grid, ys.astype(float), xs.astype(float), band)
        else:
            surface = scipy.fft.irfft2(cross, s=grid, workers=self.workers)
            values = surface[np.ix_(ys % m, xs % n)].astype(np.float64)
        j, i = np.unravel_index(int(np.argmax(values)), values.shape)
        first = float(values[j, i])
        e = self._exclusion
        yy, xx = np.ogrid[: values.shape[0], : values.shape[1]]
        outside = (np.abs(yy - j) > e) | (np.abs(xx - i) > e)
        second = float(values[outside].max()) if outside.any() else float("nan")
        return int(ys[j]), int(xs[i]), first, second


def phase_correlate(
    reference: np.ndarray,
    frame: np.ndarray,
    *,
    predicted: tuple[float, float] | None = None,
    search_radius: float | None = None,
    **options: object,
) -> ShiftEstimate:
    """Estimate the shift of ``frame`` relative to ``reference`` in one call.

    Parameters
    ----------
    reference, frame : numpy.ndarray
        2-D images of equal shape.
    predicted, search_radius
        See :meth:`PhaseCorrelator.estimate`.
    **options
        Keyword arguments of :class:`PhaseCorrelator` (``upsample``, ``binning``, ``window``,
        ``lowpass``, ``mask``, ``roi``, ``periodic_smooth``, ...).

    Returns
    -------
    ShiftEstimate
        Content of ``frame`` moved by ``(+dy, +dx)`` pixels relative to ``reference``.
    """
    correlator = PhaseCorrelator(reference, **options)  # type: ignore[arg-type]
    return correlator.estimate(frame, predicted=predicted, search_radius=search_radius)
