"""Append-only per-scan drift log in HDF5.

One file per scan, one row per projection in the chunked, resizable compound dataset
``/drift`` (see :func:`row_dtype` for the columns). Every :meth:`DriftLog.append` ends with
``h5py.File.flush()``: a row is *acknowledged* when ``append`` returns, and a writer killed
at any later moment (SIGKILL included) leaves a file that reopens with every acknowledged row
(tested). Opening an existing log of the same scan appends to it; a different scan id or
estimator list is refused.

File attributes: ``schema``, ``scan_id``, ``pixel_size_um``, ``config_json``,
``tomolock_version``, ``start_time``/``start_time_iso`` (first open), ``end_time``/
``end_time_iso`` (last clean close, NaN/"" while open or after a crash), ``estimators``,
``method_codes``, ``axes``, ``decision_codes``, ``flag_names`` (bit ``i`` of ``flags`` is
``flag_names[i]``), all JSON strings where not scalars.

SWMR is not used: after a writer crash an SWMR file stays marked "open for write" and needs
the ``h5clear`` tool before it can be read, which defeats the crash guarantee. Read the log
after the scan (or from the live service API); HDF5 file locking keeps a reader from opening
it while the writer holds it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Self

import h5py
import numpy as np

from ..feedback.interlocks import REASONS

SCHEMA = "tomolock-driftlog-1"
DATASET = "drift"
AXES: tuple[str, ...] = ("x", "y", "z")
#: Decision stored per row (code = index).
DECISION_CODES: tuple[str, ...] = ("none", "move", "hold", "refuse")
#: Flag bits: the interlock reason codes, then per-frame conditions.
FLAG_NAMES: tuple[str, ...] = (
    *REASONS,
    "estimate_failed",
    "outlier",
    "reference_changed",
    "frame_dropped",
    "applied_failed",
)
CHUNK_ROWS = 256


class EstimateRecord(NamedTuple):
    """One estimator's result for one frame: image shift, confidence and method code."""

    dy_px: float
    dx_px: float
    confidence: float
    method: int = 0


@dataclass
class DriftRow:
    """One projection's record.

    Attributes
    ----------
    frame : int
        Frame number (>= 0).
    angle_deg : float
        Rotation angle, degrees.
    t : float
        Exposure time, seconds (epoch).
    estimates : mapping of str to EstimateRecord
        Per estimator (names fixed when the log is created); missing ones are stored as NaN
        with method -1.
    residual_dy_px, residual_dx_px : float
        Best estimate of the image shift this projection carries (content moved by
        ``+dy`` rows, ``+dx`` columns vs the reference), after any correction.
    drift_um, drift_std_um : mapping of str to float
        Fused drift estimate and its one-sigma uncertainty per lab axis (x, y, z).
    applied_um : mapping of str to float
        Correction offset applied to the stage for this exposure per axis (NaN: none).
    decision : str
        One of :data:`DECISION_CODES`.
    flags : int or iterable of str
        Bitmask, or names from :data:`FLAG_NAMES`.
    """

    frame: int
    angle_deg: float
    t: float
    estimates: Mapping[str, EstimateRecord | Sequence[float]] = field(default_factory=dict)
    residual_dy_px: float = math.nan
    residual_dx_px: float = math.nan
    drift_um: Mapping[str, float] = field(default_factory=dict)
    drift_std_um: Mapping[str, float] = field(default_factory=dict)
    applied_um: Mapping[str, float] = field(default_factory=dict)
    decision: str = "none"
    flags: int | Iterable[str] = 0


def row_dtype(n_estimators: int) -> np.dtype:
    """Return the compound dtype of one log row.

    Parameters
    ----------
    n_estimators : int
        Number of estimators (>= 1); sets the length of the ``est_*`` columns.

    Returns
    -------
    numpy.dtype
        Fields ``frame``, ``angle_deg``, ``t``, ``est_dy_px``, ``est_dx_px``,
        ``est_confidence``, ``est_method``, ``residual_dy_px``, ``residual_dx_px``,
        ``drift_um`` (x, y, z), ``drift_std_um``, ``applied_um``, ``decision``, ``flags``.
    """
    if n_estimators < 1:
        raise ValueError(f"need at least one estimator, got {n_estimators}")
    e = (n_estimators,)
    return np.dtype(
        [
            ("frame", "<i8"),
            ("angle_deg", "<f8"),
            ("t", "<f8"),
            ("est_dy_px", "<f8", e),
            ("est_dx_px", "<f8", e),
            ("est_confidence", "<f8", e),
            ("est_method", "<i2", e),
            ("residual_dy_px", "<f8"),
            ("residual_dx_px", "<f8"),
            ("drift_um", "<f8", (3,)),
            ("drift_std_um", "<f8", (3,)),
            ("applied_um", "<f8", (3,)),
            ("decision", "i1"),
            ("flags", "<u4"),
        ]
    )


def encode_flags(flags: int | Iterable[str]) -> int:
    """Return the bitmask for flag names (or check and return an int bitmask).

    Raises
    ------
    ValueError
        On an unknown flag name or a mask with undefined bits.
    """
    if isinstance(flags, int | np.integer):
        if flags < 0 or int(flags) >> len(FLAG_NAMES):
            raise ValueError(f"flags bitmask {flags!r} has bits outside {len(FLAG_NAMES)} flags")
        return int(flags)
    mask = 0
    for name in flags:
        if name not in FLAG_NAMES:
            raise ValueError(f"unknown flag {name!r}; known flags: {list(FLAG_NAMES)}")
        mask |= 1 << FLAG_NAMES.index(name)
    return mask


def decode_flags(mask: int) -> list[str]:
    """Return the flag names set in ``mask``."""
    return [n for i, n in enumerate(FLAG_NAMES) if int(mask) >> i & 1]


def scan_filename(scan_id: str) -> str:
    """Return a safe file name for a scan id (``<id>.drift.h5``)."""
    if not scan_id:
        raise ValueError("scan_id must be a non-empty string")
    return re.sub(r"[^A-Za-z0-9._-]", "_", scan_id) + ".drift.h5"


def _version() -> str:
    try:
        return metadata.version("tomolock")
    except metadata.PackageNotFoundError:
        return "unknown"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def _axis_vector(values: Mapping[str, float], label: str) -> list[float]:
    unknown = sorted(set(values) - set(AXES))
    if unknown:
        raise ValueError(f"{label} has unknown axes {unknown}; allowed {list(AXES)}")
    return [float(values.get(a, math.nan)) for a in AXES]


class DriftLog:
    """Writer of one scan's drift log.

    Parameters
    ----------
    path : str or Path
        HDF5 file; created if missing, appended to if it holds the same scan.
    scan_id : str
        Scan identifier.
    pixel_size_um : float
        Effective pixel size, micrometres.
    estimators : sequence of str
        Estimator names, fixed for the file (order = column order of ``est_*``).
    config : mapping, optional
        Service configuration, stored as JSON (only on creation).
    method_codes : mapping of str to int, optional
        Meaning of the ``est_method`` codes, stored as JSON.

    Raises
    ------
    ValueError
        Existing file of another scan, other estimators or another schema; bad arguments.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        scan_id: str,
        pixel_size_um: float,
        estimators: Sequence[str],
        config: Mapping[str, Any] | None = None,
        method_codes: Mapping[str, int] | None = None,
    ) -> None:
        if not scan_id:
            raise ValueError("scan_id must be a non-empty string")
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise ValueError(f"pixel_size_um must be finite and > 0, got {pixel_size_um!r}")
        names = [str(e) for e in estimators]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"estimators must be a non-empty list of unique names, got {names}")
        self.path = Path(path)
        self.scan_id = scan_id
        self.estimators = tuple(names)
        self._dtype = row_dtype(len(names))
        if self.path.exists():
            self._file = h5py.File(self.path, "r+")
            try:
                self._check_existing(pixel_size_um)
            except Exception:
                self._file.close()
                raise
            self._file.attrs["end_time"] = math.nan
            self._file.attrs["end_time_iso"] = ""
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "w-")
            self._create(pixel_size_um, config or {}, method_codes or {})
        self._ds = self._file[DATASET]
        self._file.flush()

    @classmethod
    def for_scan(cls, directory: str | Path, scan_id: str, **kwargs: Any) -> Self:
        """Open the log of ``scan_id`` in ``directory`` (file name from :func:`scan_filename`)."""
        return cls(Path(directory) / scan_filename(scan_id), scan_id=scan_id, **kwargs)

    def _create(
        self, pixel_size_um: float, config: Mapping[str, Any], method_codes: Mapping[str, int]
    ) -> None:
        now = time.time()
        attrs = self._file.attrs
        attrs["schema"] = SCHEMA
        attrs["scan_id"] = self.scan_id
        attrs["pixel_size_um"] = float(pixel_size_um)
        attrs["config_json"] = json.dumps(dict(config), default=str, sort_keys=True)
        attrs["tomolock_version"] = _version()
        attrs["start_time"] = now
        attrs["start_time_iso"] = _iso(now)
        attrs["end_time"] = math.nan
        attrs["end_time_iso"] = ""
        attrs["estimators"] = json.dumps(list(self.estimators))
        attrs["method_codes"] = json.dumps({str(k): int(v) for k, v in method_codes.items()})
        attrs["axes"] = json.dumps(list(AXES))
        attrs["decision_codes"] = json.dumps(list(DECISION_CODES))
        attrs["flag_names"] = json.dumps(list(FLAG_NAMES))
        self._file.create_dataset(
            DATASET, shape=(0,), maxshape=(None,), dtype=self._dtype, chunks=(CHUNK_ROWS,)
        )

    def _check_existing(self, pixel_size_um: float) -> None:
        attrs = self._file.attrs
        if attrs.get("schema") != SCHEMA or DATASET not in self._file:
            raise ValueError(f"{self.path} is not a tomolock drift log ({SCHEMA})")
        if attrs["scan_id"] != self.scan_id:
            raise ValueError(
                f"{self.path} belongs to scan {attrs['scan_id']!r}, not {self.scan_id!r}"
            )
        stored = tuple(json.loads(attrs["estimators"]))
        if stored != self.estimators:
            raise ValueError(f"{self.path} was written with estimators {list(stored)}")
        if not math.isclose(float(attrs["pixel_size_um"]), pixel_size_um, rel_tol=1e-9):
            raise ValueError(
                f"{self.path} was written with pixel size {attrs['pixel_size_um']} um, "
                f"not {pixel_size_um} um"
            )
        if self._file[DATASET].dtype != self._dtype:
            raise ValueError(f"{self.path} has an incompatible row layout")

    def __len__(self) -> int:
        return int(self._ds.shape[0])

    def _encode(self, row: DriftRow) -> np.ndarray:
        if int(row.frame) != row.frame or row.frame < 0:
            raise ValueError(f"frame must be a non-negative integer, got {row.frame!r}")
        if row.decision not in DECISION_CODES:
            raise ValueError(
                f"decision must be one of {list(DECISION_CODES)}, not {row.decision!r}"
            )
        unknown = sorted(set(row.estimates) - set(self.estimators))
        if unknown:
            raise ValueError(f"unknown estimators {unknown}; this log has {list(self.estimators)}")
        rec = np.zeros((), dtype=self._dtype)
        rec["frame"] = int(row.frame)
        rec["angle_deg"] = float(row.angle_deg)
        rec["t"] = float(row.t)
        for i, name in enumerate(self.estimators):
            if name in row.estimates:
                est = EstimateRecord(*row.estimates[name])
                rec["est_dy_px"][i] = est.dy_px
                rec["est_dx_px"][i] = est.dx_px
                rec["est_confidence"][i] = est.confidence
                rec["est_method"][i] = int(est.method)
            else:
                rec["est_dy_px"][i] = rec["est_dx_px"][i] = rec["est_confidence"][i] = math.nan
                rec["est_method"][i] = -1
        rec["residual_dy_px"] = float(row.residual_dy_px)
        rec["residual_dx_px"] = float(row.residual_dx_px)
        rec["drift_um"] = _axis_vector(row.drift_um, "drift_um")
        rec["drift_std_um"] = _axis_vector(row.drift_std_um, "drift_std_um")
        rec["applied_um"] = _axis_vector(row.applied_um, "applied_um")
        rec["decision"] = DECISION_CODES.index(row.decision)
        rec["flags"] = encode_flags(row.flags)
        return rec

    def append(self, row: DriftRow) -> int:
        """Write one row and flush it to disk; return its index.

        Raises
        ------
        ValueError
            On an invalid row (nothing is written).
        RuntimeError
            If the log is closed.
        """
        if not self._file:
            raise RuntimeError(f"drift log {self.path} is closed")
        rec = self._encode(row)  # validate before touching the file
        n = self._ds.shape[0]
        self._ds.resize((n + 1,))
        self._ds[n] = rec
        self._file.flush()
        return n

    def close(self) -> None:
        """Stamp the end time, flush and close (idempotent)."""
        if self._file:
            now = time.time()
            self._file.attrs["end_time"] = now
            self._file.attrs["end_time_iso"] = _iso(now)
            self._file.flush()
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DriftLogReader:
    """Read a drift log back as numpy structured arrays.

    Parameters
    ----------
    path : str or Path
        Drift log file.

    Attributes
    ----------
    rows : numpy.ndarray
        All rows, structured with :func:`row_dtype`.
    attrs : dict
        File attributes, JSON strings decoded.
    estimators : tuple of str
        Estimator names, in column order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no drift log at {self.path}")
        with h5py.File(self.path, "r") as f:
            if f.attrs.get("schema") != SCHEMA or DATASET not in f:
                raise ValueError(f"{self.path} is not a tomolock drift log ({SCHEMA})")
            self.rows: np.ndarray = f[DATASET][()]
            self.attrs: dict[str, Any] = {}
            for key, value in f.attrs.items():
                if isinstance(value, bytes):
                    value = value.decode()
                if key in {"estimators", "method_codes", "axes", "decision_codes", "flag_names"}:
                    value = json.loads(value)
                elif key == "config_json":
                    key, value = "config", json.loads(value)
                elif isinstance(value, np.generic):
                    value = value.item()
                self.attrs[key] = value
        self.estimators = tuple(self.attrs["estimators"])

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def scan_id(self) -> str:
        """Scan identifier."""
        return str(self.attrs["scan_id"])

    @property
    def pixel_size_um(self) -> float:
        """Pixel size, micrometres."""
        return float(self.attrs["pixel_size_um"])

    def estimates(self, name: str) -> np.ndarray:
        """Return one estimator's columns as a structured array.

        Parameters
        ----------
        name : str
            Estimator name.

        Returns
        -------
        numpy.ndarray
            Fields ``frame``, ``dy_px``, ``dx_px``, ``confidence``, ``method``.
        """
        if name not in self.estimators:
            raise KeyError(f"unknown estimator {name!r}; log has {list(self.estimators)}")
        i = self.estimators.index(name)
        out = np.empty(
            len(self),
            dtype=[("frame", "<i8"), ("dy_px", "<f8"), ("dx_px", "<f8"),
                   ("confidence", "<f8"), ("method", "<i2")],
        )  # fmt: skip
        out["frame"] = self.rows["frame"]
        out["dy_px"] = self.rows["est_dy_px"][:, i]
        out["dx_px"] = self.rows["est_dx_px"][:, i]
        out["confidence"] = self.rows["est_confidence"][:, i]
        out["method"] = self.rows["est_method"][:, i]
        return out

    def decisions(self) -> list[str]:
        """Return the decision name of every row."""
        return [DECISION_CODES[int(c)] for c in self.rows["decision"]]

    def flags(self) -> list[list[str]]:
        """Return the flag names of every row."""
        return [decode_flags(int(m)) for m in self.rows["flags"]]
