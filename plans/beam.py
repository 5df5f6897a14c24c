"""Suspend a scan on beam loss: a bluesky suspender on an ophyd-async beam-status signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bluesky.suspenders import SuspendBoolLow

__all__ = ["SuspenderSignal", "beam_suspender"]


class SuspenderSignal:
    """Adapt an ophyd-async ``SignalR`` to the ophyd-style ``subscribe`` bluesky suspenders use.

    bluesky's suspenders call ``signal.subscribe(callback, event_type=..., run=True)`` and then
    ``callback(value=...)``; ophyd-async signals call ``callback({name: reading})`` from
    ``subscribe_reading``. Subscribe from the RunEngine's event loop (the plan installs the
    suspender with a message, see :func:`beam_suspender`).
    """

    def __init__(self, signal: Any) -> None:
        if not hasattr(signal, "subscribe_reading") or not hasattr(signal, "clear_sub"):
            raise TypeError(f"expected an ophyd-async signal, got {type(signal).__name__}")
        self.signal = signal
        self._callbacks: dict[Any, Callable[[Any], None]] = {}

    @property
    def name(self) -> str:
        """The wrapped signal's name."""
        return str(self.signal.name)

    def subscribe(self, callback: Any, event_type: Any = None, run: bool = True) -> None:
        """Call ``callback(value=...)`` on every update (the current value first)."""

        def on_reading(reading: dict[str, Any]) -> None:
            for r in reading.values():
                callback(value=r["value"], timestamp=r["timestamp"])

        self._callbacks[callback] = on_reading
        self.signal.subscribe_reading(on_reading)

    def clear_sub(self, callback: Any, event_type: Any = None) -> None:
        """Stop calling ``callback``."""
        on_reading = self._callbacks.pop(callback, None)
        if on_reading is not None:
            self.signal.clear_sub(on_reading)


def beam_suspender(beam: Any, *, resume_delay_s: float = 1.0) -> SuspendBoolLow:
    """Suspender that pauses a run while ``beam`` reads 0 and resumes ``resume_delay_s`` after.

    Parameters
    ----------
    beam : SignalR
        Beam-available status (1 = beam, 0 = lost), e.g. ``epics_signal_r(int, "SIM:CTRL:BEAM")``.
    resume_delay_s : float
        Wait after the beam is back (beam stabilisation) before resuming.
    """
    if not resume_delay_s >= 0:
        raise ValueError(f"resume_delay_s must be >= 0, got {resume_delay_s!r}")
    return SuspendBoolLow(
        SuspenderSignal(beam), sleep=resume_delay_s,
        tripped_message="X-ray beam lost: scan suspended until it is back",
    )
