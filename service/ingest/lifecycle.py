"""Start/stop protocol shared by the ingest receivers (frames, bluesky documents).

A receiver's ``run()`` awaits one receive at a time (``_pending``) until :meth:`stop`; used as
``async with`` it runs as a task and is stopped and awaited on exit. Subclasses implement
``open()``, ``run()`` and ``close()`` and name their task.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self


class ReceiverLifecycle:
    """Idempotent stop, and ``async with`` running the receiver as a task."""

    _task_name = "receiver"

    def _init_lifecycle(self) -> None:
        self._pending: asyncio.Future[Any] | None = None
        self._stopping = False
        self._running = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def open(self) -> Any:  # pragma: no cover - implemented by subclasses
        """Create and connect (or bind) the socket."""
        raise NotImplementedError

    async def run(self) -> None:  # pragma: no cover - implemented by subclasses
        """Receive until :meth:`stop`."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - implemented by subclasses
        """Release the sockets."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe to call from the loop at any time, idempotent)."""
        self._stopping = True
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
        if not self._running:
            self.close()

    async def __aenter__(self) -> Self:
        self.open()
        self._task = asyncio.create_task(self.run(), name=self._task_name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
