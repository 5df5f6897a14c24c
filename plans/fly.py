"""Fly-scan body of ``tomo_scan``: expose while the rotation moves at constant velocity.

The rotation is set to the velocity that passes one angular step per ``period_s`` and moved
to the last angle without waiting; each projection is exposed as the rotation readback passes
its angle (software position compare: the readback is polled every ``poll_s``, so an
exposure starts up to ``velocity * poll_s`` degrees late; the event and the frame header carry
the angle really read). The rotation never stops for the service: in ``"service"``
mode it moves the piezo as soon as it has processed a frame; in ``"plan"`` mode the plan waits
for the previous frame's processing (a fraction of the period), then applies the setpoint the
service computed for the coming angle.
"""

from __future__ import annotations

import time
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.preprocessors import finalize_wrapper

from tomolock.plans._detector import MsgGen, check_number, read_service

__all__ = ["fly_projections", "fly_velocity"]

#: Readback polling interval while waiting for the next angle.
POLL_S = 0.002


def fly_velocity(angles: np.ndarray, period_s: float) -> float:
    """Return the rotation speed (deg/s) that passes one step of ``angles`` per ``period_s``.

    Raises
    ------
    ValueError
        If the angles are not monotonic and equally spaced, or ``period_s`` is not > 0.
    """
    check_number("fly_period_s", period_s, positive=True)
    if angles.size < 2:
        raise ValueError("a fly scan needs at least 2 angles")
    steps = np.diff(angles)
    if not (np.all(steps > 0) or np.all(steps < 0)) or not np.allclose(
            steps, steps[0], rtol=1e-6, atol=1e-9):
        raise ValueError("a fly scan needs equally spaced, monotonic angles")
    return abs(float(steps[0])) / float(period_s)


def fly_projections(
    stage: Any,
    detector: Any,
    service: Any,
    angles: np.ndarray,
    *,
    velocity_deg_s: float,
    move_piezo: bool,
    timeout_s: float,
    scan_id: str,
) -> MsgGen:
    """Expose one projection per angle while the rotation flies through them (plan stub).

    Call it with the rotation at ``angles[0]`` and the scan announced; the rotation's speed is
    restored however the stub ends.

    Parameters
    ----------
    stage, detector, service
        As for ``tomo_scan`` (``service`` may be None).
    angles : numpy.ndarray
        Equally spaced monotonic angles (see :func:`fly_velocity`).
    velocity_deg_s : float
        Rotation speed.
    move_piezo : bool
        Apply the service's setpoint before each exposure (``"plan"`` correction): wait
        until the service has processed the previous frame, read its setpoint (computed
        for this angle), move the piezo, then wait for the angle.
    timeout_s : float
        Longest wait for the readback to reach the next angle.
    scan_id : str
        The announced scan (to wait for the service's frames).
    """
    rotation = stage.rotation
    previous = yield from bps.rd(rotation.velocity)
    direction = 1.0 if angles[-1] > angles[0] else -1.0

    def body() -> MsgGen:
        yield from bps.mv(rotation.velocity, velocity_deg_s)
        yield from bps.abs_set(rotation, float(angles[-1]), group="tomolock-fly")
        for i, angle in enumerate(angles):
            if move_piezo and i > 0:
                # The service's setpoint for this angle exists once it has the previous frame
                # (processing takes a fraction of a period): wait for it, not for more.
                yield from bps.mv(service.processed, (scan_id, i))
            # Everything that may take a while (the service's HTTP state, a piezo move) comes
            # before the angle is reached, so the exposure follows the crossing closely.
            yield from bps.create("primary")
            if service is not None:
                yield from read_service(service, stage, move_piezo=move_piezo)
            deadline = time.monotonic() + timeout_s
            # ``rd`` of the (Locatable) motor is a 'locate': it adds nothing to the event.
            while direction * ((yield from bps.rd(rotation)) - angle) < -1e-9:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the rotation did not reach {angle:.3f} deg within "
                                       f"{timeout_s:g} s during the fly scan")
                yield from bps.sleep(POLL_S)
            yield from bps.read(stage)
            yield from bps.trigger(detector, wait=True)
            yield from bps.read(detector)
            yield from bps.save()
        yield from bps.wait(group="tomolock-fly")

    def restore() -> MsgGen:
        yield from bps.stop(rotation)  # no-op after a normal end; stops a failed fly
        yield from bps.mv(rotation.velocity, previous)

    yield from finalize_wrapper(body(), restore())
