"""The feedback controller: prediction -> setpoint -> interlocks -> publish -> (apply).

One :meth:`FeedbackController.step` per upcoming exposure. Every held or refused correction is
returned and logged with its reason codes on the ``tomolock.service.feedback.loop`` logger
(refusals at WARNING; holds, the loop working as intended, at DEBUG).
A failed stage move disables the interlocks (reason ``"actuator error: ..."``) so nothing
moves again until an operator calls :meth:`Interlocks.enable`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .actuator import ActuatorError, StageActuator
from .interlocks import Decision, Interlocks
from .publisher import SetpointPublisher
from .setpoint import DEFAULT_AXES, Setpoint, make_setpoint, validate_axes

logger = logging.getLogger(__name__)

Mode = Literal["publish-only", "apply"]
MODES: tuple[str, ...] = ("publish-only", "apply")


class PredictionLike(Protocol):
    """What the controller reads from a drift-model prediction.

    ``angle_deg`` may be named ``angle``; ``confidence`` is optional (default 1).
    """

    mean_um: Mapping[str, float]
    std_um: Mapping[str, float]
    t: float


@dataclass(frozen=True)
class FeedbackResult:
    """Outcome of one controller step.

    Attributes
    ----------
    setpoint : Setpoint
        The requested correction.
    decision : Decision
        The interlocks' verdict.
    applied_um : dict
        Targets actually sent to the stage (empty in publish-only mode or when not moving).
    published : bool
        Whether the message went out on the publisher.
    error : str
        Actuator or publisher error text ("" if none).
    """

    setpoint: Setpoint
    decision: Decision
    applied_um: dict[str, float] = field(default_factory=dict)
    published: bool = False
    error: str = ""


class FeedbackController:
    """Tie setpoint generation, interlocks, publication and actuation together.

    Parameters
    ----------
    interlocks : Interlocks
        Safety interlocks (shared with whatever enables/disables them, e.g. the API).
    actuator : StageActuator
        Source of current positions; also the mover in ``"apply"`` mode.
    publisher : SetpointPublisher, optional
        Where decisions are published (None: not published).
    mode : {"publish-only", "apply"}
        ``"apply"`` moves the stage through ``actuator``; ``"publish-only"`` never does.
    axes : iterable of str, optional
        Corrected axes, default ``("x", "z")``.
    nominal_um : mapping of str to float, optional
        Stage position meaning "no correction" per axis, default 0.
    move_timeout_s : float, optional
        Timeout of one stage move, seconds.
    clock : callable, optional
        Time source (default ``time.time``); must match the prediction's ``t`` clock.
    """

    def __init__(
        self,
        interlocks: Interlocks,
        actuator: StageActuator,
        publisher: SetpointPublisher | None = None,
        *,
        mode: Mode = "publish-only",
        axes: Iterable[str] = DEFAULT_AXES,
        nominal_um: Mapping[str, float] | None = None,
        move_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not (math.isfinite(move_timeout_s) and move_timeout_s > 0):
            raise ValueError(f"move_timeout_s must be finite and > 0, got {move_timeout_s!r}")
        self.interlocks = interlocks
        self.actuator = actuator
        self.publisher = publisher
        self.mode: Mode = mode
        self.axes = validate_axes(axes)
        self.nominal_um = dict.fromkeys(self.axes, 0.0) if nominal_um is None else dict(nominal_um)
        missing = [a for a in self.axes if a not in self.nominal_um]
        if missing:
            raise ValueError(f"nominal_um lacks axes {missing}")
        self.move_timeout_s = move_timeout_s
        self._clock = clock

    async def step(
        self,
        prediction: PredictionLike,
        *,
        scan_id: str,
        frame: int,
        current_positions_um: Mapping[str, float] | None = None,
        interferometer_ok: bool = True,
        confidence: float | None = None,
        t_created: float | None = None,
    ) -> FeedbackResult:
        """Run one correction cycle.

        Parameters
        ----------
        prediction : PredictionLike
            Predicted drift at the next exposure: ``mean_um``/``std_um`` per axis, ``t``
            (exposure time) and ``angle_deg`` (or ``angle``).
        scan_id : str
            Scan identifier.
        frame : int
            Frame the correction is for.
        current_positions_um : mapping, optional
            Current stage positions; read from the actuator when omitted.
        interferometer_ok : bool, optional
            Interferometer health.
        confidence : float, optional
            Source confidence; default ``prediction.confidence`` or 1.
        t_created : float, optional
            When the prediction was made; default now.

        Returns
        -------
        FeedbackResult

        Raises
        ------
        ValueError
            If the prediction lacks a corrected axis or an angle.
        """
        angle = getattr(prediction, "angle_deg", getattr(prediction, "angle", None))
        if angle is None:
            raise ValueError("prediction needs an angle_deg (or angle) attribute")
        if confidence is None:
            confidence = float(getattr(prediction, "confidence", 1.0))
        now = self._clock()
        setpoint = make_setpoint(
            scan_id=scan_id,
            frame=frame,
            predicted_drift_um=prediction.mean_um,
            std_um=prediction.std_um,
            t_valid=float(prediction.t),
            angle_deg=float(angle),
            confidence=confidence,
            axes=self.axes,
            nominal_um=self.nominal_um,
            t_created=now if t_created is None else t_created,
        )
        positions = (
            dict(current_positions_um)
            if current_positions_um is not None
            else await self.actuator.positions()
        )
        decision = self.interlocks.evaluate(
            setpoint, positions, self._clock(), interferometer_ok=interferometer_ok
        )
        if decision.action != "move":
            # Refusals are worth an operator's attention; holds (dead band, rate limit) are
            # the loop working as intended and would flood the log at frame rate.
            level = logging.WARNING if decision.action == "refuse" else logging.DEBUG
            logger.log(
                level,
                "correction %s for scan %s frame %d: %s (%s)",
                decision.action,
                scan_id,
                frame,
                ",".join(decision.reasons),
                decision.detail,
            )

        published, errors = await self._publish(setpoint, decision)
        applied: dict[str, float] = {}
        if self.mode == "apply" and decision.action == "move":
            # disable() may have landed after evaluate(): honour it before touching motors.
            if not self.interlocks.enabled:
                logger.warning("move for frame %d dropped: interlocks disabled meanwhile", frame)
                errors.append("disabled before move")
            else:
                try:
                    await self.actuator.move(dict(decision.targets_um), self.move_timeout_s)
                    applied = dict(decision.targets_um)
                except (ActuatorError, ValueError) as exc:
                    logger.error("stage move for frame %d failed: %s", frame, exc)
                    self.interlocks.disable(f"actuator error: {exc}")
                    errors.append(str(exc))
        return FeedbackResult(
            setpoint=setpoint,
            decision=decision,
            applied_um=applied,
            published=published,
            error="; ".join(errors),
        )

    async def _publish(self, setpoint: Setpoint, decision: Decision) -> tuple[bool, list[str]]:
        if self.publisher is None:
            return False, []
        try:
            await self.publisher.publish(setpoint, decision, self.mode)
        except Exception as exc:  # publishing is advisory: never let it stop the loop
            logger.error("publishing frame %d failed: %s", setpoint.frame, exc)
            return False, [f"publish: {exc}"]
        return True, []
