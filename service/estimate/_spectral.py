"""Low-level spectral helpers for the phase correlator (internal)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

TWO_PI = 2.0 * np.pi


def bin_sum(image: np.ndarray, factor: int, out: np.ndarray) -> np.ndarray:
    """Sum ``factor x factor`` blocks of ``image`` into ``out`` (trailing rows/cols dropped).

    Strided additions into a persistent buffer: no large temporaries, unlike a reshape-mean.
    """
    rows, cols = out.shape
    np.copyto(out, image[0 : rows * factor : factor, 0 : cols * factor : factor], casting="unsafe")
    for i in range(factor):
        for j in range(factor):
            if i or j:
                out += image[i : rows * factor : factor, j : cols * factor : factor]
    return out


class PeriodicSmooth:
    """Fourier-domain periodic-plus-smooth decomposition (Moisan 2011) for an ``rfft2`` grid.

    The smooth component's spectrum is ``S = V / (2cos(2πk/M) + 2cos(2πl/N) - 4)`` where ``V``
    is the spectrum of the boundary-jump image. ``V`` is a sum of two outer products of 1-D
    spectra of the jumps, so removing ``S`` from the image spectrum costs two 1-D FFTs and a
    few element-wise operations, no extra 2-D FFT.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        rows, cols = shape
        ky = np.arange(rows)[:, None]
        kx = np.arange(cols // 2 + 1)[None, :]
        denom = 2.0 * np.cos(TWO_PI * ky / rows) + 2.0 * np.cos(TWO_PI * kx / cols) - 4.0
        denom[0, 0] = 1.0
        inv = 1.0 / denom
        inv[0, 0] = 0.0
        # G_row multiplies the spectrum of the top/bottom jump, G_col that of the left/right one.
        self.g_row = ((1.0 - np.exp(2j * np.pi * ky / rows)) * inv).astype(np.complex64)
        self.g_col = ((1.0 - np.exp(2j * np.pi * kx / cols)) * inv).astype(np.complex64)

    def jump_spectra(self, image: np.ndarray, workers: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the 1-D spectra of the top/bottom and left/right boundary jumps."""
        import scipy.fft

        a = scipy.fft.rfft(image[-1, :] - image[0, :], workers=workers).astype(np.complex64)
        b = scipy.fft.fft(image[:, -1] - image[:, 0], workers=workers).astype(np.complex64)
        return a, b


def dft_patch(
    spectrum: np.ndarray,
    full_shape: tuple[int, int],
    ys: np.ndarray,
    xs: np.ndarray,
    band: tuple[int, int] | None = None,
) -> np.ndarray:
    """Evaluate the real inverse DFT of a half spectrum at arbitrary points (matrix DFT).

    Parameters
    ----------
    spectrum : numpy.ndarray
        ``rfft2`` half spectrum, shape ``(M, N // 2 + 1)``.
    full_shape : tuple of int
        ``(M, N)`` of the real grid.
    ys, xs : numpy.ndarray
        Row and column coordinates (pixels, any real values) to evaluate.
    band : tuple of int, optional
        ``(row_cut, col_cut)``: only bins with ``|k_row| < row_cut`` and ``k_col < col_cut``
        are summed (the others must be negligible, e.g. weighted down by a low-pass); the
        cost falls in proportion.

    Returns
    -------
    numpy.ndarray
        ``(len(ys), len(xs))`` values equal to ``irfft2(spectrum)`` at integer points.
    """
    rows, cols = full_shape
    half = spectrum.shape[1]
    row_cut, col_cut = band if band is not None else (rows, half)
    row_cut = min(row_cut, rows // 2 + 1)
    col_cut = min(col_cut, half)
    ky = np.fft.fftfreq(rows, d=1.0 / rows)
    kx = np.arange(col_cut, dtype=np.float64)
    # Phases reduced modulo 1 in float64 before the complex64 exponential keeps the precision.
    phase_y = np.mod(np.outer(ys, ky) / rows, 1.0)
    phase_x = np.mod(np.outer(kx, xs) / cols, 1.0)
    e_y = np.exp(TWO_PI * 1j * phase_y).astype(np.complex64)
    e_x = np.exp(TWO_PI * 1j * phase_x)
    # Hermitian symmetry: columns other than 0 and the Nyquist one stand for two spectra.
    mult = np.full(col_cut, 2.0)
    mult[0] = 1.0
    if cols % 2 == 0 and col_cut == half:
        mult[-1] = 1.0
    e_x = (e_x * mult[:, None]).astype(np.complex64)
    if row_cut * 2 - 1 >= rows:
        partial = e_y @ spectrum[:, :col_cut]
    else:
        # Low positive and negative row frequencies: two strided blocks (BLAS takes them as
        # they are, no copy).
        top, bottom = slice(0, row_cut), slice(rows - row_cut + 1, rows)
        partial = e_y[:, top] @ spectrum[top, :col_cut]
        partial += e_y[:, bottom] @ spectrum[bottom, :col_cut]
    return (partial @ e_x).real / (rows * cols)


def band_limit(shape: tuple[int, int], sigma: float | None, rel: float = 1e-6) -> tuple[int, int]:
    """``(row_cut, col_cut)`` of the bins where a Gaussian low-pass of ``sigma`` px exceeds ``rel``.

    Outside, the weighted cross-power is below ``rel`` of its peak weight and can be skipped.
    """
    rows, cols = shape
    if sigma is None:
        return rows, cols // 2 + 1
    f_cut = math.sqrt(math.log(1.0 / rel) / (2.0 * (math.pi * sigma) ** 2))
    return (
        min(rows, math.ceil(f_cut * rows) + 1),
        min(cols // 2 + 1, math.ceil(f_cut * cols) + 1),
    )


@lru_cache(maxsize=4)
def periodic_smooth_tables(shape: tuple[int, int]) -> PeriodicSmooth:
    """Return cached :class:`PeriodicSmooth` tables for a grid shape (they are read-only)."""
    return PeriodicSmooth(shape)


@lru_cache(maxsize=4)
def gaussian_lowpass(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Half-spectrum weights of a Gaussian of std ``sigma`` pixels on an ``rfft2`` grid."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    weights = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=8)
def bandpass_weights(shape: tuple[int, int], sigma: float | None) -> np.ndarray:
    """Half-spectrum weights ``|f| * exp(-2 (pi sigma |f|)^2)`` (``|f|`` in cycles/pixel).

    The ``|f|`` factor (a gradient-correlation weight) takes the large smooth structures,
    whose periodic components are the least shift-consistent, out of the lead; the Gaussian
    (``sigma`` pixels; omitted when None) keeps the noisy high frequencies out.
    """
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius2 = fy**2 + fx**2
    weights = np.sqrt(radius2)
    if sigma is not None:
        weights *= np.exp(-2.0 * (np.pi * sigma) ** 2 * radius2)
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def periodic_spectrum(image: np.ndarray, workers: int, periodic: bool = True) -> np.ndarray:
    """``rfft2`` of the periodic component of ``image`` (allocating; for one-off use).

    With ``periodic=False`` only the mean is removed (plain spectrum).
    """
    import scipy.fft

    if not periodic:
        return scipy.fft.rfft2(image - image.mean(), workers=workers)
    tables = periodic_smooth_tables(image.shape)
    a, b = tables.jump_spectra(image, workers)
    spectrum = scipy.fft.rfft2(image, workers=workers)
    spectrum -= tables.g_row * a[None, :]
    spectrum -= tables.g_col * b[:, None]
    return spectrum


def flat_view(buffer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Contiguous ``shape`` view on the start of a larger persistent buffer."""
    size = shape[0] * shape[1]
    if size > buffer.size:
        raise ValueError(f"buffer of {buffer.size} elements cannot hold {shape}")
    return buffer.reshape(-1)[:size].reshape(shape)


def fused_cross_power(
    spectrum: np.ndarray,
    full_cols: int,
    jumps: tuple[np.ndarray, np.ndarray] | None,
    tables: PeriodicSmooth | None,
    ref_conj: np.ndarray,
    out: np.ndarray,
    mag: np.ndarray,
    tmp: np.ndarray,
    *,
    phase: bool,
    lowpass: np.ndarray | None,
    block: int = 32,
) -> float:
    """Periodic correction, cross-power and magnitude sum, fused over row blocks.

    ``spectrum`` (the frame's ``rfft2`` on a grid ``full_cols`` wide) is modified in place
    into the periodic spectrum; ``out`` receives ``P_frame * ref_conj`` (phase-normalised and
    low-passed if asked; a fixed weight for plain correlation should already be folded into
    ``ref_conj``). Blocks keep the half-dozen element-wise passes in cache. Returns the
    full-spectrum sum of ``|out|`` (Hermitian multiplicities included), DC bin excluded;
    the DC bin of ``out`` is zeroed (it only carries the means).
    """
    rows = spectrum.shape[0]
    even = full_cols % 2 == 0
    total = 0.0
    for r0 in range(0, rows, block):
        sl = slice(r0, min(r0 + block, rows))
        u = spectrum[sl]
        t = tmp[sl]
        if jumps is not None and tables is not None:
            np.multiply(tables.g_row[sl], jumps[0][None, :], out=t)
            u -= t
            np.multiply(tables.g_col[sl], jumps[1][sl, None], out=t)
            u -= t
        r = out[sl]
        np.multiply(u, ref_conj[sl], out=r)
        m = mag[sl]
        np.abs(r, out=m)
        if phase:
            # Every bin ends with magnitude = its low-pass weight (or 1).
            np.maximum(m, _TINY, out=m)
            if lowpass is not None:
                np.divide(lowpass[sl], m, out=m)
                r *= m
                total += _half_sum(lowpass[sl], even)
            else:
                r /= m
                total += (r.shape[0]) * (2 * r.shape[1] - 1 - int(even))
        else:
            total += _half_sum(m, even)
    total -= float(abs(out[0, 0]))
    out[0, 0] = 0.0
    return total


_TINY = np.float32(np.finfo(np.float32).tiny)


def _half_sum(values: np.ndarray, even: bool) -> float:
    """Sum over the full spectrum from a half-spectrum block (Hermitian multiplicities)."""
    total = 2.0 * float(values.sum()) - float(values[:, 0].sum())
    if even:
        total -= float(values[:, -1].sum())
    return total
