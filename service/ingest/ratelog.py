"""Logging at a bounded rate, so a flood of bad messages cannot flood the log."""

from __future__ import annotations

import logging
import time
from collections import Counter


class RateLimitedLog:
    """Log at most one record per key and interval, with the number suppressed since.

    Parameters
    ----------
    logger : logging.Logger
        Where records go.
    interval_s : float
        Minimum seconds between two records of the same key (> 0).
    """

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self._logger = logger
        self._interval = float(interval_s)
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` under ``key`` unless that key logged within the interval.

        Returns
        -------
        bool
            Whether a record was emitted.
        """
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            self._logger.log(level, msg + " (%d similar suppressed)", *args, n)
        else:
            self._logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Shorthand for :meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)
