"""Input checks that turn unusable frames into clear :class:`InvalidFrameError` messages."""

from __future__ import annotations

import numpy as np

from .errors import InvalidFrameError

#: dtypes a detector or a normalisation step may hand us.
SUPPORTED_DTYPES: frozenset[np.dtype] = frozenset(
    np.dtype(t)
    for t in (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)
)


def check_frame(
    frame: np.ndarray,
    *,
    expected_shape: tuple[int, int] | None = None,
    saturation_value: float | None = None,
    max_saturated_fraction: float = 0.05,
    name: str = "frame",
) -> np.ndarray:
    """Check that a frame is usable for drift estimation, without converting it.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D image; dtype uint8, uint16, uint32, int16, int32, float32 or float64.
    expected_shape : tuple of int, optional
        Required shape, usually the reference's.
    saturation_value : float, optional
        Pixel value at or above which a pixel counts as saturated. ``None`` means the dtype's
        maximum for integer frames and no saturation check for float frames.
    max_saturated_fraction : float
        Largest tolerated fraction of saturated pixels, in [0, 1].
    name : str
        Name used in error messages (``"frame"``, ``"reference"``, ...).

    Returns
    -------
    numpy.ndarray
        The input array, unchanged.

    Raises
    ------
    InvalidFrameError
        If the frame is not a 2-D non-empty array of a supported dtype, has the wrong shape,
        contains NaN or infinite values, is constant, or is too saturated.
    """
    if not 0.0 <= max_saturated_fraction <= 1.0:
        raise ValueError(f"max_saturated_fraction must be in [0, 1], got {max_saturated_fraction}")
    if not isinstance(frame, np.ndarray):
        raise InvalidFrameError(f"{name} must be a numpy array, got {type(frame).__name__}")
    if frame.ndim != 2:
        raise InvalidFrameError(f"{name} must be 2-D, got {frame.ndim}-D with shape {frame.shape}")
    if frame.size == 0:
        raise InvalidFrameError(f"{name} is empty (shape {frame.shape})")
    if frame.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(sorted(str(d) for d in SUPPORTED_DTYPES))
        raise InvalidFrameError(f"{name} has unsupported dtype {frame.dtype}; use one of {names}")
    if expected_shape is not None and frame.shape != tuple(expected_shape):
        raise InvalidFrameError(
            f"{name} shape {frame.shape} does not match the reference shape {tuple(expected_shape)}"
        )
    is_float = frame.dtype.kind == "f"
    # min/max propagate NaN and expose inf, so two reductions cover all content checks.
    lo, hi = frame.min(), frame.max()
    if is_float and not (np.isfinite(lo) and np.isfinite(hi)):
        n_nan = int(np.isnan(frame).sum())
        n_inf = int(np.isinf(frame).sum())
        raise InvalidFrameError(f"{name} contains {n_nan} NaN and {n_inf} infinite pixel(s)")
    if lo == hi:
        raise InvalidFrameError(f"{name} is constant (every pixel = {lo}); it carries no texture")
    if saturation_value is None and not is_float:
        saturation_value = float(np.iinfo(frame.dtype).max)
    if saturation_value is not None and hi >= saturation_value:
        fraction = np.count_nonzero(frame >= saturation_value) / frame.size
        if fraction > max_saturated_fraction:
            raise InvalidFrameError(
                f"{name} is saturated: {fraction:.1%} of pixels >= {saturation_value:g} "
                f"(limit {max_saturated_fraction:.1%})"
            )
    return frame


def validate_frame(
    frame: np.ndarray,
    *,
    expected_shape: tuple[int, int] | None = None,
    saturation_value: float | None = None,
    max_saturated_fraction: float = 0.05,
    name: str = "frame",
) -> np.ndarray:
    """Check that a frame is usable for drift estimation and return it as float32.

    See :func:`check_frame` for the checks; this adds the float32 conversion.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D image; dtype uint8, uint16, uint32, int16, int32, float32 or float64.
    expected_shape : tuple of int, optional
        Required shape, usually the reference's.
    saturation_value : float, optional
        Pixel value at or above which a pixel counts as saturated. ``None`` means the dtype's
        maximum for integer frames and no saturation check for float frames.
    max_saturated_fraction : float
        Largest tolerated fraction of saturated pixels, in [0, 1].
    name : str
        Name used in error messages (``"frame"``, ``"reference"``, ...).

    Returns
    -------
    numpy.ndarray
        The frame as float32 (no copy when it already is float32).

    Raises
    ------
    InvalidFrameError
        If the frame is not a 2-D non-empty array of a supported dtype, has the wrong shape,
        contains NaN or infinite values, is constant, or is too saturated.
    """
    checked = check_frame(
        frame,
        expected_shape=expected_shape,
        saturation_value=saturation_value,
        max_saturated_fraction=max_saturated_fraction,
        name=name,
    )
    return np.asarray(checked, dtype=np.float32)
