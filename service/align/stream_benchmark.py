r"""Peak memory of the in-memory serial runner vs the streaming runner (``executor="stream"``).

Writes synthetic raw Data Exchange scans (Gaussian balls, random per-projection shifts,
uint16 counts, chunked as :func:`~.io.data_chunks`) of growing height, and aligns each one
iteration in a fresh subprocess per runner, reading the subprocess's peak resident memory
(``getrusage`` ``ru_maxrss``). The serial runner holds the whole float32 stack, so its
peak grows with ``n * rows * cols``; the streaming runner's should stay flat apart from its
tasks (see :mod:`.memory`)::

    python -m tomolock.service.align.stream_benchmark --rows 256 512 1024 2048 \
        --projections 360 --cols 1024 --level 8

A binned level (``--level 8``) keeps the reconstruction cheap while every runner still
has to read, and the serial one to hold, the full-resolution stack. JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from .io import data_chunks

__all__ = ["main", "measure", "write_synthetic_scan"]


def write_synthetic_scan(path: str | Path, n: int, rows: int, cols: int, seed: int = 0,
                         block: int = 16) -> np.ndarray:
    """Write a raw Data Exchange scan block by block (never the whole stack in memory).

    Returns the ``(n, 2)`` true ``(dy, dx)`` shifts.
    """
    rng = np.random.default_rng(seed)
    theta = np.linspace(0.0, 180.0, n, endpoint=False)
    shifts = rng.normal(0.0, 1.5, (n, 2))
    k = 12
    pos = rng.uniform(-0.3, 0.3, (k, 3)) * np.array([cols, cols, rows])
    width = rng.uniform(0.03, 0.08, k) * min(rows, cols)
    amp = rng.uniform(0.5, 1.0, k) / width
    r = np.arange(rows)[:, None] - (rows - 1) / 2.0
    c = np.arange(cols)[None, :] - (cols - 1) / 2.0
    with h5py.File(path, "w") as f:
        ex = f.create_group("exchange")
        data = ex.create_dataset("data", shape=(n, rows, cols), dtype=np.uint16,
                                 chunks=data_chunks((n, rows, cols)))
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            out = np.empty((i1 - i0, rows, cols), np.uint16)
            for i in range(i0, i1):
                t = np.radians(theta[i])
                proj = np.zeros((rows, cols))
                for (x, y, z), w, a in zip(pos, width, amp, strict=True):
                    u = x * np.cos(t) - y * np.sin(t) + shifts[i, 1]
                    proj += a * np.sqrt(np.pi) * w * np.exp(
                        -((c - u) ** 2) / w**2 - ((r - z - shifts[i, 0]) ** 2) / w**2)
                out[i - i0] = np.round(1000.0 * np.exp(-proj) + 100.0)
            data[i0:i1] = out
        ex.create_dataset("data_white", data=np.full((1, rows, cols), 1100, np.uint16))
        ex.create_dataset("data_dark", data=np.full((1, rows, cols), 100, np.uint16))
        ex.create_dataset("theta", data=theta).attrs["units"] = "degrees"
    return shifts


def _one(path: str, executor: str, level: int, scratch: str) -> dict[str, float | str]:
    """Align ``path`` once in this process and return its memory and time."""
    from .engine import AlignConfig, align
    from .io import ProjectionFile

    src = ProjectionFile.open(path)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = AlignConfig(levels=(level,), max_iterations=1, min_size_px=8)
    t0 = time.perf_counter()
    result = align(src, src.theta_deg, None, cfg, executor=executor,  # type: ignore[arg-type]
                   scratch_dir=scratch)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"executor": executor, "baseline_mib": base / 2**20, "peak_mib": peak / 2**20,
            "added_mib": (peak - base) / 2**20, "seconds": seconds,
            "residual": result.reports[-1].residual}


def measure(path: str | Path, executor: str, level: int, scratch: str | Path) -> dict:
    """Run :func:`_one` in a fresh interpreter (a clean ``ru_maxrss``); return its record."""
    out = subprocess.run(
        [sys.executable, "-m", "tomolock.service.align.stream_benchmark", "--one", executor,
         str(path), "--level", str(level), "--scratch", str(scratch)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module notes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--projections", type=int, default=360)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--level", type=int, default=8)
    parser.add_argument("--executors", nargs="+", default=["serial", "stream"])
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where scans and scratch go (default a temporary directory)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("path", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(_one(args.path, args.one, args.level, str(args.scratch))))
        return 0
    from .memory import estimate_bytes

    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"scan_{rows}.h5"
            write_synthetic_scan(path, args.projections, rows, args.cols)
            model = estimate_bytes(args.projections, rows, args.cols, args.level, workers=1)
            for executor in args.executors:
                rec = measure(path, executor, args.level, tmp)
                rec.update(n=args.projections, rows=rows, cols=args.cols, level=args.level,
                           stack_mib=args.projections * rows * args.cols * 4 / 2**20,
                           model_stream_task_mib=model.stream_task_bytes / 2**20)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                                  for k, v in rec.items()}), flush=True)
            path.unlink()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
