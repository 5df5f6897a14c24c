"""Iterative reprojection alignment (Gursoy et al. 2017), multi-resolution (Odstrcil 2019).

Per iteration: undo the current shifts, reconstruct every detector row (an independent
parallel-beam sinogram) and reproject it, then register each *measured* projection to its
reprojection with the phase correlator; the registration result is the new shift. Levels run
coarse to fine (binned 4x, 2x, 1x by default); a level ends when the error still to come,
estimated from the last two RMS shift updates as a geometric series, is below ``tolerance_px``
(full-resolution pixels), or after its iteration cap. On truncated sinograms binned levels
end already at ``coarse_stop_px`` binned pixels (what they resolve), and a binned level whose
first update is below that is skipped: a good start (the online log) goes straight to finer
levels instead of being pulled to a coarse reconstruction's biased fixed point.

Three executors run the same kernels (:mod:`.kernels`; the runners are in :mod:`.runners`):

* ``serial``: plain numpy in the calling thread, one projection/slice after another (the
  single-core "tomopy-style loop" used as the speed baseline);
* ``dask``: a ``dask.distributed`` client; reconstruction/reprojection tasks are chunked by
  detector rows (slices), shifting and registration tasks by projections, and the data is
  rechunked between them;
* ``stream``: out of core for stacks larger than memory: the stack stays on disk (the Data
  Exchange file, binned levels in a scratch directory), row-band tasks write reprojections
  to scratch files and projection-block tasks register from them, on a Dask client or in
  this thread (``auto`` picks it when the in-memory model of :mod:`.memory` does not fit).

Gauge (what alignment cannot determine): moving the reconstructed object by ``(a, b, c)``
changes every projection's shift by ``dx = a cos(theta) - b sin(theta)`` and ``dy = c``;
the rotation-centre column (a constant ``dx``) is only weakly constrained by reprojection.
With ``fix_gauge`` (default) these components are projected out of every update, so the
result keeps the initial shifts' placement of the object and of the rotation axis and only
corrects what the data determine.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .kernels import Method, harmonic_basis, project_out, truncated_fraction
from .runners import DaskRunner as _DaskRunner  # noqa: F401  (moved; old name kept)
from .runners import SerialRunner as _SerialRunner  # noqa: F401
from .runners import make_runner

log = logging.getLogger(__name__)

Executor = Literal["serial", "dask", "stream", "auto"]

#: ``AlignConfig.coarse_stop_px`` chosen for truncated sinograms (binned px).
COARSE_STOP_TRUNCATED_PX = 0.25
#: Fraction of sampled projections crossing a side edge above which sinograms count as
#: truncated.
TRUNCATED_MIN_FRACTION = 0.1
#: Projections sampled (evenly over the scan) for the truncation test.
TRUNCATION_SAMPLES = 16
#: Iterations per level at most when ``AlignConfig.max_iterations`` is None, times the binning
#: factor (a binned iteration costs about ``1 / factor**3`` of a full-resolution one).
ITERATIONS_PER_FACTOR = 10
Progress = Callable[["IterationReport"], None]


@dataclass(frozen=True)
class AlignConfig:
    """Options of the fine alignment.

    Parameters
    ----------
    levels : tuple of int
        Binning factors, coarse to fine. Levels whose binned frame would be smaller than
        ``min_size_px`` on a side are skipped.
    max_iterations : int, optional
        Iterations per level at most. ``None`` (default): :data:`ITERATIONS_PER_FACTOR` times
        the level's binning factor (40, 20, 10 for 4x, 2x, 1x): the binned levels converge
        the slow, smooth-in-angle modes cheaply.
    tolerance_px : float
        A level has converged when the error still to come, estimated from its RMS shift
        updates ``u`` as a geometric series, ``u_k r / (1 - r)`` with ``r = u_k / u_(k-1)``,
        is below this (full-resolution px); so at least two iterations. A plain
        update-size test stopped far too early where convergence is slow: at 2x, updates of
        0.003 px (r = 0.94) still left 0.034 px of error (:mod:`.benchmark`).
    method : {"fbp", "sart"}
        Slice reconstruction: filtered back projection, or SART for few angles.
    search_radius_px : float
        Half-width (full-resolution px) searched around the initial shifts at the first
        level; later levels search +-3 binned pixels around the previous level's result.
    centre_col : float, optional
        Detector column of the rotation axis; default the frame centre ``(cols - 1) / 2``.
    fix_gauge : bool
        Remove the undeterminable components from every update (see the module notes).
    min_size_px : int
        Smallest binned frame side used.
    proj_chunk : int
        Projections per shift/registration task.
    row_chunk : int
        Detector rows (slices) per reconstruction task at full resolution (binned levels use
        ``max(1, row_chunk // factor)`` ... rows of the binned frame, never fewer than 1).
    upsample : int
        Registration precision ``1 / upsample`` px.
    lowpass : float
        Gaussian low-pass (px of the analysed level) on the registration's cross-power.
    leave_one_out : bool
        Remove each projection's own FBP contribution from its reprojection.
    rechunk : {"tasks", "p2p"}
        Dask rechunk between projection blocks and row bands: in memory (``tasks``) or
        dask.distributed's peer-to-peer shuffle through the workers' disk (``p2p``, for
        stacks larger than the cluster's memory headroom; see :mod:`.memory`).
    relaxation : float
        Fraction of the registered change applied per iteration (1 = plain fixed point;
        > 1 over-relaxes the slow modes).
    coarse_stop_px : float, optional
        Binned levels that a finer level follows stop once their RMS update is below this
        many *binned* pixels, and a binned level whose first update is already below it is
        skipped (that update discarded): the start is then better than the level resolves,
        and iterating it would only pull the shifts towards the binned reconstruction's own
        fixed point. 0: off (every level runs to ``tolerance_px`` or ``max_iterations``).
        ``None`` (default): :data:`COARSE_STOP_TRUNCATED_PX` when the sinograms are truncated
        (:func:`~.kernels.truncated_fraction` of sampled projections >=
        :data:`TRUNCATED_MIN_FRACTION`), else 0. Measured (:mod:`.benchmark`, 121 x 128²,
        binned 4x = 32 px): started at the truth, 10 iterations at 4x drift to (0.12, 0.26) px
        RMS (dy, dx) on truncated sinograms but only to (0.05, 0.05) px with the sample inside
        the field of view, where the binned levels speed up the slow modes instead.
    freeze_harmonics : int
        ``K >= 2``: also project the horizontal harmonics ``cos(k theta)``, ``sin(k theta)``,
        ``k = 2..K``, out of every update, so they keep the starting shifts' values (the
        online log's calibrated runout model / interferometer determine these smooth
        patterns; the reprojection barely observes them and, on truncated sinograms, biases
        them). The starting error's own components in those harmonics then stay: for a white
        starting error of ``sigma`` over ``n`` projections their RMS is about
        ``sigma * sqrt(2 (K - 1) / n)``. 0 (default) or 1: off. Measured in
        :mod:`.benchmark`.
    """

    levels: tuple[int, ...] = (4, 2, 1)
    max_iterations: int | None = None
    tolerance_px: float = 0.01
    method: Method = "fbp"
    search_radius_px: float = 8.0
    centre_col: float | None = None
    fix_gauge: bool = True
    min_size_px: int = 32
    proj_chunk: int = 16
    row_chunk: int = 16
    upsample: int = 100
    relaxation: float = 1.0
    lowpass: float = 2.0
    leave_one_out: bool = False
    rechunk: Literal["tasks", "p2p"] = "tasks"
    freeze_harmonics: int = 0
    coarse_stop_px: float | None = None

    def __post_init__(self) -> None:
        levels = tuple(int(b) for b in self.levels)
        if not levels or any(b < 1 for b in levels):
            raise ValueError(f"levels must be positive binning factors, got {self.levels!r}")
        object.__setattr__(self, "levels", levels)
        for name in ("max_iterations", "min_size_px", "proj_chunk", "row_chunk", "upsample"):
            value = getattr(self, name)
            if name == "max_iterations" and value is None:
                continue
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("tolerance_px", "search_radius_px", "relaxation", "lowpass"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.coarse_stop_px is not None and not (
                math.isfinite(self.coarse_stop_px) and self.coarse_stop_px >= 0):
            raise ValueError(f"coarse_stop_px must be a finite number >= 0, got "
                             f"{self.coarse_stop_px!r}")
        if (isinstance(self.freeze_harmonics, bool)
                or int(self.freeze_harmonics) != self.freeze_harmonics
                or self.freeze_harmonics < 0):
            raise ValueError(f"freeze_harmonics must be an integer >= 0, got "
                             f"{self.freeze_harmonics!r}")
        if self.rechunk not in ("tasks", "p2p"):
            raise ValueError(f"rechunk must be 'tasks' or 'p2p', got {self.rechunk!r}")
        if self.method not in ("fbp", "sart"):
            raise ValueError(f"method must be 'fbp' or 'sart', got {self.method!r}")
        if self.centre_col is not None and not math.isfinite(self.centre_col):
            raise ValueError(f"centre_col must be finite, got {self.centre_col!r}")


@dataclass(frozen=True)
class IterationReport:
    """Convergence record of one iteration.

    Attributes
    ----------
    level : int
        Binning factor of the level.
    iteration : int
        Iteration number within the level (1-based).
    rms_update_px, max_update_px : float
        RMS and largest shift update, full-resolution pixels.
    residual : float
        Median relative residual ``||P - R|| / ||P||`` of measured vs reprojected projections.
    confidence : float
        Median registration confidence.
    seconds : float
        Wall time of the iteration.
    remaining_px : float or None
        Estimated error still to come at this level (full-resolution px; see
        ``AlignConfig.tolerance_px``): ``inf`` while updates do not shrink, ``None`` at a
        level's first iteration.
    applied : bool
        False when the update was discarded: the first update of a binned level was below
        ``AlignConfig.coarse_stop_px`` binned px, so the level was skipped.
    """

    level: int
    iteration: int
    rms_update_px: float
    max_update_px: float
    residual: float
    confidence: float
    seconds: float
    applied: bool = True
    remaining_px: float | None = None

    def line(self) -> str:
        """Return a one-line progress message."""
        rest = "" if self.remaining_px is None else f", to come ~{self.remaining_px:.4f} px"
        return (f"level {self.level}x iter {self.iteration}: update rms {self.rms_update_px:.4f}"
                f" px (max {self.max_update_px:.3f}{rest}), residual {self.residual:.4f}, "
                f"confidence {self.confidence:.2f}, {self.seconds:.2f} s"
                + ("" if self.applied else
                   " (not applied: the start is within this level's resolution; level skipped)"))


@dataclass
class AlignResult:
    """Outcome of :func:`align`.

    Attributes
    ----------
    shifts : numpy.ndarray
        ``(n, 2)`` corrected ``(dy, dx)`` px each projection carries (full resolution).
    initial : numpy.ndarray
        ``(n, 2)`` the starting shifts.
    theta_deg : numpy.ndarray
        ``(n,)`` angles.
    reports : list of IterationReport
        Every iteration, in order.
    converged : dict of int to bool
        Whether each level reached its stopping threshold (``tolerance_px`` on the estimated
        error to come, or an update below ``coarse_stop_px`` binned px for binned levels a
        finer one follows).
    skipped : list of int
        Binned levels whose first update was discarded (see ``AlignConfig.coarse_stop_px``).
    coarse_stop_px : float
        The ``coarse_stop_px`` used (chosen from the data when the config left it ``None``).
    truncated_fraction : float or None
        Fraction of sampled projections whose sample crossed a side edge (``None`` when
        ``coarse_stop_px`` was given and the test did not run).
    seconds : float
        Total wall time (excluding loading).
    """

    shifts: np.ndarray
    initial: np.ndarray
    theta_deg: np.ndarray
    reports: list[IterationReport] = field(default_factory=list)
    converged: dict[int, bool] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    coarse_stop_px: float = 0.0
    truncated_fraction: float | None = None
    seconds: float = 0.0


def gauge_basis(theta_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the undeterminable shift components: ``(B_y, B_x)`` column bases.

    ``B_y`` is a constant (vertical object translation); ``B_x`` spans a constant (rotation
    centre) and ``cos(theta)``, ``sin(theta)`` (horizontal object translation).
    """
    t = np.radians(np.asarray(theta_deg, dtype=float))
    return np.ones((t.size, 1)), np.column_stack([np.ones_like(t), np.cos(t), np.sin(t)])


def remove_gauge(values: np.ndarray, theta_deg: np.ndarray) -> np.ndarray:
    """Project the gauge components out of ``(n, 2)`` shift differences (least squares).

    Use it on ``estimate - truth`` before computing an RMS error, or on an update.
    """
    values = np.asarray(values, dtype=float)
    by, bx = gauge_basis(theta_deg)
    out = values.copy()
    for col, basis in ((0, by), (1, bx)):
        coef, *_ = np.linalg.lstsq(basis, values[:, col], rcond=None)
        out[:, col] -= basis @ coef
    return out


def remaining_error(rms: float, previous: float | None) -> float | None:
    """Estimate the error still to come from two successive RMS updates (geometric series).

    ``None`` without a previous update; ``inf`` when the updates do not shrink.
    """
    if previous is None:
        return None
    if previous <= 0.0:
        return 0.0
    ratio = rms / previous
    return math.inf if ratio >= 1.0 else rms * ratio / (1.0 - ratio)


def level_iterations(config: AlignConfig, factor: int) -> int:
    """Return the iteration cap of the level binned by ``factor``."""
    if config.max_iterations is not None:
        return config.max_iterations
    return ITERATIONS_PER_FACTOR * factor


def plan_levels(shape: tuple[int, int], config: AlignConfig) -> list[int]:
    """Return the binning factors that will run for frames of ``shape``."""
    usable = [b for b in config.levels if min(shape) // b >= config.min_size_px]
    if not usable:
        raise ValueError(
            f"frames {shape[0]}x{shape[1]} are too small for every level {config.levels} "
            f"(min_size_px={config.min_size_px}); use smaller levels or min_size_px"
        )
    return usable


def _validate(stack_shape: tuple[int, ...], theta_deg: np.ndarray,
              initial: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if len(stack_shape) != 3:
        raise ValueError(f"projections must be (n, rows, cols), got shape {stack_shape}")
    n = stack_shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 projections, got {n}")
    theta = np.asarray(theta_deg, dtype=float)
    if theta.shape != (n,) or not np.all(np.isfinite(theta)):
        raise ValueError(f"theta_deg must be {n} finite angles, got shape {theta.shape}")
    if initial is None:
        start = np.zeros((n, 2))
    else:
        start = np.array(initial, dtype=float)
        if start.shape != (n, 2):
            raise ValueError(f"initial shifts must be ({n}, 2), got {start.shape}")
        if not np.all(np.isfinite(start)):
            raise ValueError("initial shifts contain NaN/inf; fill them (e.g. with 0) first")
    return theta, start


def _sample_frames(projections: Any) -> np.ndarray:
    """Read up to :data:`TRUNCATION_SAMPLES` projections spread over the scan (absorption)."""
    n = projections.shape[0]
    index = np.unique(np.linspace(0, n - 1, min(n, TRUNCATION_SAMPLES)).round().astype(int))
    if hasattr(projections, "absorption"):  # a ProjectionFile: read in place
        return np.concatenate([projections.absorption(int(i), int(i) + 1) for i in index])
    return np.stack([np.asarray(projections[int(i)], dtype=np.float32) for i in index])


def align(
    projections: Any,
    theta_deg: np.ndarray,
    initial_shifts: np.ndarray | None = None,
    config: AlignConfig | None = None,
    *,
    executor: Executor = "serial",
    client: Any = None,
    progress: Progress | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
    memory_limit: int | None = None,
) -> AlignResult:
    """Refine per-projection shifts by iterative reprojection.

    Parameters
    ----------
    projections : numpy.ndarray, dask.array.Array or ProjectionFile
        ``(n, rows, cols)`` absorption projections (``-log`` transmission), as measured, or
        a Data Exchange file (:class:`~tomolock.service.align.io.ProjectionFile`: raw counts,
        flat/dark corrected as read; the streaming executor reads it in place).
    theta_deg : numpy.ndarray
        ``(n,)`` rotation angles, degrees.
    initial_shifts : numpy.ndarray, optional
        ``(n, 2)`` starting ``(dy, dx)`` (e.g. the online drift log's residuals); default 0.
    config : AlignConfig, optional
        Options.
    executor : {"serial", "dask", "stream", "auto"}
        Run in this thread, or on ``client`` (a ``dask.distributed.Client``) with the stack
        in memory, or streaming it from disk (out of core, tasks on ``client`` if given, see
        :mod:`.runners`), or ``auto``: in memory when :mod:`.memory`'s model fits
        ``memory_limit``, else streaming.
    client : dask.distributed.Client, optional
        Required for ``executor="dask"``.
    progress : callable, optional
        Called with each :class:`IterationReport` as it completes.
    scratch_dir : path-like, optional
        Streaming: where the run's scratch folder goes (default the system temporary
        directory; on a real cluster a path every worker sees). Deleted afterwards.
    memory_limit : int, optional
        ``auto``: bytes the alignment may use (default 80 % of this machine's memory).

    Returns
    -------
    AlignResult

    Raises
    ------
    ValueError
        On inconsistent shapes, non-finite inputs or too small frames, or an unusable
        scratch directory.
    """
    config = config or AlignConfig()
    theta, shifts = _validate(tuple(projections.shape), theta_deg, initial_shifts)
    if executor not in ("serial", "dask", "stream", "auto"):
        raise ValueError(
            f"executor must be 'serial', 'dask', 'stream' or 'auto', got {executor!r}")
    if executor == "dask" and client is None:
        raise ValueError("executor='dask' needs a dask.distributed client")
    _, rows, cols = projections.shape
    centre = (cols - 1) / 2.0 if config.centre_col is None else float(config.centre_col)
    levels = plan_levels((rows, cols), config)
    result = AlignResult(shifts=shifts.copy(), initial=shifts.copy(), theta_deg=theta)
    t_start = time.perf_counter()
    runner, chosen = make_runner(executor, projections, config, levels, client=client,
                                 scratch_dir=scratch_dir, memory_limit=memory_limit)
    if chosen != executor:
        log.info("executor %s chosen for %s", chosen, tuple(projections.shape))
    try:
        # After the runner: it has checked that a file's projections are still there.
        if config.coarse_stop_px is None:
            result.truncated_fraction = truncated_fraction(_sample_frames(projections))
            truncated = result.truncated_fraction >= TRUNCATED_MIN_FRACTION
            result.coarse_stop_px = COARSE_STOP_TRUNCATED_PX if truncated else 0.0
            log.info("sample crosses the detector's side edges in %.0f %% of sampled "
                     "projections: %s", 100 * result.truncated_fraction,
                     f"truncated sinograms, binned levels stop at {result.coarse_stop_px} "
                     "binned px" if truncated else "binned levels run fully")
        else:
            result.coarse_stop_px = float(config.coarse_stop_px)
        for li, factor in enumerate(levels):
            stack = runner.level(factor)
            cols_b = cols // factor
            # Binned column j is centred on full-resolution column j * factor + (factor - 1) / 2.
            centre_b = (centre - (factor - 1) / 2.0) / factor
            delta = cols_b // 2 - centre_b
            radius = max(2.0, config.search_radius_px / factor) if li == 0 else 3.0
            result.converged[factor] = False
            coarse = li < len(levels) - 1 and result.coarse_stop_px > 0
            # Truncated: binned levels stop at what they resolve (update size); otherwise
            # every level stops when the estimated error to come is below the tolerance.
            stop_px = max(config.tolerance_px, result.coarse_stop_px * factor) if coarse \
                else config.tolerance_px
            previous: float | None = None
            for it in range(1, level_iterations(config, factor) + 1):
                t0 = time.perf_counter()
                reg = runner.iterate(stack, shifts / factor, theta, delta, radius, config, factor)
                new = reg[:, :2] * factor
                update = config.relaxation * (new - shifts)
                if config.fix_gauge:
                    update = remove_gauge(update, theta)
                if config.freeze_harmonics >= 2:
                    # Joint projection with the gauge (when fixed): the update is already
                    # orthogonal to it, so this equals removing gauge + harmonics together.
                    update[:, 1] = project_out(update[:, 1], harmonic_basis(
                        theta, config.freeze_harmonics, 0 if config.fix_gauge else 2))
                norms = np.linalg.norm(update, axis=1)
                rms = float(np.sqrt(np.mean(norms**2)))
                remaining = remaining_error(rms, previous)
                previous = rms
                applied = not (coarse and it == 1 and rms < stop_px)
                if applied:
                    shifts = shifts + update
                report = IterationReport(
                    level=factor, iteration=it, rms_update_px=rms,
                    max_update_px=float(norms.max()), residual=float(np.nanmedian(reg[:, 3])),
                    confidence=float(np.median(reg[:, 2])), seconds=time.perf_counter() - t0,
                    applied=applied, remaining_px=remaining,
                )
                result.reports.append(report)
                log.info(report.line())
                if progress is not None:
                    progress(report)
                if not applied:
                    result.skipped.append(factor)
                    break
                done = rms < stop_px if coarse else (
                    remaining is not None and remaining < stop_px)
                if done:
                    result.converged[factor] = True
                    break
            runner.release(factor)
    finally:
        runner.close()
    result.shifts = shifts
    result.seconds = time.perf_counter() - t_start
    return result

