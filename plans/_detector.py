"""Plan stubs shared by the scans: announce and end a detector-stream scan, check angles."""

from __future__ import annotations

import math
import uuid
from collections.abc import Generator, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import Msg

from tomolock.service.wire import SCAN_ROLES

MsgGen = Generator[Msg, Any, Any]

#: The detector's SCAN_ID PV is a 40-character EPICS string.
MAX_SCAN_ID = 39


def new_scan_id(kind: str) -> str:
    """Return a fresh scan id such as ``"tomo-1a2b3c4d"``."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def check_scan_id(scan_id: str) -> str:
    """Return ``scan_id`` if the detector can announce it, else raise ``ValueError``."""
    if not isinstance(scan_id, str) or not 1 <= len(scan_id) <= MAX_SCAN_ID:
        raise ValueError(f"scan_id must be a string of 1..{MAX_SCAN_ID} characters, "
                         f"got {scan_id!r}")
    return scan_id


def check_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number >= 0 (> 0 with ``positive``).

    Raises
    ------
    ValueError
        Naming the argument, otherwise (booleans are refused).
    """
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_angles(angles: Sequence[float] | np.ndarray, *, minimum: int = 1) -> np.ndarray:
    """Return the angles as a finite 1-D float array of at least ``minimum`` entries."""
    arr = np.asarray(angles, dtype=float)
    if arr.ndim != 1 or arr.size < minimum:
        raise ValueError(f"angles must be a 1-D sequence of >= {minimum} values, got shape "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("angles must all be finite (degrees)")
    return arr


def uniform_step(angles: np.ndarray) -> float:
    """Step of equally spaced angles, or 0.0 (the detector then announces no angles)."""
    if angles.size < 2:
        return 0.0
    steps = np.diff(angles)
    return float(steps[0]) if np.allclose(steps, steps[0], rtol=0, atol=1e-9) else 0.0


def begin_stream_scan(detector: Any, scan_id: str, angles: np.ndarray, role: str) -> MsgGen:
    """Announce a scan on the detector stream: ``scan_start``, darks, flats (plan stub).

    The same PV sequence as ``DetectorStream.begin_scan``, as bluesky messages. ``role`` is
    one of :data:`~tomolock.service.wire.SCAN_ROLES`.
    """
    if role not in SCAN_ROLES:
        raise ValueError(f"role must be one of {SCAN_ROLES}, got {role!r}")
    yield from bps.mv(
        detector.scan_id, check_scan_id(scan_id),
        detector.num_projections, int(angles.size),
        detector.scan_role, role,
        detector.angle_start, float(angles[0]),
        detector.angle_step, uniform_step(angles),
    )
    # The put completes once scan_start, the darks and the flats have been sent.
    yield from bps.mv(detector.scan_start, 1)


def end_stream_scan(detector: Any) -> MsgGen:
    """Send ``scan_end`` on the detector stream (plan stub)."""
    yield from bps.mv(detector.scan_end, 1)


def read_service(service: Any, stage: Any, *, move_piezo: bool) -> MsgGen:
    """Read the service into the open event; with ``move_piezo`` apply its setpoint (stub).

    The setpoint is the stage target the service computed for the coming exposure; NaN (no
    setpoint yet) leaves the piezo where it is.
    """
    reading = yield from bps.read(service)
    if move_piezo:
        targets = (float(reading_value(reading, service.setpoint_x_um)),
                   float(reading_value(reading, service.setpoint_z_um)))
        if all(math.isfinite(v) for v in targets):
            yield from bps.mv(stage.x, targets[0], stage.z, targets[1])
    return reading


def reading_value(reading: dict[str, Any], signal: Any) -> Any:
    """Value of ``signal`` in a bluesky reading dict (keyed by signal name)."""
    try:
        return reading[signal.name]["value"]
    except KeyError:
        raise KeyError(f"{signal.name!r} is not in the reading (keys: {sorted(reading)})") from None


def reading_time(reading: dict[str, Any], signal: Any) -> float:
    """Timestamp of ``signal`` in a bluesky reading dict."""
    return float(reading[signal.name]["timestamp"])
