"""Apply commanded targets to the fine stage.

:class:`StageActuator` is the small interface the feedback loop needs. Two implementations:

* :class:`OphydAsyncActuator` drives ophyd-async movables (``ophyd_async.epics.motor.Motor``,
  ``ophyd_async.sim.SimMotor`` or anything with ``set()`` and ``user_readback``), all axes
  concurrently, with one timeout for the whole move;
* :class:`PublishOnlyActuator` moves nothing (an external system acts on the published
  setpoints) but still reports positions from a reader you give it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from tomolock.service.tasks import wind_down

logger = logging.getLogger(__name__)

#: Seconds a cancelled or stopping axis gets to wind down before the move returns anyway. A
#: motor whose IOC has gone can leave a CA put pending forever; the loop must not wait on it.
WIND_DOWN_S = 2.0


class ActuatorError(RuntimeError):
    """One or more axes failed to move.

    Attributes
    ----------
    failures : dict of str to BaseException
        The error per failed axis.
    """

    def __init__(self, message: str, failures: Mapping[str, BaseException]) -> None:
        super().__init__(message)
        self.failures = dict(failures)


class MoveTimeoutError(ActuatorError):
    """The move did not finish within its timeout; ``failures`` names the unfinished axes."""


@runtime_checkable
class StageActuator(Protocol):
    """What the feedback loop needs from a stage."""

    async def positions(self) -> dict[str, float]:
        """Return the current absolute position of every axis, micrometres."""
        ...

    async def move(self, targets: dict[str, float], timeout: float) -> None:
        """Move the given axes to absolute targets (micrometres) within ``timeout`` seconds."""
        ...


def _check_targets(targets: Mapping[str, float], known: Mapping[str, Any], timeout: float) -> None:
    unknown = sorted(set(targets) - set(known))
    if unknown:
        raise ValueError(f"unknown axes {unknown}; this actuator drives {sorted(known)}")
    bad = {a: v for a, v in targets.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"non-finite targets {bad}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be finite and > 0 s, got {timeout!r}")


class OphydAsyncActuator:
    """Drive ophyd-async motors, one per lab axis.

    Parameters
    ----------
    motors : mapping of str to device
        ``{"x": motor_x, "z": motor_z, ...}``; each device needs ``set(value, timeout=...)``
        returning an awaitable status and a ``user_readback`` signal (``get_value()``).
        Units must be micrometres (or scale them in the IOC).
    stop_on_failure : bool, optional
        Call ``stop()`` on every moving axis when any axis fails or the move times out.
    """

    def __init__(self, motors: Mapping[str, Any], *, stop_on_failure: bool = True) -> None:
        if not motors:
            raise ValueError("at least one motor is required")
        for axis, motor in motors.items():
            if not callable(getattr(motor, "set", None)) or not hasattr(motor, "user_readback"):
                raise TypeError(
                    f"motor for axis {axis!r} ({type(motor).__name__}) needs set() and "
                    "user_readback"
                )
        self.motors = dict(motors)
        self.stop_on_failure = stop_on_failure

    async def positions(self) -> dict[str, float]:
        """Read all axes concurrently.

        Returns
        -------
        dict of str to float
            Readback per axis.
        """
        axes = list(self.motors)
        values = await asyncio.gather(*(self.motors[a].user_readback.get_value() for a in axes))
        return {a: float(v) for a, v in zip(axes, values, strict=True)}

    async def move(self, targets: dict[str, float], timeout: float) -> None:
        """Move the given axes concurrently and wait for all of them.

        Parameters
        ----------
        targets : dict of str to float
            Absolute target per axis, micrometres.
        timeout : float
            Seconds for the whole move (every axis).

        Raises
        ------
        ValueError
            Unknown axis, non-finite target or invalid timeout (nothing moved).
        MoveTimeoutError
            Some axes did not finish in time (they are stopped when ``stop_on_failure``).
        ActuatorError
            Some axes reported an error (limits, motor fault, stop); ``failures`` names them.
        """
        _check_targets(targets, self.motors, timeout)
        if not targets:
            return
        tasks = {
            axis: asyncio.ensure_future(self._move_one(axis, float(value), timeout))
            for axis, value in targets.items()
        }
        _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        failures: dict[str, BaseException] = {}
        for axis, task in tasks.items():
            if task in pending:
                task.cancel()
                failures[axis] = TimeoutError(f"axis {axis} not at its target after {timeout} s")
            elif (exc := task.exception()) is not None:
                failures[axis] = exc
        if pending:
            await wind_down(pending, WIND_DOWN_S, "cancelled move")
        if not failures:
            return
        if self.stop_on_failure:
            await self._stop(list(targets))
        summary = ", ".join(f"{a}: {type(e).__name__}: {e}" for a, e in failures.items())
        if pending:
            raise MoveTimeoutError(f"stage move timed out ({summary})", failures)
        raise ActuatorError(f"stage move failed ({summary})", failures)

    async def _move_one(self, axis: str, value: float, timeout: float) -> None:
        await self.motors[axis].set(value, timeout=timeout)

    async def _stop(self, axes: list[str]) -> None:
        async def stop(axis: str) -> None:
            stopper = getattr(self.motors[axis], "stop", None)
            if stopper is None:
                return
            try:
                result = stopper(success=False)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
            except Exception:  # a failing stop must not mask the move error
                logger.exception("stopping axis %s failed", axis)

        await wind_down([asyncio.ensure_future(stop(a)) for a in axes], WIND_DOWN_S, "stop")


PositionReader = Callable[[], Awaitable[Mapping[str, float]]]


class PublishOnlyActuator:
    """An actuator that never moves anything.

    Parameters
    ----------
    positions_um : mapping of str to float, optional
        Fixed positions to report (default ``{"x": 0, "y": 0, "z": 0}``); ignored when
        ``reader`` is given.
    reader : callable, optional
        ``async () -> {axis: um}`` reading the real stage, e.g. another actuator's
        ``positions``.
    """

    def __init__(
        self,
        positions_um: Mapping[str, float] | None = None,
        *,
        reader: PositionReader | None = None,
    ) -> None:
        self._fixed = dict(positions_um) if positions_um else {"x": 0.0, "y": 0.0, "z": 0.0}
        self._reader = reader
        #: Targets that were asked for and deliberately not applied.
        self.ignored: list[dict[str, float]] = []

    async def positions(self) -> dict[str, float]:
        """Return the reader's positions, or the fixed ones."""
        if self._reader is not None:
            return {a: float(v) for a, v in (await self._reader()).items()}
        return dict(self._fixed)

    async def move(self, targets: dict[str, float], timeout: float) -> None:
        """Record the request and return without moving."""
        self.ignored.append(dict(targets))
        logger.debug("publish-only actuator: not moving to %s", targets)
