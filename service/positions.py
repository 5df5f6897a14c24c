"""Stage-position history: the fine-stage offset at any past time.

An image shows drift *plus* the piezo offset that was applied at its exposure. The pipeline
records every stage readback (from the motors' monitors, or the commanded targets when there
is no readback) and asks for the offset at each frame's exposure timestamp, so the drift model
is fed the drift alone.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping

AXES = ("x", "y", "z")


class PositionHistory:
    """Bounded, time-ordered history of stage offsets from their nominal positions.

    Parameters
    ----------
    maxlen : int
        Samples kept (older ones are forgotten; a frame older than the history gets the oldest).
    """

    def __init__(self, maxlen: int = 20000) -> None:
        if maxlen < 2:
            raise ValueError(f"maxlen must be >= 2, got {maxlen}")
        self._t: deque[float] = deque(maxlen=maxlen)
        self._v: deque[tuple[float, float, float]] = deque(maxlen=maxlen)
        self.nominal: dict[str, float] = dict.fromkeys(AXES, 0.0)
        self._last: dict[str, float] = dict.fromkeys(AXES, 0.0)
        self._seen: set[str] = set()  # axes with at least one readback

    def set_nominal(self, positions_um: Mapping[str, float]) -> None:
        """Set the nominal (zero-correction) positions; offsets are measured from these."""
        for axis, value in positions_um.items():
            if axis not in AXES:
                raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
            if not math.isfinite(value):
                raise ValueError(f"nominal {axis} position must be finite, got {value}")
            self.nominal[axis] = float(value)
            if axis not in self._seen:  # no readback yet: the stage is assumed at nominal
                self._last[axis] = float(value)

    def record(self, t: float, positions_um: Mapping[str, float]) -> None:
        """Record absolute positions of some axes at time ``t`` (others keep their last value).

        Out-of-order samples (older than the newest) are ignored: monitors can arrive late and
        a late sample must not rewrite history the drift model has already used.
        """
        if self._t and t < self._t[-1]:
            return
        for axis, value in positions_um.items():
            if axis in AXES and math.isfinite(value):
                self._last[axis] = float(value)
                self._seen.add(axis)
        self._t.append(float(t))
        self._v.append(tuple(self._last[a] - self.nominal[a] for a in AXES))  # type: ignore[arg-type]

    def offset_at(self, t: float) -> dict[str, float]:
        """Offset from nominal per axis at time ``t`` (the last sample at or before ``t``)."""
        if not self._t:
            return dict.fromkeys(AXES, 0.0)
        i = bisect.bisect_right(self._t, t) - 1
        v = self._v[max(i, 0)]
        return dict(zip(AXES, v, strict=True))

    def current(self) -> dict[str, float]:
        """Latest absolute positions per axis."""
        return dict(self._last)
