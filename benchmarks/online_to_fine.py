"""Online -> fine benchmark (issue 7): fine alignment started from a real online drift log.

1. A closed-loop session (:mod:`tomolock.service.simloop`: simulated detector stream, service in
   ``apply`` mode, interferometer feed; the simulator's ``typical`` stage, white jitter
   included): runout sweep, reference scan, then the measured scan with correction on. Per
   projection it yields the shift the detector really saw (the truth in the frame header)
   and the service's drift log, whose ``residual_dy_px``/``residual_dx_px`` are the online
   estimates of those shifts (against the reference projections).
2. The scan's projections are rendered again at exactly those true shifts (same phantom
   design; a fresh noise draw: the live frames are not kept) and
   :func:`~tomolock.service.align.align` runs with its default stopping rules, starting from
   the drift log as ``tomolock align`` does.

Both errors are RMS vs the truth after removing the gauge (:func:`~.align.remove_gauge`),
per axis, px. Fields of view as in :mod:`tomolock.service.align.benchmark`: ``padded`` (the
sample inside the detector at every angle) and ``truncated`` (it crosses the side edges).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import progress
from tomolock.devices.sim.drift import DriftParams
from tomolock.service.align import AlignConfig, align, remove_gauge
from tomolock.service.align.benchmark import detector_shape, simulated_scan
from tomolock.service.align.cluster import dask_client
from tomolock.service.align.io import initial_shifts_from_log
from tomolock.service.simloop import calibrated_scan, residuals, simulated_loop


async def online_session(n: int, size: int, fov: str, workdir: Path, seed: int = 3
                         ) -> tuple[np.ndarray, np.ndarray, Path]:
    """Run a closed-loop scan; return ``(angles_deg, true shifts (n, 2) px, drift log)``."""
    angles = np.linspace(0.0, 180.0, n)

    def show(i: int, total: int) -> None:
        if i % 20 == 0 or i == total:
            progress(f"  online frame {i}/{total}")

    async with simulated_loop(DriftParams.typical(), shape=detector_shape(size, fov),
                              phantom_shape=(size, size), workdir=workdir, seed=seed) as sl:
        headers = await calibrated_scan(sl, angles, scan_id="online", progress=show)
        truth, _ = residuals(sl, headers)
    (log,) = workdir.glob("*online*")
    return angles, truth, log


def _rms(err: np.ndarray) -> dict[str, float]:
    return {"dy": round(float(np.sqrt(np.mean(err[:, 0] ** 2))), 4),
            "dx": round(float(np.sqrt(np.mean(err[:, 1] ** 2))), 4)}


def one(n: int, size: int, fov: str, *, workers: int = 2, levels: tuple[int, ...] = (4, 2, 1),
        max_iterations: int | None = None) -> dict[str, Any]:
    """Online session then fine alignment for one field of view; returns the report.

    ``workers``: local Dask worker processes (0: the serial loop in this thread).
    ``levels``, ``max_iterations``: as in :class:`~tomolock.service.align.AlignConfig`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        angles, truth, log = asyncio.run(online_session(n, size, fov, Path(tmp)))
        online_s = time.perf_counter() - t0
        logged, matched = initial_shifts_from_log(log, angles)
    proj, theta, rendered = simulated_scan(n, size, fov=fov, shifts_px=truth)
    if not np.allclose(rendered, truth, atol=1e-6) or not np.allclose(theta, angles):
        raise RuntimeError("re-rendered scan does not carry the session's shifts")
    log_error = _rms(remove_gauge(logged - truth, angles))
    progress(f"  {fov}: online log error {log_error} px; aligning")
    config = AlignConfig(levels=levels, min_size_px=16, max_iterations=max_iterations)
    with contextlib.ExitStack() as stack:
        client = (stack.enter_context(dask_client(n_workers=workers, processes=True))
                  if workers else None)
        result = align(proj, angles, logged, config,
                       executor="dask" if client is not None else "serial", client=client,
                       progress=lambda r: progress("  " + r.line()))
    return {
        "fov": fov, "projections": n, "size": size,
        "detector": list(detector_shape(size, fov)),
        "online_matched": int(matched.sum()),
        "online_residual_rms_px": _rms(truth),  # what the detector saw, gauge included
        "online_log_error_rms_px": log_error,
        "fine_error_rms_px": _rms(remove_gauge(result.shifts - truth, angles)),
        "fine_iterations_per_level": {str(b): sum(r.level == b for r in result.reports)
                                      for b in result.converged},
        "skipped_levels": list(result.skipped),
        "online_s": round(online_s, 1), "fine_s": round(result.seconds, 1),
        "workers": workers,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Both fields of view (``quick``: 61 projections of 64 px, padded only)."""
    if quick:
        return {"runs": [one(61, 64, "padded", levels=(2, 1))]}
    return {"runs": [one(121, 128, fov) for fov in ("padded", "truncated")]}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
