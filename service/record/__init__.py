"""Append-only per-scan drift log and export for reconstruction."""

from .drift_log import (
    DECISION_CODES,
    FLAG_NAMES,
    DriftLog,
    DriftLogReader,
    DriftRow,
    EstimateRecord,
    decode_flags,
    encode_flags,
    row_dtype,
    scan_filename,
)
from .export import export_shifts, residual_shifts

__all__ = [
    "DECISION_CODES",
    "FLAG_NAMES",
    "DriftLog",
    "DriftLogReader",
    "DriftRow",
    "EstimateRecord",
    "decode_flags",
    "encode_flags",
    "export_shifts",
    "residual_shifts",
    "row_dtype",
    "scan_filename",
]
