"""Drift check: a 0/180-degree projection pair measured by the service, at any time."""

from __future__ import annotations

import math
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from tomolock.plans._detector import (
    MsgGen,
    begin_stream_scan,
    check_number,
    check_scan_id,
    end_stream_scan,
    new_scan_id,
    reading_value,
)
from tomolock.plans.scans import _metadata, _step

__all__ = ["CHECK_STREAM", "drift_check"]

#: Name of the event stream that carries the service's result.
CHECK_STREAM = "drift_check"


def drift_check(
    stage: Any,
    detector: Any,
    service: Any,
    *,
    angle: float = 0.0,
    scan_id: str | None = None,
    exposure_s: float | None = None,
    settle_s: float = 0.02,
    timeout_s: float = 30.0,
    poll_s: float = 0.05,
    md: dict[str, Any] | None = None,
) -> MsgGen:
    """Measure the rotation-centre offset and drift from projections at ``angle`` and +180.

    One bluesky run: a detector-stream scan announced with ``role="check"`` (the service
    estimates and records its frames but never moves the stage for them, whatever its mode)
    with one ``primary`` event per projection (as in ``tomo_scan``), ``scan_end``, then the
    plan polls the service (``bps.sleep`` between polls, at most ``timeout_s``) until it has
    paired the two frames, and emits its result as one event of the ``drift_check`` stream
    (``<service>-drift_check-centre_offset_px``, ``-axis_column_px``, ``-dy_px``,
    ``-confidence``, ``-reference_dx_px``, ... see
    :class:`~tomolock.devices.service.DriftCheckReader`). The frames travel detector ->
    service, so the service computes the result on the frames it received. The plan does not
    move the piezo and leaves the rotation at ``angle + 180``.

    Parameters
    ----------
    stage : SampleStage
        Rotation and piezo motors.
    detector : DetectorStream
        Streaming detector.
    service : TomolockService
        The service that computes the result (read over its HTTP API).
    angle : float
        First angle, degrees; the second is ``angle + 180``.
    scan_id : str, optional
        Stream scan id (default ``check-<random>``).
    exposure_s : float, optional
        Exposure to set first; default: leave as is.
    settle_s : float
        Wait after each rotation before the exposure.
    timeout_s : float
        How long to wait for the service's result after the scan.
    poll_s : float
        Interval between polls of the service.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    dict
        The service's result (JSON of ``GET /drift_check/{scan_id}``): ``scan_id``,
        ``angle_deg``, ``angle_180_deg``, ``frames``, ``width_px``, ``centre_offset_px``
        (axis column minus ``(width - 1) / 2``), ``axis_column_px``, ``dy_px``,
        ``confidence``, ``time``, ``exposure_times`` and, with a reference scan at
        ``angle``, ``reference_dx_px``/``reference_dy_px`` (drift since it).

    Raises
    ------
    ValueError
        On bad arguments (before anything moves).
    TimeoutError
        When the service has no result within ``timeout_s`` after the scan (frame lost, or
        the service not connected to the detector stream).
    """
    if service is None:
        raise ValueError("drift_check needs the service device: the service measures the pair")
    if isinstance(angle, bool) or not (isinstance(angle, int | float) and math.isfinite(angle)):
        raise ValueError(f"angle must be a finite number of degrees, got {angle!r}")
    sid = check_scan_id(scan_id) if scan_id is not None else new_scan_id("check")
    settle = check_number("settle_s", settle_s)
    timeout = check_number("timeout_s", timeout_s, positive=True)
    poll = check_number("poll_s", poll_s, positive=True)
    if exposure_s is not None:
        check_number("exposure_s", exposure_s)
    angles = np.array([float(angle), float(angle) + 180.0])
    reader = service.drift_check
    metadata = _metadata("drift_check", stage, detector, service, angles, sid, md,
                         tomolock_role="check")
    results: list[dict[str, Any]] = []  # run_decorator returns the run's uid, not our value
    started = False

    def scan() -> MsgGen:
        nonlocal started
        if exposure_s is not None:
            yield from bps.mv(detector.exposure_time, exposure_s)
        started = True  # from here on the stream may carry the scan: always end it
        yield from begin_stream_scan(detector, sid, angles, "check")
        yield from bps.mv(service.processed, (sid, 0))
        for i, a in enumerate(angles):
            yield from _step(i, float(a), stage, detector, service, sid,
                             move_piezo=False, settle_s=settle)

    def end() -> MsgGen:
        if started:
            yield from end_stream_scan(detector)

    def wait_for_result() -> MsgGen:
        yield from bps.mv(reader.requested_scan_id, sid)
        deadline = time.monotonic() + timeout
        while True:
            reading = yield from bps.read(reader)
            if reading_value(reading, reader.available):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the service has no drift check result for scan {sid!r} after "
                    f"{timeout} s (frame lost, or the service not on the detector stream?)"
                )
            yield from bps.sleep(poll)
        yield from bps.create(CHECK_STREAM)
        yield from bps.read(reader)
        yield from bps.save()
        results.append(dict(reader.last or {}))

    @bpp.run_decorator(md=metadata)
    def inner() -> MsgGen:
        yield from bpp.finalize_wrapper(scan(), end())
        yield from wait_for_result()

    yield from inner()
    return results[0]
