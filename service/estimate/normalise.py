"""Flat/dark correction, beam-intensity normalisation and conversion to absorption.

Estimators work on absorption images ``-log(transmission)``: they are additive in the mass
along the beam, which is what makes integrated-mass profiles and centres of mass rotation
invariant, and they remove a multiplicative beam-intensity change as a constant offset.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidFrameError
from .validate import check_frame


class FlatDarkNormaliser:
    """Accumulate dark and flat fields and normalise raw frames to transmission.

    Darks and flats are averaged by running mean (float64 accumulators), so they can be fed one
    by one as they arrive. Without darks the dark level is taken as zero.

    Parameters
    ----------
    shape : tuple of int, optional
        Frame shape; fixed by the first dark or flat when omitted.

    Examples
    --------
    >>> norm = FlatDarkNormaliser()
    >>> norm.add_dark(dark)  # doctest: +SKIP
    >>> norm.add_flat(flat)  # doctest: +SKIP
    >>> transmission = norm.normalise(raw)  # doctest: +SKIP
    """

    def __init__(self, shape: tuple[int, int] | None = None) -> None:
        self._shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self._dark: np.ndarray | None = None
        self._flat: np.ndarray | None = None
        self._n_dark = 0
        self._n_flat = 0
        self._offset: np.ndarray | None = None
        self._gain: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int] | None:
        """Frame shape, or None before the first dark/flat."""
        return self._shape

    @property
    def n_darks(self) -> int:
        """Number of dark frames averaged so far."""
        return self._n_dark

    @property
    def n_flats(self) -> int:
        """Number of flat frames averaged so far."""
        return self._n_flat

    @property
    def dark(self) -> np.ndarray | None:
        """Mean dark field (float64 copy), or None."""
        return None if self._dark is None else self._dark.copy()

    @property
    def flat(self) -> np.ndarray | None:
        """Mean flat field (float64 copy), or None."""
        return None if self._flat is None else self._flat.copy()

    def _checked(self, frame: np.ndarray, name: str) -> np.ndarray:
        # Darks may legitimately be constant (e.g. a simulated zero dark): no texture check.
        if not isinstance(frame, np.ndarray) or frame.ndim != 2 or frame.size == 0:
            shape = getattr(frame, "shape", None)
            raise InvalidFrameError(f"{name} must be a non-empty 2-D array, got shape {shape}")
        if self._shape is not None and frame.shape != self._shape:
            raise InvalidFrameError(
                f"{name} shape {frame.shape} does not match the normaliser shape {self._shape}"
            )
        data = np.asarray(frame, dtype=np.float64)
        if not np.isfinite(data).all():
            raise InvalidFrameError(f"{name} contains NaN or infinite values")
        self._shape = frame.shape
        return data

    def add_dark(self, frame: np.ndarray) -> None:
        """Add one dark frame to the running mean."""
        data = self._checked(frame, "dark")
        self._n_dark += 1
        if self._dark is None:
            self._dark = data.copy()
        else:
            self._dark += (data - self._dark) / self._n_dark
        self._offset = self._gain = None

    def add_flat(self, frame: np.ndarray) -> None:
        """Add one flat (open-beam) frame to the running mean."""
        data = self._checked(frame, "flat")
        self._n_flat += 1
        if self._flat is None:
            self._flat = data.copy()
        else:
            self._flat += (data - self._flat) / self._n_flat
        self._offset = self._gain = None

    def reset(self) -> None:
        """Forget all darks and flats (the shape stays fixed unless given anew)."""
        self._dark = self._flat = self._offset = self._gain = None
        self._n_dark = self._n_flat = 0

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is None:
            raise InvalidFrameError("no flat field yet: call add_flat() before normalise()")
        if self._offset is None or self._gain is None:
            dark = self._dark if self._dark is not None else np.zeros_like(self._flat)
            span = self._flat - dark
            bad = int(np.count_nonzero(span <= 0))
            if bad:
                raise InvalidFrameError(
                    f"flat <= dark at {bad} pixel(s) (min flat - dark = {span.min():g}); "
                    "check the flat and dark fields"
                )
            self._offset = dark.astype(np.float32)
            self._gain = (1.0 / span).astype(np.float32)
        return self._offset, self._gain

    def normalise(
        self,
        raw: np.ndarray,
        out: np.ndarray | None = None,
        *,
        saturation_value: float | None = None,
        max_saturated_fraction: float = 0.05,
    ) -> np.ndarray:
        """Return the transmission ``(raw - dark) / (flat - dark)`` as float32.

        Parameters
        ----------
        raw : numpy.ndarray
            Raw detector frame with the normaliser's shape.
        out : numpy.ndarray, optional
            float32 array of the same shape to write into (avoids an allocation).
        saturation_value, max_saturated_fraction
            Saturation check of the raw frame, see
            :func:`~tomolock.service.estimate.validate.check_frame` (saturation is invisible
            after normalisation, so it is checked here).

        Returns
        -------
        numpy.ndarray
            float32 transmission (about 1 in open beam).

        Raises
        ------
        InvalidFrameError
            If no flat was added yet, the shape differs, the frame is invalid, or
            ``flat <= dark`` somewhere.
        """
        offset, gain = self._coefficients()
        check_frame(
            raw,
            expected_shape=self._shape,
            saturation_value=saturation_value,
            max_saturated_fraction=max_saturated_fraction,
            name="raw frame",
        )
        if out is None:
            out = np.empty(self._shape, np.float32)
        elif out.shape != self._shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 with shape {self._shape}")
        np.subtract(raw, offset, out=out, casting="unsafe")
        out *= gain
        return out


def beam_intensity_factor(
    image: np.ndarray,
    *,
    background: np.ndarray | None = None,
    bright_fraction: float = 0.2,
    subsample: int = 4,
) -> float:
    """Estimate the beam-intensity scale of a transmission (or intensity) image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D transmission image (open beam ~ 1 at nominal intensity).
    background : numpy.ndarray of bool, optional
        Pixels known to be sample-free (open beam). The factor is their median.
    bright_fraction : float
        Without ``background``: the factor is the median of the brightest ``bright_fraction``
        of pixels (the open-beam part of a frame with a compact sample).
    subsample : int
        Use every ``subsample``-th pixel along each axis for the bright-fraction median
        (speed; medians of smooth fields do not need every pixel).

    Returns
    -------
    float
        Positive factor; divide the image by it to undo a beam-intensity change.

    Raises
    ------
    InvalidFrameError
        If the image is unusable or the factor is not positive.
    ValueError
        If options are out of range.
    """
    data = check_frame(image, name="image", max_saturated_fraction=1.0)
    if background is not None:
        mask = np.asarray(background, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"background mask shape {mask.shape} != image shape {data.shape}")
        if not mask.any():
            raise ValueError("background mask selects no pixel")
        factor = float(np.median(data[mask]))
    else:
        if not 0.0 < bright_fraction <= 1.0:
            raise ValueError(f"bright_fraction must be in (0, 1], got {bright_fraction}")
        if int(subsample) != subsample or subsample < 1:
            raise ValueError(f"subsample must be a positive integer, got {subsample}")
        values = data[::subsample, ::subsample].ravel()
        k = max(1, round(bright_fraction * values.size))
        brightest = np.partition(values, values.size - k)[values.size - k :]
        factor = float(np.median(brightest))
    if not factor > 0:
        raise InvalidFrameError(f"beam intensity factor is {factor:g}; expected > 0")
    return factor


def normalise_beam_intensity(
    image: np.ndarray,
    *,
    background: np.ndarray | None = None,
    bright_fraction: float = 0.2,
    subsample: int = 4,
) -> tuple[np.ndarray, float]:
    """Divide an image by its beam-intensity factor.

    Parameters
    ----------
    image, background, bright_fraction, subsample
        See :func:`beam_intensity_factor`.

    Returns
    -------
    scaled : numpy.ndarray
        float32 ``image / factor``.
    factor : float
        The factor that was divided out.
    """
    factor = beam_intensity_factor(
        image, background=background, bright_fraction=bright_fraction, subsample=subsample
    )
    return (np.asarray(image, dtype=np.float32) / np.float32(factor)), factor


def to_absorption(transmission: np.ndarray, *, floor: float = 1e-6) -> np.ndarray:
    """Convert transmission to absorption ``-log(clip(transmission, floor, None))``.

    Parameters
    ----------
    transmission : numpy.ndarray
        Transmission image (1 = no absorption). Values below ``floor`` (zero counts, noise)
        are clipped so the logarithm stays finite.
    floor : float
        Smallest transmission kept, > 0.

    Returns
    -------
    numpy.ndarray
        float32 absorption image (0 = no absorption).

    Raises
    ------
    InvalidFrameError
        If the input is not a finite 2-D array.
    ValueError
        If ``floor`` is not positive.
    """
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    if not isinstance(transmission, np.ndarray) or transmission.ndim != 2 or not transmission.size:
        shape = getattr(transmission, "shape", None)
        raise InvalidFrameError(f"transmission must be a non-empty 2-D array, got shape {shape}")
    data = np.asarray(transmission, dtype=np.float32)
    if not np.isfinite(data.sum(dtype=np.float64)):
        raise InvalidFrameError("transmission contains NaN or infinite values")
    out = np.maximum(data, np.float32(floor))
    np.log(out, out=out)
    np.negative(out, out=out)
    return out
