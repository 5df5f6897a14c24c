"""Memory model of the fine alignment (bytes), to size a cluster or pick a runner.

In memory (``executor="dask"``)
-------------------------------
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
The serial runner holds the full stack, the binned one and an iteration's shifted copy and
reprojections: about ``4 * S_1`` at the 1x level.

Streaming (``executor="stream"``, :class:`~.runners.StreamRunner`)
------------------------------------------------------------------
Nothing holds a stack; the stack and the reprojections live on disk. Peak memory is
``workers x`` the largest task plus the driver (the shifts, ``n x 2``):

* band task (``B = max(row_chunk // b, 32)`` rows of the level, rounded up to whole HDF5
  chunks when the file is read in place; ``h`` halo rows): the aligned band and its reprojection,
  ``2 * n * B * c * 4``, plus a block of ``32`` projections of ``B + 2h`` rows read, converted
  and shifted, plus one slice's reconstruction;
* register task: ``proj_chunk`` measured projections and their reprojections plus the
  correlator's buffers (as in memory);
* staging task (binning): ``proj_chunk`` full-resolution projections and their binned copy.

Scratch disk at level ``b``: the reprojections, ``S_b``, plus the binned stack ``S_b`` (binned
levels, or a 1x level whose HDF5 file is not chunked in row bands and is copied first); only
one level's files exist at a time.

Example, 2048 projections of 2048² (``n * rows * cols * 4`` = 32 GiB at full resolution):

* 4x: ``S_4`` = 2 GiB, peak <= ~10 GiB with task rechunk: fits in 24 GiB.
* 2x: ``S_2`` = 8 GiB, peak <= ~40 GiB with task rechunk (does not fit in 24 GiB in the worst
  case); ~8 GiB + buffers with p2p: fits.
* 1x: ``S_1`` = 32 GiB: the persisted full-resolution stack alone exceeds 24 GiB; in memory
  the 1x level needs a cluster with >= ~40 GiB (p2p) in total.
* Streaming, 2 workers, ``row_chunk=16`` (bands of 32 rows at 1x when the file is chunked
  ``(1, 32, cols)`` as :func:`~.io.write_raw_data_exchange` writes it): band task ~1.3 GiB,
  register task ~1.0 GiB, peak ~2.7 GiB at 1x (every level fits in 24 GiB, with room for
  ~8 workers); scratch 32 GiB at 1x (reprojections; 64 GiB if the file must be copied
  first), 16 GiB at 2x, 4 GiB at 4x. Each 1x iteration reads the 16 GiB of uint16 counts
  about ``(32 + 2 h) / 32`` times for the bands (``h`` = 26 rows for 8 px shifts: ~3x, up to
  4x when the halo ends inside a chunk) plus once for registration, and writes and reads
  32 GiB of reprojections. The in-memory runners hold no halo and read the file once.

Measured (``python -m tomolock.service.align.stream_benchmark --rows 256 512 1024 2048
--projections 360 --cols 1024 --level 8``: one iteration at the 8x level, no Dask, peak
resident memory of a fresh process, 2-core machine):

==========  ==========  =================  =================
rows        stack        serial peak         stream peak
==========  ==========  =================  =================
256         0.35 GiB     0.84 GiB, 16 s      0.16 GiB, 18 s*
512         0.70 GiB     1.55 GiB, 40 s      0.19 GiB, 46 s*
1024        1.41 GiB     2.97 GiB, 62 s      0.25 GiB, 79 s*
2048        2.81 GiB     5.81 GiB, 127 s     0.38 GiB, 107 s (192 s*)
==========  ==========  =================  =================

(* with 2-row bands at 8x, before bands got at least ``MIN_BAND_ROWS`` = 32 rows: the halo
then dominated the work; memory is the same.)

The serial peak is twice the stack (the blocks read plus the concatenated copy) plus the
interpreter (~0.2 GiB); the streaming peak is the interpreter plus a staging task of
``proj_chunk`` full frames (0.13 GiB at 2048 x 1024), independent of ``n``.

:func:`estimate_bytes` computes these numbers for any scan, :func:`choose_executor` picks
the in-memory runner when it fits a budget and streaming otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Projections a streaming band task reads at a time (see :mod:`.runners`).
_BAND_READ_BLOCK = 32
#: Rows kept beyond the spline support (see :data:`.runners.SPLINE_MARGIN`).
_SPLINE_MARGIN = 16
#: Fewest rows per streaming band (see :data:`.runners.MIN_BAND_ROWS`).
_MIN_BAND_ROWS = 32


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed at one level.

    Attributes
    ----------
    factor : int
        Binning factor.
    stack_bytes : int
        ``S_b``, the level's float32 stack.
    peak_in_memory_bytes, peak_p2p_bytes : int
        Dask runner with task / p2p rechunk.
    task_bytes : int
        Largest in-memory Dask task.
    peak_stream_bytes : int
        Streaming runner (workers x largest task).
    stream_task_bytes : int
        Largest streaming task.
    scratch_bytes : int
        Streaming runner's scratch disk at this level.
    """

    factor: int
    stack_bytes: int
    peak_in_memory_bytes: int
    peak_p2p_bytes: int
    task_bytes: int
    peak_stream_bytes: int = 0
    stream_task_bytes: int = 0
    scratch_bytes: int = 0


def estimate_bytes(
    n: int, rows: int, cols: int, factor: int = 1, *, workers: int = 2, proj_chunk: int = 16,
    row_chunk: int = 16, chunk_rows: int = 32, max_shift_px: float = 8.0,
    direct: bool = True,
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
    chunk_rows : int
        Streaming, 1x level: rows per HDF5 chunk of the input (bands are whole chunks).
    max_shift_px : float
        Streaming: largest ``|dy|`` (full-resolution px), sets the band halo.
    direct : bool
        Streaming, 1x level: the file is read in place (chunked in row bands) rather than
        copied to the scratch directory.

    Returns
    -------
    MemoryEstimate
    """
    if min(n, rows, cols, factor, workers, proj_chunk, row_chunk, chunk_rows) < 1:
        raise ValueError("all sizes must be positive")
    r, c = rows // factor, cols // factor
    stack = n * r * c * 4
    band = max(1, row_chunk // factor)
    pad = max(4, round(c * 0.125))
    slice_work = (c + 2 * pad) ** 2 * 8 * 3 + n * (c + 2 * pad) * 8 * 3  # image + sinograms
    recon_task = n * band * c * 4 * 2 + slice_work  # band in + reprojection out
    reg_task = proj_chunk * r * c * 4 * 3 + r * c * 8 * 6  # blocks + correlator buffers
    task = max(recon_task, reg_task)
    # Streaming.
    in_place = factor == 1 and direct
    s_band = max(band, _MIN_BAND_ROWS)
    s_band = math.ceil(s_band / chunk_rows) * chunk_rows if in_place else s_band
    s_band = min(s_band, r)
    halo = math.ceil(max_shift_px / factor) + 2 + _SPLINE_MARGIN
    read_block = min(n, _BAND_READ_BLOCK) * min(r, s_band + 2 * halo) * c * 4 * 3
    band_task = 2 * n * s_band * c * 4 + read_block + slice_work
    stage_task = 0 if in_place else proj_chunk * rows * cols * 4 * 2 + proj_chunk * r * c * 4
    stream_task = max(band_task, reg_task, stage_task)
    return MemoryEstimate(
        factor=factor,
        stack_bytes=stack,
        peak_in_memory_bytes=5 * stack + workers * task,
        peak_p2p_bytes=stack + workers * task,
        task_bytes=task,
        peak_stream_bytes=workers * stream_task,
        stream_task_bytes=stream_task,
        scratch_bytes=stack * (1 if in_place else 2) + 2 * rows * cols * 4,
    )


def stream_scratch_bytes(n: int, rows: int, cols: int, levels: Iterable[int], *,
                         direct_level1: bool = True) -> int:
    """Scratch disk the streaming runner needs at most (one level's files at a time)."""
    return max(estimate_bytes(n, rows, cols, b, direct=direct_level1).scratch_bytes
               for b in levels)


def choose_executor(
    n: int, rows: int, cols: int, levels: Iterable[int], memory_limit: int, *,
    workers: int = 2, proj_chunk: int = 16, row_chunk: int = 16, rechunk: str = "tasks",
    dask: bool = True,
) -> str:
    """Pick ``"dask"`` (or ``"serial"``) when the in-memory model fits, else ``"stream"``.

    Parameters
    ----------
    n, rows, cols : int
        Scan size (full resolution).
    levels : iterable of int
        Binning factors that will run.
    memory_limit : int
        Bytes the alignment may use (all workers together).
    workers, proj_chunk, row_chunk : int
        As for :func:`estimate_bytes`.
    rechunk : {"tasks", "p2p"}
        Rechunk of the in-memory Dask runner.
    dask : bool
        Whether the in-memory choice is the Dask runner (else the serial one).

    Returns
    -------
    str
        ``"dask"``, ``"serial"`` or ``"stream"``.
    """
    if memory_limit <= 0:
        raise ValueError(f"memory_limit must be positive, got {memory_limit}")
    peak = 0
    for b in levels:
        est = estimate_bytes(n, rows, cols, b, workers=workers, proj_chunk=proj_chunk,
                             row_chunk=row_chunk)
        if dask:
            peak = max(peak, est.peak_p2p_bytes if rechunk == "p2p"
                       else est.peak_in_memory_bytes)
        else:
            peak = max(peak, 4 * estimate_bytes(n, rows, cols, 1).stack_bytes + est.task_bytes)
    if peak <= memory_limit:
        return "dask" if dask else "serial"
    return "stream"


def parse_bytes(text: str | int) -> int:
    """Parse ``"24GiB"``, ``"500MB"``, ``"1.5e9"`` or an int into bytes.

    Raises
    ------
    ValueError
        On an unknown unit or a non-positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
                 "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
        s = text.strip().lower().replace(" ", "")
        num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(num):]
        try:
            if unit not in units:
                raise ValueError
            value = int(float(num) * units[unit])
        except ValueError:
            raise ValueError(f"not a size: {text!r} (e.g. 24GiB, 500MB)") from None
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value
