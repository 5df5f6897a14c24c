"""Safety interlocks between a correction setpoint and the stage.

Guarantees of :meth:`Interlocks.evaluate` (tested with many random inputs):

* a commanded target is never outside the axis soft limits, nor farther than
  ``max_total_correction_um`` from the nominal position;
* no axis is commanded more than ``max_step_um`` away from its current position: the target
  is clipped toward the request and ``"step_clipped"`` is reported;
* disabled -> ``"refuse"`` with no targets, effective for every evaluation that finishes
  after :meth:`Interlocks.disable` returns;
* stale (``|now - t_created| > staleness_timeout_s``), low-confidence, too uncertain or
  non-finite input -> ``"refuse"``;
* interferometer loss (when so configured), rate limit and dead band -> ``"hold"``.

A ``"move"`` decision commands only the axes listed in :attr:`Decision.targets_um`.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .setpoint import AXES, Setpoint

Action = Literal["move", "hold", "refuse"]

#: Reasons that forbid any move.
REFUSE_REASONS: tuple[str, ...] = (
    "disabled",
    "non_finite",
    "stale",
    "low_confidence",
    "uncertain",
    "no_soft_limit",
)
#: Reasons that keep the stage where it is for this update.
HOLD_REASONS: tuple[str, ...] = ("interferometer_lost", "rate_limited", "dead_band")
#: Reasons that modify a move (or stop one axis) without refusing the update.
LIMIT_REASONS: tuple[str, ...] = ("step_clipped", "soft_limit", "max_total_correction")
#: Every machine-readable reason code a decision may carry.
REASONS: tuple[str, ...] = REFUSE_REASONS + HOLD_REASONS + LIMIT_REASONS


class AxisLimits(BaseModel):
    """Soft travel limits of one axis, micrometres (absolute stage coordinates)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"soft limit low ({self.low}) must be below high ({self.high})")
        return self


def _default_limits() -> dict[str, AxisLimits]:
    return {a: AxisLimits(low=-50.0, high=50.0) for a in AXES}


class InterlockConfig(BaseModel):
    """Interlock settings (validated; unknown keys are rejected).

    Attributes
    ----------
    soft_limits : dict of str to AxisLimits
        Allowed absolute stage range per axis, micrometres. An axis without limits is never
        moved (``"no_soft_limit"``).
    max_step_um : float
        Largest move of one axis in one update, micrometres (> 0).
    max_total_correction_um : float
        Largest ``|target - nominal|`` per axis, micrometres (> 0).
    dead_band_um : float
        Moves smaller than this are skipped, micrometres (>= 0, < ``max_step_um``).
    min_interval_s : float
        Minimum time between two ``"move"`` decisions, seconds (>= 0).
    staleness_timeout_s : float
        A setpoint older than this (``now - t_created``) is refused, seconds (> 0).
    min_confidence : float
        Setpoints with lower confidence are refused, in ``[0, 1]``.
    max_std_um : float
        Setpoints with a larger one-sigma uncertainty on any axis are refused (> 0).
    hold_on_interferometer_loss : bool
        Hold while the interferometer reports a problem.
    enabled : bool
        Initial enable state.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    soft_limits: dict[str, AxisLimits] = Field(default_factory=_default_limits)
    max_step_um: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_total_correction_um: float = Field(default=20.0, gt=0, allow_inf_nan=False)
    dead_band_um: float = Field(default=0.005, ge=0, allow_inf_nan=False)
    min_interval_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    staleness_timeout_s: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    max_std_um: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    hold_on_interferometer_loss: bool = True
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        unknown = sorted(set(self.soft_limits) - set(AXES))
        if unknown:
            raise ValueError(f"soft_limits has unknown axes {unknown}; allowed {list(AXES)}")
        if self.dead_band_um >= self.max_step_um:
            raise ValueError(
                f"dead_band_um ({self.dead_band_um}) must be smaller than max_step_um "
                f"({self.max_step_um}), or no move could ever pass"
            )
        return self


@dataclass(frozen=True)
class Decision:
    """Outcome of one interlock evaluation.

    Attributes
    ----------
    action : {"move", "hold", "refuse"}
        What to do with the stage.
    targets_um : dict
        Commanded absolute targets of the axes to move (empty unless ``action == "move"``).
    requested_um : dict
        Targets the setpoint asked for.
    reasons : tuple of str
        Machine-readable reason codes (see :data:`REASONS`), in order of detection.
    axis_reasons : dict
        Reason codes per axis (limits, clipping, dead band).
    t : float
        Evaluation time.
    detail : str
        Human-readable explanation.
    """

    action: Action
    targets_um: dict[str, float]
    requested_um: dict[str, float]
    reasons: tuple[str, ...]
    axis_reasons: dict[str, tuple[str, ...]] = field(default_factory=dict)
    t: float = math.nan
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (lists instead of tuples)."""
        return {
            "action": self.action,
            "targets_um": dict(self.targets_um),
            "requested_um": dict(self.requested_um),
            "reasons": list(self.reasons),
            "axis_reasons": {a: list(r) for a, r in self.axis_reasons.items()},
            "t": self.t,
            "detail": self.detail,
        }


def _finite(x: float) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


class Interlocks:
    """Stateful interlocks: enable flag, rate limit and decision counters.

    Parameters
    ----------
    config : InterlockConfig, optional
        Settings; defaults to ``InterlockConfig()``.
    """

    def __init__(self, config: InterlockConfig | None = None) -> None:
        self.config = config or InterlockConfig()
        self._lock = threading.Lock()
        # An Event gives a lock-free, instantaneous read of the enable state.
        self._enabled = threading.Event()
        if self.config.enabled:
            self._enabled.set()
        self._disable_reason = "" if self.config.enabled else "disabled by configuration"
        self._last_move_t: float | None = None
        self._actions: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()

    # ----------------------------------------------------------------- enable state
    @property
    def enabled(self) -> bool:
        """Whether corrections may move the stage."""
        return self._enabled.is_set()

    @property
    def disable_reason(self) -> str:
        """Why the interlocks were last disabled ("" while enabled)."""
        return "" if self.enabled else self._disable_reason

    def disable(self, reason: str = "operator") -> None:
        """Forbid every move from now on (thread-safe, takes effect immediately).

        Parameters
        ----------
        reason : str
            Free-text reason, reported in refused decisions.
        """
        self._enabled.clear()
        with self._lock:
            self._disable_reason = str(reason) or "unspecified"

    def enable(self) -> None:
        """Allow moves again (thread-safe). The rate limit restarts from scratch."""
        with self._lock:
            self._disable_reason = ""
            self._last_move_t = None
        self._enabled.set()

    # ----------------------------------------------------------------- counters
    def counters(self) -> dict[str, dict[str, int]]:
        """Return decision counts per action and per reason code."""
        with self._lock:
            return {"actions": dict(self._actions), "reasons": dict(self._reasons)}

    def reset_counters(self) -> None:
        """Zero all counters."""
        with self._lock:
            self._actions.clear()
            self._reasons.clear()

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self,
        setpoint: Setpoint,
        current_positions_um: dict[str, float],
        now: float,
        *,
        interferometer_ok: bool,
    ) -> Decision:
        """Decide what to do with ``setpoint`` given the stage's current positions.

        Parameters
        ----------
        setpoint : Setpoint
            Requested correction.
        current_positions_um : dict of str to float
            Current absolute position of every axis in ``setpoint.axes``, micrometres.
        now : float
            Current time, same clock as ``setpoint.t_created``.
        interferometer_ok : bool
            Health of the interferometer feed.

        Returns
        -------
        Decision

        Raises
        ------
        ValueError
            If ``current_positions_um`` lacks an axis of the setpoint.
        TypeError
            If ``setpoint`` is not a :class:`Setpoint`.
        """
        if not isinstance(setpoint, Setpoint):
            raise TypeError(f"setpoint must be a Setpoint, got {type(setpoint).__name__}")
        missing = [a for a in setpoint.axes if a not in current_positions_um]
        if missing:
            raise ValueError(
                f"current_positions_um lacks axes {missing} (setpoint axes {list(setpoint.axes)})"
            )
        with self._lock:
            decision = self._evaluate_locked(setpoint, current_positions_um, now, interferometer_ok)
            if decision.action == "move" and not self._enabled.is_set():
                # disable() raced with this evaluation: it wins.
                decision = self._refuse(setpoint, now, ["disabled"], self._disable_reason)
            if decision.action == "move":
                self._last_move_t = now
            self._actions[decision.action] += 1
            self._reasons.update(set(decision.reasons))
            return decision

    def _refuse(self, setpoint: Setpoint, now: float, reasons: list[str], detail: str) -> Decision:
        return Decision(
            action="refuse",
            targets_um={},
            requested_um=dict(setpoint.targets_um),
            reasons=tuple(reasons),
            t=now,
            detail=detail,
        )

    def _evaluate_locked(
        self,
        sp: Setpoint,
        current: dict[str, float],
        now: float,
        interferometer_ok: bool,
    ) -> Decision:
        cfg = self.config
        if not self._enabled.is_set():
            return self._refuse(sp, now, ["disabled"], f"disabled: {self._disable_reason}")

        refuse: list[str] = []
        details: list[str] = []
        if not (sp.is_finite() and _finite(now) and all(_finite(current[a]) for a in sp.axes)):
            refuse.append("non_finite")
            details.append("non-finite setpoint, time or position")
        else:
            age = now - sp.t_created
            # A setpoint from the future means mismatched clocks: as untrustworthy as old.
            if abs(age) > cfg.staleness_timeout_s:
                refuse.append("stale")
                details.append(f"setpoint age {age:.3f} s (limit {cfg.staleness_timeout_s} s)")
            if sp.confidence < cfg.min_confidence:
                refuse.append("low_confidence")
                details.append(f"confidence {sp.confidence:.3f} < {cfg.min_confidence}")
            worst = max(sp.std_um[a] for a in sp.axes)
            if worst > cfg.max_std_um:
                refuse.append("uncertain")
                details.append(f"std {worst:.4f} um > {cfg.max_std_um} um")
        unlimited = [a for a in sp.axes if a not in cfg.soft_limits]
        if unlimited:
            refuse.append("no_soft_limit")
            details.append(f"no soft limits configured for axes {unlimited}")
        if refuse:
            return self._refuse(sp, now, refuse, "; ".join(details))

        hold: list[str] = []
        if not interferometer_ok and cfg.hold_on_interferometer_loss:
            hold.append("interferometer_lost")
        if self._last_move_t is not None and now - self._last_move_t < cfg.min_interval_s:
            hold.append("rate_limited")
        if hold:
            return Decision(
                action="hold",
                targets_um={},
                requested_um=dict(sp.targets_um),
                reasons=tuple(hold),
                t=now,
                detail=", ".join(hold),
            )

        targets: dict[str, float] = {}
        axis_reasons: dict[str, tuple[str, ...]] = {}
        for a in sp.axes:
            final, why = self._limit_axis(a, sp.targets_um[a], sp.nominal_um[a], current[a])
            axis_reasons[a] = why
            if final is not None:
                targets[a] = final
        reasons = tuple(dict.fromkeys(r for why in axis_reasons.values() for r in why))
        action: Action = "move" if targets else "hold"
        return Decision(
            action=action,
            targets_um=targets,
            requested_um=dict(sp.targets_um),
            reasons=reasons,
            axis_reasons=axis_reasons,
            t=now,
            detail="; ".join(f"{a}: {','.join(w)}" for a, w in axis_reasons.items() if w),
        )

    def _limit_axis(
        self, axis: str, requested: float, nominal: float, current: float
    ) -> tuple[float | None, tuple[str, ...]]:
        """Return the commanded target of one axis (None: do not move it) and why."""
        cfg = self.config
        lim = cfg.soft_limits[axis]
        why: list[str] = []
        low = max(lim.low, nominal - cfg.max_total_correction_um)
        high = min(lim.high, nominal + cfg.max_total_correction_um)
        target = requested
        if target < lim.low or target > lim.high:
            why.append("soft_limit")
        if abs(requested - nominal) > cfg.max_total_correction_um:
            why.append("max_total_correction")
        if low > high:
            # Nominal position outside the soft limits: nowhere is safe to go.
            if "soft_limit" not in why:
                why.append("soft_limit")
            return None, tuple(why)
        target = min(max(target, low), high)
        step_low = max(low, current - cfg.max_step_um)
        step_high = min(high, current + cfg.max_step_um)
        if step_low > step_high:
            # The stage is already more than one step outside the allowed range.
            if "soft_limit" not in why:
                why.append("soft_limit")
            return None, tuple(why)
        clipped = min(max(target, step_low), step_high)
        if clipped != target:
            why.append("step_clipped")
        if abs(clipped - current) <= cfg.dead_band_um:
            why.append("dead_band")
            return None, tuple(why)
        return clipped, tuple(why)
