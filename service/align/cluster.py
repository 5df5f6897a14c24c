"""Dask clients for the fine alignment: a local cluster on loopback, or a running scheduler."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


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
        the pure-Python parts of scikit-image's radon at the price of transfers.

    Raises
    ------
    ValueError
        On a non-positive worker or thread count.
    OSError
        If the scheduler cannot be reached (from distributed, with its address).
    """
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
    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
        dashboard_address=None, memory_limit=memory_limit, **network,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
