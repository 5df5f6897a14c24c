"""Bounded waits for asyncio tasks that talk to hardware.

A Channel Access put or monitor on an IOC that has gone can stay pending forever, and a
cancelled task may wait in its own cleanup. The feedback loop and the service's shutdown must
not hang on that: they wait a bounded time, log what is left behind, and go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def wind_down(tasks: Iterable[asyncio.Future[Any]], timeout: float, what: str
                    ) -> set[asyncio.Future[Any]]:
    """Wait up to ``timeout`` s for ``tasks`` (typically just cancelled) and return the stuck.

    Outcomes of the finished tasks are read (exceptions logged at debug level, so none is
    "never retrieved"); each stuck task is logged at warning level and gets its outcome read
    whenever it ends.

    Parameters
    ----------
    tasks : iterable of asyncio.Future
        The tasks to wait for.
    timeout : float
        Seconds to wait at most.
    what : str
        What the tasks are, for the log (``"cancelled move"``, ``"feed task"``).

    Returns
    -------
    set of asyncio.Future
        The tasks still running after ``timeout``.
    """
    pending = set(tasks)
    if not pending:
        return set()
    done, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s ended with %r", what, task.exception())
    for task in stuck:
        log.warning("%s still pending %.1f s later; not waiting for it: %r", what, timeout, task)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return stuck
