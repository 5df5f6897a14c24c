"""``tomolock align``: post-scan fine alignment of a scan's projections on Dask.

Also runnable as ``python -m tomolock.service.align.cli``::

    tomolock align SCAN.drift.h5 --projections DATA.h5 [--scheduler tcp://host:8786]
                   [--out OUT.h5] [--shifts-out SHIFTS.csv]

Starts from the drift log's residual shifts (or zeros without a log), aligns, and writes a
Data Exchange file (see :mod:`tomolock.service.align.io`) plus, optionally, a shift table.
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
                        help="no Dask: one thread, the single-core reference loop")
    parser.add_argument("--levels", type=_levels, default=(4, 2, 1),
                        help="binning factors, coarse to fine (default 4,2,1)")
    parser.add_argument("--max-iterations", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="RMS update (px) that ends a level")
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

    try:
        source = ProjectionFile.open(args.projections)
        config = AlignConfig(
            levels=args.levels, max_iterations=args.max_iterations,
            tolerance_px=args.tolerance, method=args.method,
            search_radius_px=args.search_radius, centre_col=args.centre_col,
            min_size_px=args.min_size, rechunk=args.rechunk)
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
    except (FileNotFoundError, ValueError) as exc:
        _say(f"tomolock align: error: {exc}")
        return 2
    out = args.out or args.projections.with_suffix(".aligned.h5")
    n, rows, cols = source.shape
    _say(f"{n} projections of {rows}x{cols}; levels {levels}; "
         f"{'serial' if args.serial else args.scheduler or f'local cluster x{args.workers}'}")

    def progress(report: IterationReport) -> None:
        _say(report.line())

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.serial:
            projections: Any = np.concatenate(
                [source.absorption(i, min(i + 64, n)) for i in range(0, n, 64)])
            result = align(projections, source.theta_deg, initial, config, progress=progress)
        else:
            from .cluster import dask_client

            client = stack.enter_context(dask_client(
                args.scheduler, n_workers=args.workers, processes=args.processes))
            projections = source.absorption_dask(config.proj_chunk)
            result = align(projections, source.theta_deg, initial, config, executor="dask",
                           client=client, progress=progress)
    reports = [asdict(r) for r in result.reports]
    write_data_exchange(out, source, result.shifts, initial=initial, mode=args.mode,
                        centre_col=args.centre_col, reports=reports,
                        options=asdict(config))
    if args.shifts_out is not None:
        write_shifts(args.shifts_out, source.theta_deg, result.shifts, initial)
    change = np.sqrt(np.mean(np.sum((result.shifts - initial) ** 2, axis=1)))
    summary = {"out": str(out), "levels": {str(k): v for k, v in result.converged.items()},
               "iterations": len(result.reports), "rms_change_px": float(change),
               "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; the ``python -m`` entry point."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
