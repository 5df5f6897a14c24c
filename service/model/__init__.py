"""Drift model: runout harmonics, thermal drift, sensor fusion, prediction (pure computation).

Public API
----------
- :class:`RunoutModel`: weighted least-squares runout calibration from a sweep.
- :class:`DriftFusion`: Kalman filter fusing image / interferometer / microscope feeds and
  predicting the drift at the next exposure; configured by :class:`FusionConfig` and
  :class:`SourceConfig`; fed :class:`Measurement`, answers :class:`UpdateResult` and
  :class:`Prediction`.
"""

from .fusion import (
    REJECTION_REASONS,
    SOURCES,
    DriftFusion,
    FusionConfig,
    Measurement,
    Prediction,
    SourceConfig,
    UpdateResult,
    default_sources,
)
from .harmonics import harmonic_basis, largest_angular_gap_deg
from .runout import CoverageWarning, RunoutDiagnostics, RunoutModel

__all__ = [
    "REJECTION_REASONS",
    "SOURCES",
    "CoverageWarning",
    "DriftFusion",
    "FusionConfig",
    "Measurement",
    "Prediction",
    "RunoutDiagnostics",
    "RunoutModel",
    "SourceConfig",
    "UpdateResult",
    "default_sources",
    "harmonic_basis",
    "largest_angular_gap_deg",
]
