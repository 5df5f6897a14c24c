"""Export per-projection residual shifts for reconstruction.

The online correction never removes all the drift; every projection still carries a residual
image shift ``(dy, dx)`` px, meaning ``frame(r, c) ≈ reference(r - dy, c - dx)`` (content
moved by ``+dy`` rows, ``+dx`` columns). This module writes those shifts, one row per frame
sorted by frame number (the last row wins if a frame was logged twice), as HDF5, ``.npy``
(structured array) or ``.csv`` with columns ``frame, angle_deg, dy_px, dx_px``.

Undoing them (signs checked numerically in the tests):

* **tomopy** ``tomopy.prep.alignment.shift_images(prj, sx, sy)``: tomopy calls the projection
  row axis "x" and the column axis "y", and *removes* the shift you pass
  (``out[r, c] = prj[r + sx, c + sy]``). Pass the residual with its own sign:
  ``shift_images(prj, sx=dy_px, sy=dx_px)``. (The ``sx``/``sy`` that tomopy's own
  ``align_seq``/``align_joint`` return follow the same convention.)
* **scipy / tomocupy pipelines**: ``scipy.ndimage.shift(proj, (-dy_px, -dx_px))`` (ndimage
  *moves content by* the shift you give, so pass the negative). tomocupy has no per-projection
  shift option; apply this before writing the projections it reconstructs.

Where a frame has no fused residual (NaN), the finite estimate of the most confident
estimator is used and the ``source`` column says which (``-1``: fused residual, ``i``:
estimator ``i`` of the log; ``-2``: no estimate at all, shifts stay NaN).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .drift_log import DriftLogReader

EXPORT_DTYPE = np.dtype(
    [("frame", "<i8"), ("angle_deg", "<f8"), ("dy_px", "<f8"), ("dx_px", "<f8"), ("source", "<i2")]
)
SIGN_NOTE = (
    "dy_px, dx_px: residual image shift each projection carries, frame(r, c) = "
    "reference(r - dy, c - dx). Undo with tomopy.prep.alignment.shift_images(prj, sx=dy_px, "
    "sy=dx_px) or scipy.ndimage.shift(proj, (-dy_px, -dx_px))."
)


def residual_shifts(log: DriftLogReader | str | Path) -> np.ndarray:
    """Return the per-frame residual shifts of a drift log.

    Parameters
    ----------
    log : DriftLogReader or path
        The drift log.

    Returns
    -------
    numpy.ndarray
        Structured array with :data:`EXPORT_DTYPE`, one row per frame, sorted by frame.
    """
    reader = log if isinstance(log, DriftLogReader) else DriftLogReader(log)
    rows = reader.rows
    # Last occurrence of each frame wins (a resumed scan may relog a frame).
    _, last_rev = np.unique(rows["frame"][::-1], return_index=True)
    keep = len(rows) - 1 - last_rev
    rows = rows[keep]  # np.unique sorts by frame
    out = np.empty(len(rows), dtype=EXPORT_DTYPE)
    out["frame"] = rows["frame"]
    out["angle_deg"] = rows["angle_deg"]
    out["dy_px"] = rows["residual_dy_px"]
    out["dx_px"] = rows["residual_dx_px"]
    out["source"] = -1

    missing = ~(np.isfinite(out["dy_px"]) & np.isfinite(out["dx_px"]))
    if missing.any():
        est_ok = np.isfinite(rows["est_dy_px"]) & np.isfinite(rows["est_dx_px"])
        conf = rows["est_confidence"]
        # Any finite estimate beats none; a NaN confidence ranks below every real one.
        score = np.where(est_ok, np.where(np.isfinite(conf), conf, -1.0), -np.inf)
        best = np.argmax(score, axis=1)
        idx = np.arange(len(rows))
        usable = missing & est_ok[idx, best]
        out["dy_px"][usable] = rows["est_dy_px"][idx, best][usable]
        out["dx_px"][usable] = rows["est_dx_px"][idx, best][usable]
        out["source"][usable] = best[usable]
        out["source"][missing & ~usable] = -2
    return out


def export_shifts(log: DriftLogReader | str | Path, out_path: str | Path) -> Path:
    """Write the residual shifts to ``.h5``/``.hdf5``, ``.npy`` or ``.csv`` (by suffix).

    Parameters
    ----------
    log : DriftLogReader or path
        The drift log.
    out_path : str or Path
        Output file; its suffix selects the format.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        On an unsupported suffix.
    """
    reader = log if isinstance(log, DriftLogReader) else DriftLogReader(log)
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in {".h5", ".hdf5", ".npy", ".csv"}:
        raise ValueError(f"unsupported export format {suffix!r}; use .h5, .hdf5, .npy or .csv")
    shifts = residual_shifts(reader)
    if suffix == ".npy":
        np.save(out_path, shifts)
    elif suffix == ".csv":
        np.savetxt(
            out_path,
            np.column_stack([shifts[n] for n in EXPORT_DTYPE.names]),
            delimiter=",",
            header=",".join(EXPORT_DTYPE.names or ()) + "\n" + SIGN_NOTE,
            fmt=["%d", "%.6f", "%.6f", "%.6f", "%d"],
        )
    else:
        with h5py.File(out_path, "w") as f:
            for name in EXPORT_DTYPE.names or ():
                f.create_dataset(name, data=shifts[name])
            f.attrs["scan_id"] = reader.scan_id
            f.attrs["pixel_size_um"] = reader.pixel_size_um
            f.attrs["convention"] = SIGN_NOTE
            f.attrs["estimators"] = ",".join(reader.estimators)
    return out_path
