"""Memory model of the Dask fine alignment (bytes), to size a cluster before running.

Per level with binning ``b`` the persisted stack is ``S_b = n * (rows / b) * (cols / b) * 4``
bytes (float32 absorption), held in the cluster's memory for the whole level. One iteration
adds the shifted copy being rechunked from projection blocks to row bands and the
reprojections being rechunked back:

    peak_b <= S_b + 2 * S_b (shifted + rechunk staging) + 2 * S_b (reprojections + staging)
              + workers * task working set                               (task rechunk)
    peak_b ~= S_b + workers * task working set + shuffle buffers          (p2p rechunk)

With ``AlignConfig(rechunk="p2p")`` dask.distributed's peer-to-peer rechunk writes the
shuffled blocks to the workers' local disk instead of keeping them in memory (dask's
documented behaviour; checked here for identical results on small scans, not for memory).

Example, 2048 projections of 2048² (``n * rows * cols * 4`` = 32 GiB at full resolution):

* 4x: ``S_4`` = 2 GiB, peak <= ~10 GiB with task rechunk: fits in 24 GiB.
* 2x: ``S_2`` = 8 GiB, peak <= ~40 GiB with task rechunk (does not fit in 24 GiB in the worst
  case); ~8 GiB + buffers with p2p: fits.
* 1x: ``S_1`` = 32 GiB: the persisted full-resolution stack alone exceeds 24 GiB. The 1x
  level needs a cluster with >= ~40 GiB (p2p) in total, or ``levels=(4, 2)`` on a 24 GiB
  machine (shifts then to ~1/2 px precision of the 2x level). A streaming variant that
  re-reads the projections from HDF5 per pass instead of persisting them is not implemented.

:func:`estimate_bytes` computes these numbers for any scan.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed at one level."""

    factor: int
    stack_bytes: int
    peak_in_memory_bytes: int
    peak_p2p_bytes: int
    task_bytes: int


def estimate_bytes(
    n: int, rows: int, cols: int, factor: int = 1, *, workers: int = 2, proj_chunk: int = 16,
    row_chunk: int = 16,
) -> MemoryEstimate:
    """Estimate the memory of one alignment level.

    Parameters
    ----------
    n, rows, cols : int
        Projections and frame size (full resolution).
    factor : int
        Binning factor of the level.
    workers : int
        Worker threads/processes running tasks at once.
    proj_chunk, row_chunk : int
        Chunking (see :class:`~tomolock.service.align.engine.AlignConfig`).

    Returns
    -------
    MemoryEstimate
    """
    if min(n, rows, cols, factor, workers, proj_chunk, row_chunk) < 1:
        raise ValueError("all sizes must be positive")
    r, c = rows // factor, cols // factor
    stack = n * r * c * 4
    band = max(1, row_chunk // factor)
    pad = max(4, round(c * 0.125))
    slice_work = (c + 2 * pad) ** 2 * 8 * 3 + n * (c + 2 * pad) * 8 * 3  # image + sinograms
    recon_task = n * band * c * 4 * 2 + slice_work  # band in + reprojection out
    reg_task = proj_chunk * r * c * 4 * 3 + r * c * 8 * 6  # blocks + correlator buffers
    task = max(recon_task, reg_task)
    return MemoryEstimate(
        factor=factor,
        stack_bytes=stack,
        peak_in_memory_bytes=5 * stack + workers * task,
        peak_p2p_bytes=stack + workers * task,
        task_bytes=task,
    )
