"""Memory model of the Dask fine alignment (bytes), to size a cluster before running.

Per level with binning ``b`` the persisted stack is ``S_b = n * (rows / b) * (cols / b) * 4``
bytes (float32 absorption). One iteration holds, at its peak, the persisted stack, the
shifted copy being rechunked from projection blocks to row bands, the reprojections being
rechunked back, and the tasks' working sets:

    peak_b ~= S_b + 2 * S_b (shifted + its rechunk staging) + 2 * S_b (reprojections + staging)
            + workers * task working set

With the default task-based rechunk the staging copies are in memory (``5 * S_b`` in the
worst case; dask frees blocks as soon as their consumers ran, so the measured peak is lower,
see the report). With ``array.rechunk.method = "p2p"`` (dask.distributed) the shuffles go
through the workers' local disk and the in-memory peak falls to about ``S_b`` plus buffers.

Example, 2048 projections of 2048² (``n * rows * cols * 4`` = 32 GiB at full resolution):
``S_4`` = 2 GiB (peak <= 10 GiB), ``S_2`` = 8 GiB (peak <= 40 GiB in memory; with p2p
~8 GiB + disk), ``S_1`` = 32 GiB: the full-resolution level does not fit in 24 GiB of RAM
as an in-memory stack. On 24 GiB run the last level on a row slab (``rows=``) or on a cluster
with more memory; :func:`estimate_bytes` computes the numbers.
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
