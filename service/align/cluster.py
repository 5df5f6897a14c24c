"""Dask clients for the fine alignment: a local cluster on loopback, or a running scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

#: glibc mmap threshold for local worker processes. Dask's default ``MALLOC_TRIM_THRESHOLD_``
#: switches off glibc's adaptive mmap threshold, so every buffer over 128 KiB (each angle of
#: scikit-image's radon/iradon) is mmapped, page-faulted and unmapped again: measured 1.6x
#: slower reprojection in a worker than in the client (7.2 s vs 4.3-4.9 s for 121 x 16 x 240).
#: Fixing the threshold at 32 MiB keeps those buffers on the heap (4.7 s) and the trimming.
MMAP_THRESHOLD_BYTES = 32 * 2**20

#: Dask settings of the local cluster's workers. The statistical profiler samples every
#: thread's stack every 10 ms and needs the GIL for it, which scikit-image's warp holds:
#: measured 6.6 s vs 4.8 s for the same reprojection task with it off.
LOCAL_WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES,
    "distributed.worker.profile.enabled": False,
}


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    n_workers: int = 2,
    processes: bool = False,
    threads_per_worker: int = 1,
    memory_limit: str | int = "auto",
) -> Iterator[Any]:
    """Yield a ``dask.distributed.Client`` and close what was started.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``); default: start a
        ``LocalCluster`` bound to 127.0.0.1 without a dashboard.
    n_workers, processes, threads_per_worker, memory_limit
        Local cluster shape. One thread per worker avoids thread-pool oversubscription (the
        kernels are single-threaded numpy/scipy); ``processes=True`` side-steps the GIL for
        the pure-Python parts of scikit-image's radon at the price of transfers. The workers
        get :data:`LOCAL_WORKER_CONFIG` (no statistical profiler, a fixed glibc mmap
        threshold); a running cluster's workers need the same where they are started
        (``MALLOC_MMAP_THRESHOLD_=33554432``, ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``).

    Raises
    ------
    ValueError
        On a non-positive worker or thread count.
    OSError
        If the scheduler cannot be reached (from distributed, with its address).
    """
    import dask
    from dask.distributed import Client, LocalCluster

    # The p2p rechunk logs a WARNING per shuffle start/stop (two per iteration): routine here.
    logging.getLogger("distributed.shuffle._scheduler_plugin").setLevel(logging.ERROR)
    if scheduler is not None:
        client = Client(scheduler, timeout="10s")
        try:
            yield client
        finally:
            client.close()
        return
    if n_workers < 1 or threads_per_worker < 1:
        raise ValueError(f"need n_workers >= 1 and threads_per_worker >= 1, got "
                         f"{n_workers}, {threads_per_worker}")
    # Threads talk in-process (no sockets); worker processes listen on loopback only.
    network = {"host": "127.0.0.1"} if processes else {}
    # Dask's nannies write their pre-spawn environment (MALLOC_TRIM_THRESHOLD_,
    # OMP_NUM_THREADS=1, PYTHONHASHSEED, ...) into this process's os.environ when they spawn
    # the workers, where every later subprocess (an IOC, a scan) would inherit it: those
    # keys are put back when the cluster closes.
    saved = dict(os.environ)
    # Kept for the cluster's lifetime: a worker the nanny restarts gets it too.
    with dask.config.set(LOCAL_WORKER_CONFIG):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=threads_per_worker,
            processes=processes, dashboard_address=None, memory_limit=memory_limit,
            **network,
        )
        touched = {k for k in set(os.environ) | set(saved) if os.environ.get(k) != saved.get(k)}
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
            _restore_environ(saved, touched)


def _restore_environ(saved: dict[str, str], keys: set[str]) -> None:
    for key in keys:
        if key in saved:
            os.environ[key] = saved[key]
        else:
            os.environ.pop(key, None)
