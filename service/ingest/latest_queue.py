"""An ordered asyncio queue whose droppable items are bounded, newest-wins.

The frame receiver must never block or slow the detector, yet some messages (scan start/end,
dark and flat frames) are needed downstream and may not be lost. :class:`LatestQueue` keeps
every item in arrival order; only items classed as *droppable* (projections) count towards
``maxsize``, and when a droppable item arrives while ``maxsize`` droppable items are pending, the
**oldest pending droppable** item is discarded and counted. Lossless items are never dropped,
so a consumer can never see a frame of scan B before scan B's ``scan_start``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by :meth:`LatestQueue.get` once the queue is closed and drained."""


def _always(_: object) -> bool:
    return True


class LatestQueue(Generic[T]):
    """Ordered queue; ``put`` never blocks; droppable items are bounded, newest-wins.

    Parameters
    ----------
    maxsize : int
        Maximum number of pending *droppable* items (>= 1). Lossless items are not counted and
        never dropped; watch :attr:`max_lossless_depth` for a consumer that falls behind.
    droppable : callable, optional
        ``droppable(item) -> bool``; by default every item is droppable (a plain newest-wins
        queue).

    Notes
    -----
    Not thread-safe: use it from one event loop (the receiver puts, consumers get).
    """

    def __init__(self, maxsize: int, *, droppable: Callable[[T], bool] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"LatestQueue maxsize must be an int >= 1, got {maxsize!r}")
        self._maxsize = maxsize
        self._droppable = droppable if droppable is not None else _always
        # OrderedDict: O(1) removal of the oldest droppable item from the middle of the order.
        self._items: OrderedDict[int, tuple[T, bool]] = OrderedDict()
        self._droppable_keys: deque[int] = deque()
        self._next_key = 0
        self._not_empty = asyncio.Event()
        self._closed = False
        #: Number of droppable items discarded because the queue was full.
        self.dropped_overload = 0
        #: Highest number of lossless items pending at once.
        self.max_lossless_depth = 0

    @property
    def maxsize(self) -> int:
        """Maximum number of pending droppable items."""
        return self._maxsize

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def qsize(self) -> int:
        """Return the number of pending items of both classes."""
        return len(self._items)

    @property
    def droppable_depth(self) -> int:
        """Number of pending droppable items."""
        return len(self._droppable_keys)

    @property
    def lossless_depth(self) -> int:
        """Number of pending lossless items."""
        return len(self._items) - len(self._droppable_keys)

    def empty(self) -> bool:
        """Whether nothing is pending."""
        return not self._items

    def put(self, item: T) -> T | None:
        """Append ``item``; never blocks.

        Returns
        -------
        object or None
            The droppable item discarded to make room, if any.

        Raises
        ------
        QueueClosed
            If the queue was closed.
        """
        if self._closed:
            raise QueueClosed("put on a closed LatestQueue")
        droppable = bool(self._droppable(item))
        dropped: T | None = None
        if droppable and len(self._droppable_keys) >= self._maxsize:
            oldest = self._droppable_keys.popleft()
            dropped = self._items.pop(oldest)[0]
            self.dropped_overload += 1
        key = self._next_key
        self._next_key += 1
        self._items[key] = (item, droppable)
        if droppable:
            self._droppable_keys.append(key)
        else:
            self.max_lossless_depth = max(self.max_lossless_depth, self.lossless_depth)
        self._not_empty.set()
        return dropped

    def get_nowait(self) -> T:
        """Remove and return the oldest pending item.

        Raises
        ------
        asyncio.QueueEmpty
            If nothing is pending (also after :meth:`close`).
        """
        if not self._items:
            raise asyncio.QueueEmpty
        _, (item, droppable) = self._items.popitem(last=False)
        if droppable:
            # The oldest item overall, if droppable, is also the oldest droppable one.
            self._droppable_keys.popleft()
        return item

    async def get(self) -> T:
        """Wait for and return the oldest pending item.

        Raises
        ------
        QueueClosed
            Once the queue is closed and every pending item was taken.
        """
        while not self._items:
            if self._closed:
                raise QueueClosed("LatestQueue closed")
            self._not_empty.clear()
            await self._not_empty.wait()
        return self.get_nowait()

    def close(self) -> None:
        """Refuse further puts; waiting getters drain what is pending, then get QueueClosed."""
        self._closed = True
        self._not_empty.set()
