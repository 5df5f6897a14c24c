"""Inputs and outputs of the fine alignment: Data Exchange HDF5, drift logs, shift tables.

Data Exchange layout (what ``dxchange.read_aps_32id`` reads, tomopy/tomocupy's usual input)::

    /exchange/data        (n, rows, cols)  projections
    /exchange/data_white  (n_w, rows, cols) flat fields
    /exchange/data_dark   (n_d, rows, cols) dark fields
    /exchange/theta       (n,) rotation angles in DEGREES (read_aps_32id multiplies by
                          pi/180 and returns radians; attribute ``units = "degrees"``)

The aligned output adds ``/exchange/theta_rad`` (radians, for readers that take the angles
as stored), ``/exchange/shift_dy_px`` and ``/exchange/shift_dx_px`` (the corrected shifts,
sign convention in :data:`SIGN_NOTE`) and ``/process/tomolock_align`` (initial shifts,
convergence table, options as JSON). With ``mode="shifted"`` ``data`` is the flat/dark
corrected *transmission* (float32) with the shifts already undone, and ``data_white`` /
``data_dark`` are a single frame of ones / zeros, so ``tomopy.normalize`` is an identity and
``tomopy.minus_log`` gives absorption. With ``mode="raw"`` the input projections, flats and
darks are copied unchanged and the shifts are left to the reader
(``tomopy.prep.alignment.shift_images(prj, sx=dy_px, sy=dx_px)``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from tomolock.service.record import DriftLogReader, residual_shifts
from tomolock.service.record.export import SIGN_NOTE

from .kernels import shift_projections

OutputMode = Literal["shifted", "raw"]
SHIFTS_DTYPE = np.dtype([("frame", "<i8"), ("angle_deg", "<f8"), ("dy_px", "<f8"),
                         ("dx_px", "<f8"), ("initial_dy_px", "<f8"), ("initial_dx_px", "<f8")])
#: Smallest transmission kept before the logarithm.
TRANSMISSION_FLOOR = 1e-6
#: Detector rows per HDF5 chunk of the projection files this module writes (see
#: :func:`data_chunks`).
DATA_CHUNK_ROWS = 32


@dataclass(frozen=True)
class ProjectionFile:
    """A Data Exchange projection file, validated.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        ``(n, rows, cols)`` of ``/exchange/data``.
    theta_deg : numpy.ndarray
        Angles in degrees.
    white, dark : numpy.ndarray
        Mean flat and dark field (float32, ``(rows, cols)``).
    chunks : tuple of int, optional
        HDF5 chunk shape of ``/exchange/data``; None for a contiguous dataset.
    """

    path: Path
    shape: tuple[int, int, int]
    theta_deg: np.ndarray
    white: np.ndarray
    dark: np.ndarray
    chunks: tuple[int, ...] | None = None

    @classmethod
    def open(cls, path: str | Path) -> ProjectionFile:
        """Validate ``path`` and read its angles, flats and darks.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ValueError
            If a dataset is missing or inconsistent, or a flat is not above the dark.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"projection file not found: {p}")
        try:
            f = h5py.File(p, "r")
        except OSError as exc:
            raise ValueError(f"{p} is not a readable HDF5 file: {exc}") from None
        with f:
            for name in ("exchange/data", "exchange/data_white", "exchange/theta"):
                if name not in f:
                    raise ValueError(f"{p}: missing /{name} (Data Exchange layout expected)")
            data = f["exchange/data"]
            if data.ndim != 3 or min(data.shape) < 1:
                raise ValueError(f"{p}: /exchange/data must be (n, rows, cols), got {data.shape}")
            shape = tuple(int(v) for v in data.shape)
            chunks = None if data.chunks is None else tuple(int(v) for v in data.chunks)
            theta = np.asarray(f["exchange/theta"][()], dtype=float).ravel()
            units = f["exchange/theta"].attrs.get("units", "degrees")
            units = units.decode() if isinstance(units, bytes) else str(units)
            if units.lower().startswith("rad"):
                theta = np.degrees(theta)
            if theta.shape != (shape[0],) or not np.all(np.isfinite(theta)):
                raise ValueError(f"{p}: /exchange/theta has {theta.size} values for "
                                 f"{shape[0]} projections (or non-finite ones)")
            white = _mean_frames(f["exchange/data_white"], shape[1:], p, "data_white")
            if "exchange/data_dark" in f:
                dark = _mean_frames(f["exchange/data_dark"], shape[1:], p, "data_dark")
            else:
                dark = np.zeros(shape[1:], np.float32)
        if np.any(white <= dark):
            raise ValueError(f"{p}: flat field not above the dark in "
                             f"{int(np.sum(white <= dark))} pixels")
        return cls(p, shape, theta, white, dark, chunks)  # type: ignore[arg-type]

    def absorption(self, start: int, stop: int) -> np.ndarray:
        """Read projections ``[start, stop)`` as absorption (flat/dark corrected ``-log``)."""
        return read_absorption(self.path, self.white, self.dark, (start, stop))

    def absorption_dask(self, chunk: int) -> Any:
        """Return all projections as a lazy dask array, one task per ``chunk`` projections.

        Each task opens the file itself, so the graph also runs on worker processes.
        """
        import dask
        import dask.array as da

        n, rows, cols = self.shape
        blocks = [
            da.from_delayed(dask.delayed(self.absorption)(i, min(i + chunk, n)),
                            shape=(min(i + chunk, n) - i, rows, cols), dtype=np.float32)
            for i in range(0, n, chunk)
        ]
        return da.concatenate(blocks, axis=0)


def _mean_frames(ds: h5py.Dataset, shape: tuple[int, ...], path: Path, name: str) -> np.ndarray:
    arr = np.asarray(ds[()], dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != tuple(shape) or arr.shape[0] < 1:
        raise ValueError(f"{path}: /exchange/{name} must be (k, {shape[0]}, {shape[1]}), "
                         f"got {arr.shape}")
    return arr.mean(axis=0).astype(np.float32)


def to_absorption_stack(raw: np.ndarray, white: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Flat/dark correct and take ``-log`` of a ``(n, rows, cols)`` stack (float32).

    ``white`` and ``dark`` broadcast against the frames (pass their row slice for a band).
    Works in one float32 copy of ``raw`` (the same numbers as the out-of-place formula).
    """
    trans = raw.astype(np.float32)  # always a copy: the in-place steps below own it
    trans -= dark
    trans /= np.asarray(white, np.float32) - dark
    np.maximum(trans, np.float32(TRANSMISSION_FLOOR), out=trans)
    np.log(trans, out=trans)
    return np.negative(trans, out=trans)


def read_absorption(
    path: str | Path, white: np.ndarray, dark: np.ndarray, projections: tuple[int, int],
    rows: tuple[int, int] | None = None, dataset: str = "exchange/data",
) -> np.ndarray:
    """Read a box of raw projections from HDF5 as absorption.

    Parameters
    ----------
    path : path-like
        Data Exchange file.
    white, dark : numpy.ndarray
        Mean flat and dark of the *whole* frame (``(rows, cols)``), or of exactly the rows
        read (``(r1 - r0, cols)``, e.g. memory-mapped slices).
    projections : (int, int)
        ``[start, stop)`` projection indices.
    rows : (int, int), optional
        ``[r0, r1)`` detector rows; default all.
    dataset : str
        Dataset path of the raw projections.

    Returns
    -------
    numpy.ndarray
        ``(stop - start, r1 - r0, cols)`` float32.

    Raises
    ------
    FileNotFoundError
        If the file is gone.
    ValueError
        If the dataset is missing or the box is outside it.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"projection file not found: {p}")
    i0, i1 = projections
    with h5py.File(p, "r") as f:
        if dataset not in f:
            raise ValueError(f"{p}: missing /{dataset}")
        ds = f[dataset]
        r0, r1 = (0, ds.shape[1]) if rows is None else rows
        if ds.ndim != 3 or not (0 <= i0 < i1 <= ds.shape[0] and 0 <= r0 < r1 <= ds.shape[1]):
            raise ValueError(f"{p}: /{dataset} of shape {ds.shape} has no box "
                             f"[{i0}:{i1}, {r0}:{r1}]")
        raw = ds[i0:i1, r0:r1]
    if white.shape[0] != r1 - r0:
        white, dark = white[r0:r1], dark[r0:r1]
    return to_absorption_stack(raw, white, dark)


def data_chunks(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """HDF5 chunk shape for ``(n, rows, cols)`` projections: ``(1, 32 rows, cols)``.

    One projection per chunk keeps a block of projections one read per chunk; splitting the
    frame into bands of :data:`DATA_CHUNK_ROWS` rows lets the streaming alignment read a row
    band of *every* projection without reading whole frames (with ``(1, rows, cols)`` chunks a
    band read would read the whole file, so the streaming runner would first copy it). The
    cost is ``rows / 32`` chunks per projection (65 536 chunks for 2048 projections of 1024
    rows; 128 KiB each at 2048 uint16 columns, inside HDF5's default 1 MiB chunk cache).
    """
    _n, rows, cols = shape
    return (1, max(1, min(rows, DATA_CHUNK_ROWS)), max(1, cols))


def initial_shifts_from_log(
    log: str | Path | DriftLogReader, theta_deg: np.ndarray, tolerance_deg: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Match the drift log's residual shifts to the projections by angle.

    Parameters
    ----------
    log : path or DriftLogReader
        The scan's drift log (``tomolock.service.record``).
    theta_deg : numpy.ndarray
        Projection angles, degrees.
    tolerance_deg : float
        Largest accepted angle difference.

    Returns
    -------
    shifts : numpy.ndarray
        ``(n, 2)`` ``(dy, dx)``; 0 where nothing matched or the log has no estimate.
    matched : numpy.ndarray
        ``(n,)`` bool, True where a finite logged shift was used.

    Raises
    ------
    ValueError
        If the log is empty or fewer than half of the projections match (wrong log?).
    """
    rows = residual_shifts(log)
    if rows.size == 0:
        raise ValueError("the drift log has no rows")
    theta = np.asarray(theta_deg, dtype=float)
    angles = rows["angle_deg"]
    order = np.argsort(angles)
    pos = np.clip(np.searchsorted(angles[order], theta), 1, len(order) - 1) if len(order) > 1 \
        else np.zeros(theta.size, int)
    cand = np.stack([order[np.maximum(pos - 1, 0)], order[pos]])
    diff = np.abs(angles[cand] - theta[None, :])
    best = cand[np.argmin(diff, axis=0), np.arange(theta.size)]
    close = np.min(diff, axis=0) <= tolerance_deg
    finite = np.isfinite(rows["dy_px"][best]) & np.isfinite(rows["dx_px"][best])
    matched = close & finite
    if matched.sum() < 0.5 * theta.size:
        raise ValueError(f"only {int(matched.sum())} of {theta.size} projections match a "
                         f"logged angle within {tolerance_deg} deg: is it this scan's log?")
    shifts = np.zeros((theta.size, 2))
    shifts[matched, 0] = rows["dy_px"][best[matched]]
    shifts[matched, 1] = rows["dx_px"][best[matched]]
    return shifts, matched


def write_shifts(path: str | Path, theta_deg: np.ndarray, shifts: np.ndarray,
                 initial: np.ndarray) -> Path:
    """Write corrected shifts as ``.h5``/``.hdf5``, ``.npy`` or ``.csv`` (by suffix).

    Same columns and sign convention as :func:`tomolock.service.record.export_shifts`
    (``frame`` is the projection index here) plus the starting ``initial_dy_px``,
    ``initial_dx_px``.

    Raises
    ------
    ValueError
        On an unsupported suffix.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in {".h5", ".hdf5", ".npy", ".csv"}:
        raise ValueError(f"unsupported shifts format {suffix!r}; use .h5, .hdf5, .npy or .csv")
    table = np.empty(len(theta_deg), dtype=SHIFTS_DTYPE)
    table["frame"] = np.arange(len(theta_deg))
    table["angle_deg"] = theta_deg
    table["dy_px"], table["dx_px"] = shifts[:, 0], shifts[:, 1]
    table["initial_dy_px"], table["initial_dx_px"] = initial[:, 0], initial[:, 1]
    if suffix == ".npy":
        np.save(out, table)
    elif suffix == ".csv":
        names = SHIFTS_DTYPE.names or ()
        np.savetxt(out, np.column_stack([table[n] for n in names]), delimiter=",",
                   header=",".join(names) + "\n" + SIGN_NOTE,
                   fmt=["%d"] + ["%.6f"] * (len(names) - 1))
    else:
        with h5py.File(out, "w") as f:
            for name in SHIFTS_DTYPE.names or ():
                f.create_dataset(name, data=table[name])
            f.attrs["convention"] = SIGN_NOTE
            f.attrs["method"] = "tomolock fine alignment (iterative reprojection)"
    return out


def write_data_exchange(
    path: str | Path,
    source: ProjectionFile,
    shifts: np.ndarray,
    *,
    initial: np.ndarray,
    mode: OutputMode = "shifted",
    centre_col: float | None = None,
    reports: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    chunk: int = 16,
) -> Path:
    """Write the aligned scan in the Data Exchange layout (see the module notes).

    Parameters
    ----------
    path : path-like
        Output HDF5 (overwritten).
    source : ProjectionFile
        The input projections.
    shifts, initial : numpy.ndarray
        ``(n, 2)`` corrected and starting shifts.
    mode : {"shifted", "raw"}
        Undo the shifts in the stored transmission, or copy the raw data.
    centre_col : float, optional
        Rotation-axis column, stored as ``/process/tomolock_align`` attribute
        (default ``(cols - 1) / 2``).
    reports : list of dict, optional
        Convergence records, stored as JSON.
    options : dict, optional
        Alignment options, stored as JSON.
    chunk : int
        Projections processed at a time (bounds memory).

    Raises
    ------
    ValueError
        On a bad mode or a shifts shape that does not match the projections.
    """
    if mode not in ("shifted", "raw"):
        raise ValueError(f"mode must be 'shifted' or 'raw', got {mode!r}")
    n, rows, cols = source.shape
    for name, arr in (("shifts", shifts), ("initial", initial)):
        if np.shape(arr) != (n, 2):
            raise ValueError(f"{name} must be ({n}, 2), got {np.shape(arr)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source.path, "r") as src, h5py.File(out, "w") as dst:
        ex = dst.create_group("exchange")
        if mode == "raw":
            for name in ("data", "data_white", "data_dark"):
                if f"exchange/{name}" in src:
                    src.copy(src[f"exchange/{name}"], ex, name=name)
            if "data_dark" not in ex:
                ex.create_dataset("data_dark", data=np.zeros((1, rows, cols), np.float32))
        else:
            data = ex.create_dataset("data", shape=(n, rows, cols), dtype=np.float32,
                                     chunks=data_chunks((n, rows, cols)))
            for i in range(0, n, chunk):
                j = min(i + chunk, n)
                aligned = shift_projections(source.absorption(i, j), shifts[i:j])
                data[i:j] = np.exp(-aligned)
            ex.create_dataset("data_white", data=np.ones((1, rows, cols), np.float32))
            ex.create_dataset("data_dark", data=np.zeros((1, rows, cols), np.float32))
            data.attrs["description"] = "flat/dark corrected transmission, shifts undone"
        theta = ex.create_dataset("theta", data=source.theta_deg)
        theta.attrs["units"] = "degrees"
        ex.create_dataset("theta_rad", data=np.radians(source.theta_deg)).attrs["units"] = "rad"
        ex.create_dataset("shift_dy_px", data=shifts[:, 0])
        ex.create_dataset("shift_dx_px", data=shifts[:, 1])
        ex.attrs["shift_convention"] = SIGN_NOTE
        proc = dst.create_group("process/tomolock_align")
        proc.create_dataset("initial_dy_px", data=initial[:, 0])
        proc.create_dataset("initial_dx_px", data=initial[:, 1])
        proc.attrs["mode"] = mode
        proc.attrs["source"] = str(source.path)
        proc.attrs["centre_col"] = (cols - 1) / 2.0 if centre_col is None else float(centre_col)
        proc.attrs["reports_json"] = json.dumps(reports or [])
        proc.attrs["options_json"] = json.dumps(options or {}, default=str)
    return out


def write_raw_data_exchange(
    path: str | Path, data: np.ndarray, white: np.ndarray, dark: np.ndarray,
    theta_deg: np.ndarray,
) -> Path:
    """Write raw projections, flats, darks and angles (degrees) as a Data Exchange file.

    Used to hand simulated or converted scans to ``tomolock align``; chunked by
    :func:`data_chunks` (one projection, 32 rows per chunk) so both a block of projections
    and a row band of all projections read only what they need.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"data must be (n, rows, cols), got {data.shape}")
    theta = np.asarray(theta_deg, dtype=float)
    if theta.shape != (data.shape[0],) or not all(math.isfinite(t) for t in theta):
        raise ValueError(f"theta_deg must be {data.shape[0]} finite angles")
    out = Path(path)
    with h5py.File(out, "w") as f:
        ex = f.create_group("exchange")
        ex.create_dataset("data", data=data, chunks=data_chunks(data.shape))
        ex.create_dataset("data_white", data=np.asarray(white))
        ex.create_dataset("data_dark", data=np.asarray(dark))
        ex.create_dataset("theta", data=theta).attrs["units"] = "degrees"
    return out
