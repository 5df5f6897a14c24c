"""``tomolock align``: post-scan fine alignment of a scan's projections on Dask.

Also runnable as ``python -m tomolock.service.align.cli``::

    tomolock align SCAN.drift.h5 --projections DATA.h5 [--scheduler tcp://host:8786]
                   [--out OUT.h5] [--shifts-out SHIFTS.csv]
                   [--executor auto|dask|stream|serial] [--memory-limit 24GiB]
                   [--scratch-dir DIR]

Starts from the drift log's residual shifts (or zeros without a log), aligns, and writes a
Data Exchange file (see :mod:`tomolock.service.align.io`) plus, optionally, a shift table.
``--executor auto`` (default) keeps the stack in the Dask cluster's memory when the memory
model (:mod:`tomolock.service.align.memory`) fits ``--memory-limit`` and otherwise streams
it from disk (:mod:`tomolock.service.align.runners`): reprojections then go to a scratch
folder in ``--scratch-dir`` (default: the output's directory), which with ``--scheduler``
must be a path on a filesystem every worker sees (as must the projection file).
Progress (one line per iteration and level) goes to stderr. Exit codes: 0 done (converged or
not: the summary says), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "build_parser", "main", "run"]


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be integers like 4,2,1, got {text!r}"
                                         ) from None
    if not levels or any(b < 1 for b in levels):
        raise argparse.ArgumentTypeError(f"levels must be positive integers, got {text!r}")
    return levels


def _size(text: str) -> int:
    from .memory import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cluster_memory(client: Any) -> int | None:
    """80 % of the workers' memory limits together (None if a worker has no limit)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    return int(0.8 * sum(limits)) if limits and all(limits) else None


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scan", nargs="?", type=Path, default=None,
                        help="the scan's drift log (*.drift.h5); omit to start from zero shifts")
    parser.add_argument("--projections", type=Path, required=True,
                        help="Data Exchange HDF5 with /exchange/data, data_white, data_dark, "
                             "theta (degrees)")
    parser.add_argument("--out", type=Path, default=None,
                        help="aligned Data Exchange output (default: <projections>.aligned.h5)")
    parser.add_argument("--shifts-out", type=Path, default=None,
                        help="also write the shifts as .h5/.npy/.csv")
    parser.add_argument("--mode", choices=("shifted", "raw"), default="shifted",
                        help="store transmission with the shifts undone, or the raw data")
    parser.add_argument("--scheduler", default=None,
                        help="dask scheduler address; default: a local cluster on 127.0.0.1")
    parser.add_argument("--workers", type=int, default=2, help="local cluster workers")
    parser.add_argument("--processes", action="store_true",
                        help="local cluster of processes instead of threads")
    parser.add_argument("--rechunk", choices=("tasks", "p2p"), default="tasks",
                        help="p2p: shuffle through the workers' disk (large scans)")
    parser.add_argument("--serial", action="store_true",
                        help="no Dask: one thread, the single-core reference loop "
                             "(same as --executor serial)")
    parser.add_argument("--executor", choices=("auto", "dask", "stream", "serial"),
                        default="auto",
                        help="auto: in cluster memory if the memory model fits "
                             "--memory-limit, else stream from disk (default auto)")
    parser.add_argument("--memory-limit", type=_size, default=None,
                        help="memory the alignment may use, e.g. 24GiB (default: 80%% of "
                             "this machine's, or of the workers' limits with --scheduler)")
    parser.add_argument("--scratch-dir", type=Path, default=None,
                        help="streaming scratch folder parent (default: the output's "
                             "directory); shared by all workers with --scheduler")
    parser.add_argument("--levels", type=_levels, default=(4, 2, 1),
                        help="binning factors, coarse to fine (default 4,2,1)")
    parser.add_argument("--max-iterations", type=int, default=None,
                        help="iterations per level at most (default 10 x the binning "
                             "factor: 40, 20, 10)")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="px: a level ends when the error still to come, estimated "
                             "from its last two RMS updates, is below this")
    parser.add_argument("--coarse-stop", type=float, default=None,
                        help="binned px: a binned level ends when its RMS update is below "
                             "this, and is skipped when its first update is (0: off; "
                             "default 0.25 for truncated sinograms, else off)")
    parser.add_argument("--method", choices=("fbp", "sart"), default="fbp")
    parser.add_argument("--search-radius", type=float, default=8.0,
                        help="px searched around the initial shifts at the first level")
    parser.add_argument("--centre-col", type=float, default=None,
                        help="rotation axis column (default (cols - 1) / 2)")
    parser.add_argument("--min-size", type=int, default=32,
                        help="skip levels whose binned frame is smaller than this")
    parser.add_argument("--angle-tolerance", type=float, default=0.05,
                        help="deg; projections match drift-log rows by angle")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``align`` sub-command on ``subparsers``; sets ``func`` to :func:`run`."""
    parser = subparsers.add_parser(
        "align", help="post-scan fine alignment (iterative reprojection on Dask)",
        description="Refine per-projection shifts by iterative reprojection and write a "
                    "Data Exchange file for tomopy/tomocupy.")
    _configure(parser)
    parser.set_defaults(func=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the stand-alone parser (``python -m tomolock.service.align.cli``)."""
    parser = argparse.ArgumentParser(prog="tomolock align", description=__doc__.split("\n")[0])
    _configure(parser)
    return parser


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the alignment described by parsed ``args``; return the exit code."""
    import numpy as np

    from .engine import AlignConfig, IterationReport, align, plan_levels
    from .io import ProjectionFile, initial_shifts_from_log, write_data_exchange, write_shifts
    from .memory import choose_executor
    from .runners import default_memory_limit

    try:
        source = ProjectionFile.open(args.projections)
        config = AlignConfig(
            levels=args.levels, max_iterations=args.max_iterations,
            tolerance_px=args.tolerance, method=args.method,
            search_radius_px=args.search_radius, centre_col=args.centre_col,
            min_size_px=args.min_size, rechunk=args.rechunk, coarse_stop_px=args.coarse_stop)
        levels = plan_levels(source.shape[1:], config)
        if args.scan is not None:
            initial, matched = initial_shifts_from_log(args.scan, source.theta_deg,
                                                       args.angle_tolerance)
            _say(f"initial shifts: {int(matched.sum())}/{matched.size} projections from "
                 f"{args.scan} (the rest start at 0)")
        else:
            initial = np.zeros((source.shape[0], 2))
            _say("initial shifts: zeros (no drift log given)")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        executor = "serial" if args.serial else args.executor
        out = args.out or args.projections.with_suffix(".aligned.h5")
        scratch = args.scratch_dir or out.resolve().parent
        if executor in ("auto", "stream") and not scratch.is_dir():
            raise ValueError(f"scratch directory {scratch} does not exist")
    except (FileNotFoundError, ValueError) as exc:
        _say(f"tomolock align: error: {exc}")
        return 2
    n, rows, cols = source.shape
    where = "serial" if executor == "serial" else (
        args.scheduler or f"local cluster x{args.workers}")
    _say(f"{n} projections of {rows}x{cols}; levels {levels}; {where}")

    def progress(report: IterationReport) -> None:
        _say(report.line())

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        client = None
        if executor != "serial":
            from .cluster import dask_client

            try:
                client = stack.enter_context(dask_client(
                    args.scheduler, n_workers=args.workers, processes=args.processes))
            except (OSError, ValueError) as exc:
                if args.scheduler is None:
                    raise
                _say(f"tomolock align: error: cannot reach the Dask scheduler at "
                     f"{args.scheduler} ({exc}); start one (`dask scheduler`) or leave "
                     "out --scheduler for a local cluster")
                return 2
        if executor == "auto":
            assert client is not None
            limit = args.memory_limit or (
                _cluster_memory(client) if args.scheduler else None) or default_memory_limit()
            executor = choose_executor(
                n, rows, cols, levels, limit, workers=sum(client.nthreads().values()),
                proj_chunk=config.proj_chunk, row_chunk=config.row_chunk,
                rechunk=config.rechunk)
            _say(f"executor {executor} (memory limit {limit / 2**30:.1f} GiB)")
        if executor == "stream":
            _say(f"streaming from {source.path}; scratch in {scratch}")
        try:
            result = align(source, source.theta_deg, initial, config, executor=executor,
                           client=client, progress=progress, scratch_dir=scratch)
        except (FileNotFoundError, ValueError) as exc:
            _say(f"tomolock align: error: {exc}")
            return 2
    reports = [asdict(r) for r in result.reports]
    write_data_exchange(out, source, result.shifts, initial=initial, mode=args.mode,
                        centre_col=args.centre_col, reports=reports,
                        options=asdict(config))
    if args.shifts_out is not None:
        write_shifts(args.shifts_out, source.theta_deg, result.shifts, initial)
    change = np.sqrt(np.mean(np.sum((result.shifts - initial) ** 2, axis=1)))
    summary = {"out": str(out), "levels": {str(k): v for k, v in result.converged.items()},
               "skipped_levels": list(result.skipped),
               "coarse_stop_px": result.coarse_stop_px,
               "truncated_fraction": result.truncated_fraction,
               "iterations": len(result.reports), "rms_change_px": float(change),
               "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; the ``python -m`` entry point."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
