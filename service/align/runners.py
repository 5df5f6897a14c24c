"""Runners of the fine alignment: where the stack lives and how one iteration is executed.

:func:`~tomolock.service.align.engine.align` drives the levels and iterations; a runner
prepares each level's stack (``level``), runs one iteration (``iterate``: shift, reconstruct
and reproject every slice, register every projection; returns the ``(n, 4)`` registration)
and frees the level (``release``). Three runners, the same kernels (:mod:`.kernels`):

* :class:`SerialRunner`: the whole stack in memory, one thread (the speed baseline);
* :class:`DaskRunner`: the stack persisted in the Dask cluster's memory, rechunked between
  projection blocks and row bands in memory (or p2p through the workers' disks);
* :class:`StreamRunner`: out of core. The stack stays on disk; every iteration streams it.

Streaming (``executor="stream"``)
---------------------------------
Per level ``b`` the runner needs the level's absorption stack on disk:

* level 1 is read straight from the Data Exchange file (raw counts, flat/dark corrected on
  the fly) when its HDF5 chunks split the frame into bands of at most
  :data:`DIRECT_MAX_CHUNK_ROWS` rows, or when it is contiguous; otherwise (e.g. one whole
  frame per chunk, where a row band of all projections would read the whole file) it is
  first copied once, projection block by projection block, into the scratch directory;
* a binned level is binned once, projection block by projection block, into the scratch
  directory (one ``.npy`` file per block of ``proj_chunk`` projections).

One iteration is then two waves of independent tasks:

1. *band tasks*, one per band of ``max(row_chunk // b, MIN_BAND_ROWS)`` rows (rounded up to
   whole HDF5 chunks when reading the file directly): read the band's rows plus a halo of
   ``ceil(max |dy|) + 2 + SPLINE_MARGIN`` rows of every projection (a projection block at a
   time), undo the shifts (:func:`~.kernels.shift_projections`; the cubic-spline shift of
   the rows inside the halo is then the same as on the whole frame), crop to the band,
   reconstruct and reproject (:func:`~.kernels.reproject_band`) and write the band's
   reprojections to their own ``.npy`` file;
2. *register tasks*, one per block of ``proj_chunk`` projections: read the measured block
   and the block's rows of every band file, :func:`~.kernels.register_projections`.

No task or the driver holds the whole stack; peak memory is ``workers x`` one task's working
set (see :mod:`.memory`). Tasks write whole files of their own (to a temporary name, then
renamed), so concurrent writers never share a file or a page; the HDF5 input is only read.
Tasks run on the Dask client when one is given (local cluster or ``--scheduler``), else one
after the other in the calling thread. With a real cluster, the scratch directory must be a
path on a filesystem every worker sees at the same path (NFS, Lustre, GPFS ...), and so must
the projection file. The scratch directory (a fresh ``tomolock-align-*`` folder inside
``scratch_dir``) is deleted when the alignment ends, also on errors.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .kernels import bin_image_stack, register_projections, reproject_band, shift_projections

if TYPE_CHECKING:
    from .engine import AlignConfig

#: Rows beyond the spline support kept on each side of a band before the vertical shift.
#: The cubic-spline prefilter is recursive along the whole column; its influence decays by
#: 0.268 per row, so 16 rows leave the shifted band bit-identical to the whole-frame shift
#: (checked on random data: 8 rows -> 2e-7, 12 -> 6e-8, 16 -> 0).
SPLINE_MARGIN = 16
#: Read level 1 directly from an HDF5 file whose chunks are at most this many rows high.
DIRECT_MAX_CHUNK_ROWS = 64
#: Projections read at a time by a band task (bounds the halo's memory).
BAND_READ_BLOCK = 32
#: Fewest rows per band: a band reads and shifts ``2 * halo`` extra rows (halo >= 18), so
#: thin bands (``row_chunk // factor`` at binned levels) would multiply that work.
MIN_BAND_ROWS = 32


class Runner(Protocol):
    """What :func:`~tomolock.service.align.engine.align` needs from a runner."""

    def level(self, factor: int) -> Any:
        """Prepare and return the stack of the level binned by ``factor``."""

    def iterate(self, stack: Any, shifts: np.ndarray, theta: np.ndarray, delta: float,
                radius: float, config: AlignConfig, factor: int) -> np.ndarray:
        """Run one iteration; return the ``(n, 4)`` registration of every projection."""

    def release(self, factor: int) -> None:
        """Free the level's stack."""

    def close(self) -> None:
        """Free everything (also after an error)."""


# --------------------------------------------------------------------------- in memory


class SerialRunner:
    """Everything in this thread, whole arrays at once (the single-core baseline)."""

    def __init__(self, projections: Any) -> None:
        self.full = np.asarray(projections, dtype=np.float32)

    def level(self, factor: int) -> np.ndarray:
        """Return the (binned) stack."""
        return self.full if factor == 1 else bin_image_stack(self.full, factor)

    def iterate(self, stack: np.ndarray, shifts: np.ndarray, theta: np.ndarray, delta: float,
                radius: float, config: AlignConfig, factor: int) -> np.ndarray:
        """Shift, reproject and register the whole stack."""
        aligned = shift_projections(stack, shifts, delta)
        reproj = reproject_band(aligned, theta, config.method,
                                leave_one_out=config.leave_one_out)
        return register_projections(stack, reproj, shifts, delta, radius, config.upsample,
                                    config.lowpass)

    def release(self, factor: int) -> None:
        """Nothing to free."""
        return None

    def close(self) -> None:
        """Nothing to free."""
        return None


class DaskRunner:
    """One Dask graph per iteration.

    Shift (by projection) -> reconstruct/reproject (by rows) -> register (by projection).
    """

    def __init__(self, projections: Any, client: Any, config: AlignConfig) -> None:
        import dask.array as da

        self.da = da
        self.client = client
        self.config = config
        self._scattered: list[Any] = []
        if isinstance(projections, da.Array):
            full = projections.astype(np.float32)
        else:
            # Sent to the workers once, in projection blocks: embedded in the graph the array
            # travelled again with every level (and Dask warned of the large graph).
            array = np.asarray(projections, dtype=np.float32)
            step = config.proj_chunk
            starts = range(0, array.shape[0], step)
            self._scattered = client.scatter([array[i:i + step] for i in starts])
            full = da.concatenate([
                da.from_delayed(f, shape=array[i:i + step].shape, dtype=np.float32)
                for f, i in zip(self._scattered, starts, strict=True)])
        _n, rows, cols = full.shape
        self.full = full.rechunk((config.proj_chunk, rows, cols))
        self._persisted: dict[int, Any] = {}

    def level(self, factor: int) -> Any:
        """Persist the (binned) stack in the cluster's memory."""
        stack = self.full
        if factor > 1:
            _n, rows, cols = stack.shape
            stack = stack.map_blocks(
                bin_image_stack, factor, dtype=np.float32,
                chunks=(stack.chunks[0], (rows // factor,), (cols // factor,)))
        stack = self.client.persist(stack)
        self._persisted[factor] = stack
        return stack

    def release(self, factor: int) -> None:
        """Drop the persisted level."""
        self._persisted.pop(factor, None)

    def close(self) -> None:
        """Drop every persisted level and the scattered projections."""
        self._persisted.clear()
        self._scattered = []
        self.full = None  # its graph holds the scattered futures too

    def iterate(self, stack: Any, shifts: np.ndarray, theta: np.ndarray, delta: float,
                radius: float, config: AlignConfig, factor: int) -> np.ndarray:
        """Build and compute one iteration's graph."""
        da = self.da
        n, _rows, cols = stack.shape
        sh = da.from_array(shifts, chunks=(stack.chunks[0], 2))
        aligned = da.blockwise(shift_projections, "ijk", stack, "ijk", sh, "il",
                               dtype=np.float32, concatenate=True, delta_col=delta)
        row_chunk = max(1, config.row_chunk // factor)
        by_rows = aligned.rechunk((n, row_chunk, cols), method=config.rechunk)
        reproj = by_rows.map_blocks(reproject_band, theta, config.method,
                                    leave_one_out=config.leave_one_out, dtype=np.float32)
        reproj = reproj.rechunk(stack.chunks, method=config.rechunk)
        reg = da.blockwise(
            register_projections, "il", stack, "ijk", reproj, "ijk", sh, "il",
            dtype=np.float64, concatenate=True, adjust_chunks={"l": 4},
            delta_col=delta, search_radius=radius, upsample=config.upsample,
            lowpass=config.lowpass)
        return np.asarray(self.client.compute(reg).result())


# --------------------------------------------------------------------------- on disk


def _check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"scratch directory {path} does not exist on this worker: with a remote cluster "
            f"the scratch directory must be on a filesystem shared by every worker")


def _save(path: str, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) under a temporary name, then rename (atomic)."""
    _check_dir(os.path.dirname(path))
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _load(path: str) -> np.ndarray:
    """Memory-map a scratch ``.npy`` file read-only."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        _check_dir(os.path.dirname(path))
        raise


@dataclass(frozen=True)
class H5Stack:
    """Absorption projections read straight from a Data Exchange file (raw counts).

    Small and picklable: each read opens the file itself, so tasks run on any worker that
    sees ``path``. The mean flat and dark are memory-mapped from ``flatdark`` (an
    ``(2, rows, cols)`` float32 ``.npy`` in the scratch directory) so tasks do not carry
    them.
    """

    path: str
    shape: tuple[int, int, int]
    flatdark: str
    chunk_rows: int = 1

    def read(self, i0: int, i1: int, r0: int, r1: int) -> np.ndarray:
        """Return projections ``[i0, i1)``, rows ``[r0, r1)`` as float32 absorption."""
        from .io import read_absorption

        fd = _load(self.flatdark)
        return read_absorption(self.path, fd[0, r0:r1], fd[1, r0:r1], (i0, i1), (r0, r1))


@dataclass(frozen=True)
class BlockStack:
    """Absorption stack in a scratch directory, one ``.npy`` file per projection block."""

    directory: str
    shape: tuple[int, int, int]
    starts: tuple[int, ...]
    chunk_rows: int = 1

    def block_path(self, k: int) -> str:
        """File of block ``k`` (projections ``starts[k]`` to ``starts[k + 1]``)."""
        return os.path.join(self.directory, f"block_{k:06d}.npy")

    def read(self, i0: int, i1: int, r0: int, r1: int) -> np.ndarray:
        """Return projections ``[i0, i1)``, rows ``[r0, r1)`` (float32)."""
        out = np.empty((i1 - i0, r1 - r0, self.shape[2]), np.float32)
        for k in range(len(self.starts) - 1):
            a, b = max(i0, self.starts[k]), min(i1, self.starts[k + 1])
            if a < b:
                block = _load(self.block_path(k))
                out[a - i0 : b - i0] = block[a - self.starts[k] : b - self.starts[k], r0:r1]
        return out


Stack = H5Stack | BlockStack


def _stage_block(source: Any, factor: int, i0: int, i1: int, out_path: str) -> None:
    """Task: read projections ``[i0, i1)`` of ``source``, bin by ``factor``, save."""
    _, rows, _cols = source.shape
    if isinstance(source, H5Stack | BlockStack):
        block = source.read(i0, i1, 0, rows)
    else:
        block = np.asarray(source[i0:i1], dtype=np.float32)
    _save(out_path, bin_image_stack(block, factor) if factor > 1 else block)


def _band_task(stack: Stack, r0: int, r1: int, halo: int, shifts: np.ndarray,
               theta: np.ndarray, delta: float, method: str, leave_one_out: bool,
               out_path: str) -> None:
    """Task: reproject rows ``[r0, r1)`` of every projection; save ``(n, r1 - r0, cols)``."""
    n, rows, cols = stack.shape
    a, b = max(0, r0 - halo), min(rows, r1 + halo)
    aligned = np.empty((n, r1 - r0, cols), np.float32)
    for i0 in range(0, n, BAND_READ_BLOCK):
        i1 = min(i0 + BAND_READ_BLOCK, n)
        shifted = shift_projections(stack.read(i0, i1, a, b), shifts[i0:i1], delta)
        aligned[i0:i1] = shifted[:, r0 - a : r1 - a]
    reproj = reproject_band(aligned, theta, method, leave_one_out=leave_one_out)  # type: ignore[arg-type]
    del aligned
    _save(out_path, reproj)


def _register_task(stack: Stack, bands: list[tuple[int, int, str]], i0: int, i1: int,
                   shifts: np.ndarray, delta: float, radius: float, upsample: int,
                   lowpass: float) -> np.ndarray:
    """Task: register projections ``[i0, i1)`` to their reprojections from the band files."""
    _, rows, _cols = stack.shape
    measured = stack.read(i0, i1, 0, rows)
    reproj = np.empty_like(measured)
    for r0, r1, path in bands:
        reproj[:, r0:r1] = _load(path)[i0:i1]
    return register_projections(measured, reproj, shifts, delta, radius, upsample, lowpass)


def _spans(total: int, step: int, align_to: int = 1) -> list[tuple[int, int]]:
    step = max(1, math.ceil(step / align_to) * align_to)
    return [(s, min(s + step, total)) for s in range(0, total, step)]


class StreamRunner:
    """Out-of-core runner: the stack stays on disk, tasks stream it (see the module notes).

    Parameters
    ----------
    projections : ProjectionFile or array-like
        A :class:`~tomolock.service.align.io.ProjectionFile` (read in place), or an
        in-memory/dask ``(n, rows, cols)`` absorption stack (copied block by block to the
        scratch directory first).
    config : AlignConfig
        ``proj_chunk`` and ``row_chunk`` set the task sizes.
    client : dask.distributed.Client, optional
        Run the tasks on this client; default one after the other in this thread.
    scratch_dir : path-like, optional
        Where the run's scratch folder is created (default: the system temporary directory).
        Must be shared by every worker of a remote cluster.

    Raises
    ------
    ValueError
        If the scratch directory is not writable, or lacks the space the model of
        :mod:`.memory` asks for.
    FileNotFoundError
        If the projection file is gone.
    """

    def __init__(self, projections: Any, config: AlignConfig, client: Any = None,
                 scratch_dir: str | os.PathLike[str] | None = None) -> None:
        from .io import ProjectionFile
        from .memory import stream_scratch_bytes

        self.client = client
        self.config = config
        n, rows, cols = (int(v) for v in projections.shape)
        self.shape = (n, rows, cols)
        base = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir())
        if not base.is_dir():
            raise ValueError(f"scratch directory {base} does not exist")
        try:
            self.root = Path(tempfile.mkdtemp(prefix="tomolock-align-", dir=base))
        except OSError as exc:
            raise ValueError(f"scratch directory {base} is not writable: {exc}") from None
        try:
            direct = isinstance(projections, ProjectionFile) and _band_friendly(
                projections.chunks)
            need = stream_scratch_bytes(n, rows, cols, config.levels, direct_level1=direct)
            free = shutil.disk_usage(self.root).free
            if need > free:
                raise ValueError(
                    f"scratch directory {base} has {free / 2**30:.1f} GiB free; the streaming "
                    f"alignment needs about {need / 2**30:.1f} GiB there")
            self._source: Any
            if isinstance(projections, ProjectionFile):
                _check_dataset(projections.path, self.shape)
                flatdark = str(self.root / "flatdark.npy")
                _save(flatdark, np.stack([projections.white, projections.dark]))
                chunk_rows = rows if projections.chunks is None else projections.chunks[1]
                self._source = H5Stack(str(projections.path.resolve()), self.shape, flatdark,
                                       chunk_rows if direct else 1)
                self.direct = direct
            else:
                self._source = projections  # staged into blocks by level(1)
                self.direct = False
        except BaseException:
            self.close()
            raise
        self._levels: dict[int, Stack] = {}

    # -- execution

    def _run(self, fn: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        if self.client is None:
            return [fn(*args) for args in calls]
        futures = self.client.map(fn, *zip(*calls, strict=True), pure=False)
        try:
            return self.client.gather(futures)
        finally:
            for fut in futures:
                fut.release()

    # -- levels

    def level(self, factor: int) -> Stack:
        """Return the level's on-disk stack, binning (or copying) it first if needed."""
        if factor == 1 and self.direct:
            stack: Stack = self._source
        else:
            n, rows, cols = self.shape
            directory = self.root / f"level{factor}"
            directory.mkdir()
            spans = _spans(n, self.config.proj_chunk)
            stack = BlockStack(str(directory), (n, rows // factor, cols // factor),
                               (*[s for s, _ in spans], n))
            calls = [(self._source, factor, i0, i1, stack.block_path(k))
                     for k, (i0, i1) in enumerate(spans)]
            if isinstance(self._source, H5Stack):
                self._run(_stage_block, calls)
            else:
                # An in-memory (or dask) array is staged from here, a block at a time, rather
                # than shipped to every task.
                for args in calls:
                    _stage_block(*args)
        self._levels[factor] = stack
        return stack

    def release(self, factor: int) -> None:
        """Delete the level's scratch files."""
        self._levels.pop(factor, None)
        for name in (f"level{factor}", f"reproj{factor}"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def close(self) -> None:
        """Delete the whole scratch folder."""
        shutil.rmtree(self.root, ignore_errors=True)

    def iterate(self, stack: Stack, shifts: np.ndarray, theta: np.ndarray, delta: float,
                radius: float, config: AlignConfig, factor: int) -> np.ndarray:
        """Band tasks (shift + reproject, to disk), then register tasks (by projection)."""
        n, rows, _cols = stack.shape
        out_dir = self.root / f"reproj{factor}"
        out_dir.mkdir(exist_ok=True)
        halo = math.ceil(float(np.max(np.abs(shifts[:, 0])))) + 2 + SPLINE_MARGIN
        band_rows = max(1, config.row_chunk // factor, MIN_BAND_ROWS)
        bands = [(r0, r1, str(out_dir / f"band_{r0:06d}.npy"))
                 for r0, r1 in _spans(rows, band_rows, stack.chunk_rows)]
        theta = np.asarray(theta, dtype=float)
        self._run(_band_task, [
            (stack, r0, r1, halo, shifts, theta, delta, config.method, config.leave_one_out,
             path) for r0, r1, path in bands])
        regs = self._run(_register_task, [
            (stack, bands, i0, i1, shifts[i0:i1], delta, radius, config.upsample,
             config.lowpass) for i0, i1 in _spans(n, config.proj_chunk)])
        return np.concatenate(regs, axis=0)


def _check_dataset(path: Path, shape: tuple[int, int, int],
                   dataset: str = "exchange/data") -> None:
    """Fail early and clearly if the projections are gone or changed since they were opened."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"projection file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            ds = f.get(dataset)
            found = None if not isinstance(ds, h5py.Dataset) else tuple(ds.shape)
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file: {exc}") from None
    if found is None:
        raise ValueError(f"{path}: missing /{dataset}")
    if found != shape:
        raise ValueError(f"{path}: /{dataset} is {found}, expected {shape} (file changed?)")


def _band_friendly(chunks: tuple[int, ...] | None) -> bool:
    """Whether a row band of every projection reads little more than the band itself."""
    return chunks is None or chunks[1] <= DIRECT_MAX_CHUNK_ROWS


def default_memory_limit() -> int:
    """80 % of this machine's physical memory (bytes)."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil comes with dask.distributed
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.8 * total)


def make_runner(
    executor: str, projections: Any, config: AlignConfig, levels: list[int], *,
    client: Any = None, scratch_dir: str | os.PathLike[str] | None = None,
    memory_limit: int | None = None,
) -> tuple[Runner, str]:
    """Build the runner ``executor`` names; return it and the executor that was chosen.

    ``"auto"`` picks the in-memory runner (Dask with a client, else serial) when
    :func:`~.memory.choose_executor` says it fits ``memory_limit`` (default
    :func:`default_memory_limit`), else the streaming one. A
    :class:`~tomolock.service.align.io.ProjectionFile` is read in place by the streaming
    runner, lazily by the Dask one and whole by the serial one.
    """
    from .io import ProjectionFile
    from .memory import choose_executor

    n, rows, cols = (int(v) for v in projections.shape)
    if executor == "auto":
        workers = 1
        if client is not None:
            workers = max(1, sum(int(v) for v in client.nthreads().values()))
        executor = choose_executor(
            n, rows, cols, levels, memory_limit or default_memory_limit(), workers=workers,
            proj_chunk=config.proj_chunk, row_chunk=config.row_chunk, rechunk=config.rechunk,
            dask=client is not None)
    if executor == "stream":
        return StreamRunner(projections, config, client, scratch_dir), executor
    if isinstance(projections, ProjectionFile):
        if executor == "dask":
            projections = projections.absorption_dask(config.proj_chunk)
        else:
            projections = np.concatenate([projections.absorption(i, min(i + 64, n))
                                          for i in range(0, n, 64)])
    if executor == "dask":
        return DaskRunner(projections, client, config), executor
    return SerialRunner(projections), executor
