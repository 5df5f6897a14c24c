"""Timing and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def progress(msg: str) -> None:
    """Progress on stderr so stdout stays pure JSON."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def time_per_call(fn: Callable[[Any], Any], items: list[Any], *, warmup: int = 2) -> np.ndarray:
    """Wall time per call in ms for each item, after ``warmup`` untimed calls."""
    for it in items[:warmup]:
        fn(it)
    out = np.empty(len(items))
    for i, it in enumerate(items):
        t0 = time.perf_counter()
        fn(it)
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def summarise_ms(samples: np.ndarray) -> dict[str, float]:
    """Median/p90 ms and frames per second from per-call times."""
    med = float(np.median(samples))
    return {
        "ms_median": round(med, 3),
        "ms_p90": round(float(np.percentile(samples, 90)), 3),
        "fps": round(1e3 / med, 2),
        "n": len(samples),
    }


def machine_info() -> dict[str, Any]:
    """Facts about the machine the numbers were measured on."""
    import os

    import scipy
    import skimage

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
