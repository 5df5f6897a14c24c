"""Drift estimators: pure numpy/scipy, no I/O.

Frames go through :mod:`.validate` (clear :class:`InvalidFrameError` for unusable input),
:mod:`.normalise` (flat/dark, beam intensity, absorption), then one of the estimators:
:class:`PhaseCorrelator` against a reference, or the rotation-invariant ones in
:mod:`.invariants`. Every estimator returns numbers with a confidence.
"""

from .errors import InvalidFrameError
from .invariants import centre_of_mass, fit_com_sinusoid, mass_profile_shift, mirror_pair_offset
from .normalise import (
    FlatDarkNormaliser,
    beam_intensity_factor,
    normalise_beam_intensity,
    to_absorption,
)
from .phase_correlation import PhaseCorrelator, phase_correlate
from .types import MirrorPairOffset, ShiftEstimate, SinusoidFit
from .validate import check_frame, validate_frame

__all__ = [
    "FlatDarkNormaliser",
    "InvalidFrameError",
    "MirrorPairOffset",
    "PhaseCorrelator",
    "ShiftEstimate",
    "SinusoidFit",
    "beam_intensity_factor",
    "centre_of_mass",
    "check_frame",
    "fit_com_sinusoid",
    "mass_profile_shift",
    "mirror_pair_offset",
    "normalise_beam_intensity",
    "phase_correlate",
    "to_absorption",
    "validate_frame",
]
