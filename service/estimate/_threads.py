"""Thread-pool discipline for the estimators.

The refinement's small matrix products (a few rows times a spectrum) run in ~2 ms on one
thread, but OpenBLAS's own pool fighting the FFT workers (and any other process) on a 2-core
machine turned them into ~90 ms (measured). FFT parallelism is set explicitly with
``workers``; BLAS is pinned to one thread for the duration of an estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache

from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    # Building a controller inspects the loaded libraries (ms); reusing one costs ~10 us a use.
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread inside the ``with`` block (restored afterwards)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def blas_single_threaded(fn):  # type: ignore[no-untyped-def]
    """Decorate a method so it runs with :func:`single_threaded_blas`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper
