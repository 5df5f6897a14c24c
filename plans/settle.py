"""Wait until the service's drift model has settled (plan stub), before a reference scan.

Why: a reference projection is stored with the sample position the drift model predicts for
it, and every later corrected scan is steered to ``reference + that position``. Right after
the service starts or a new runout model is installed, the fused offset is still converging
on the sensor feeds (measured on the simulated beamline: ~70 nm = 2.3 px at 0 deg in the
first seconds, settling over ~5 s). References taken meanwhile carry that error into every
corrected scan (0.8-1 px RMS instead of 0.25 px). Waiting costs seconds once per reference.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps

from tomolock.plans._detector import MsgGen, check_number, reading_value

__all__ = ["ModelNotSettledError", "ModelSettle", "wait_for_model"]

log = logging.getLogger(__name__)

#: The stage counts as standing still while its angle readback stays within this.
ANGLE_TOLERANCE_DEG = 0.01


class ModelNotSettledError(TimeoutError):
    """The drift model did not settle within the timeout (the message says how far it was)."""


@dataclass(frozen=True)
class ModelSettle:
    """What "settled" means: no trend over ``window_s`` and a small uncertainty.

    The trend is the least-squares slope of the predicted position over the window times
    the window length: a converging model moves steadily, while a settled one only wanders
    at the level of its own uncertainty (a max-min spread would mistake that for motion).

    Parameters
    ----------
    max_change_um : float
        Largest trend (slope x ``window_s``) of the predicted position per axis; 5 nm =
        0.17 px at 30 nm pixels.
    max_std_um : float
        Largest predicted 1-sigma uncertainty per axis at the end of the window, at the
        current angle and at any angle of a turn (the references span the turn: without a
        runout calibration the other angles stay uncertain however long one waits).
    window_s : float
        Length of the window of agreeing polls.
    poll_s : float
        Time between polls.
    timeout_s : float
        Give up (:class:`ModelNotSettledError`) after this long.
    axes : tuple of str
        Axes judged: ``x`` (across the beam: what projections show) by default; ``z`` runs
        along the beam, invisible in parallel-beam projections.
    """

    max_change_um: float = 0.005
    max_std_um: float = 0.006
    window_s: float = 4.0
    poll_s: float = 0.25
    timeout_s: float = 60.0
    axes: tuple[str, ...] = ("x",)

    def __post_init__(self) -> None:
        for name in ("max_change_um", "max_std_um", "window_s", "poll_s", "timeout_s"):
            check_number(name, getattr(self, name), positive=True)
        if self.poll_s > self.window_s:
            raise ValueError(f"poll_s ({self.poll_s}) must not exceed window_s ({self.window_s})")
        if not self.axes or any(a not in ("x", "z") for a in self.axes):
            raise ValueError(f"axes must be a non-empty subset of ('x', 'z'), got {self.axes!r}")


def wait_for_model(service: Any, settle: ModelSettle | None = None) -> MsgGen:
    """Poll the service until its predicted position is steady and certain (plan stub).

    The stage should stand still meanwhile (the prediction is for the current angle). Logs
    progress every ~2 s. Reads use ``bps.read`` outside any event bundle, so the stub works
    inside or outside a run; nothing blocks the RunEngine (``bps.sleep`` between polls).

    Parameters
    ----------
    service : TomolockService
        The service device (its ``model`` child is read).
    settle : ModelSettle, optional
        Criteria and timeout.

    Returns
    -------
    dict
        ``{"waited_s", "angle_deg", "position_um": {axis}, "std_um": {axis},
        "change_um": {axis}}`` at the moment it settled.

    Raises
    ------
    ModelNotSettledError
        When the criteria are not met within ``timeout_s``.
    """
    crit = settle or ModelSettle()
    reader = service.model
    start = time.monotonic()
    next_log = start + 2.0
    window: deque[tuple[float, float, dict[str, float]]] = deque()
    state: dict[str, Any] = {}
    while True:
        reading = yield from bps.read(reader)
        now = time.monotonic()
        angle = float(reading_value(reading, reader.angle_deg))
        pos = {a: float(reading_value(reading, getattr(reader, f"position_{a}_um")))
               for a in crit.axes}
        std = {a: max(float(reading_value(reading, getattr(reader, f"std_{a}_um"))),
                      float(reading_value(reading, getattr(reader, f"turn_std_{a}_um"))))
               for a in crit.axes}
        finite = all(math.isfinite(v) for v in (angle, *pos.values(), *std.values()))
        if not finite or (window and abs(window[-1][1] - angle) > ANGLE_TOLERANCE_DEG):
            window.clear()  # no prediction yet, or the stage rotated: start over
        if finite:
            window.append((now, angle, pos))
        # Drop the oldest poll only while the next one still spans the window: polls come
        # every poll_s plus the HTTP round trip (slow on a loaded host), so pruning at exactly
        # window_s could leave the window short of full at every poll.
        while len(window) > 1 and now - window[1][0] >= crit.window_s:
            window.popleft()
        change = {a: _trend(window, a, crit.window_s) for a in crit.axes}
        state = {"waited_s": round(now - start, 2), "angle_deg": angle, "position_um": pos,
                 "std_um": std, "change_um": change}
        full = bool(window) and now - window[0][0] >= crit.window_s
        if (full and all(change[a] <= crit.max_change_um for a in crit.axes)
                and all(std[a] <= crit.max_std_um for a in crit.axes)):
            log.info("drift model settled after %.1f s: %s", now - start, _describe(state))
            return state
        if now - start >= crit.timeout_s:
            raise ModelNotSettledError(
                f"the drift model did not settle within {crit.timeout_s:g} s "
                f"(criteria: trend <= {crit.max_change_um * 1e3:g} nm over "
                f"{crit.window_s:g} s, std <= {crit.max_std_um * 1e3:g} nm; now "
                f"{_describe(state)}); a std of micrometres means no runout model: run "
                "runout_calibration first; otherwise check the interferometer/microscope "
                "feeds on the dashboard, or pass looser ModelSettle criteria"
            )
        if now >= next_log:
            log.info("waiting for the drift model to settle: %s", _describe(state))
            next_log = now + 2.0
        yield from bps.sleep(crit.poll_s)


def _trend(window: deque[tuple[float, float, dict[str, float]]], axis: str,
           span_s: float) -> float:
    """|least-squares slope| x ``span_s`` of the window's positions (inf if < 3 polls)."""
    if len(window) < 3:
        return math.inf
    t = [w[0] for w in window]
    y = [w[2][axis] for w in window]
    tm, ym = sum(t) / len(t), sum(y) / len(y)
    var = sum((ti - tm) ** 2 for ti in t)
    if var <= 0:
        return math.inf
    slope = sum((ti - tm) * (yi - ym) for ti, yi in zip(t, y, strict=True)) / var
    return abs(slope) * span_s


def _describe(state: dict[str, Any]) -> str:
    parts = []
    for axis, value in state["position_um"].items():
        std, change = state["std_um"][axis], state["change_um"][axis]
        parts.append(f"{axis} {value:+.4f} um, std over a turn {std * 1e3:.1f} nm, trend "
                     f"{change * 1e3:.1f} nm")
    return ", ".join(parts) + f" at {state['angle_deg']:.2f} deg"
