"""Exceptions raised by the drift estimators."""

from __future__ import annotations


class InvalidFrameError(ValueError):
    """A frame (or reference) cannot be used for drift estimation.

    Raised for frames that are not 2-D, are empty, contain NaN or infinite values, are
    constant, are too saturated, have an unsupported dtype, or do not match the shape of the
    reference. The message always names the problem and the offending value.
    """
