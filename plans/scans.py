"""Reference scan and tomography step scan with online drift correction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from tomolock.plans._detector import (
    MsgGen,
    begin_stream_scan,
    check_angles,
    check_number,
    check_scan_id,
    end_stream_scan,
    new_scan_id,
    read_service,
    reading_value,
)
from tomolock.plans.beam import beam_suspender
from tomolock.plans.fly import fly_projections, fly_velocity
from tomolock.plans.settle import ModelSettle, wait_for_model

__all__ = ["CORRECTIONS", "reference_scan", "tomo_scan"]

Correction = Literal["service", "plan", "off"]
CORRECTIONS: tuple[str, ...] = ("service", "plan", "off")
#: Feedback mode the service needs for each correction strategy.
_SERVICE_MODE = {"service": "apply", "plan": "publish-only", "off": "publish-only"}


def _step(
    i: int,
    angle: float,
    stage: Any,
    detector: Any,
    service: Any,
    scan_id: str,
    *,
    move_piezo: bool,
    settle_s: float,
) -> MsgGen:
    """One projection: (correct), rotate, settle, read, expose, wait for the service.

    The event holds the service's state *before* the exposure (its setpoint for this frame)
    and the piezo readbacks during it: the correction that was really applied.
    """
    yield from bps.checkpoint()  # a beam-loss suspension replays the projection from here
    yield from bps.create("primary")
    if service is not None:
        yield from read_service(service, stage, move_piezo=move_piezo)
    yield from bps.mv(stage.rotation, angle)
    if settle_s:
        yield from bps.sleep(settle_s)
    yield from bps.read(stage)
    yield from bps.trigger(detector, wait=True)
    yield from bps.read(detector)
    yield from bps.save()
    # Saved: a suspension from here on must not repeat the projection (nor its event).
    yield from bps.checkpoint()
    if service is not None:
        # The next exposure waits for this frame's correction (and, in apply mode, the move).
        yield from bps.mv(service.processed, (scan_id, i + 1))


def _stream_scan(
    stage: Any,
    detector: Any,
    service: Any,
    angles: np.ndarray,
    *,
    role: str,
    scan_id: str,
    move_piezo: bool,
    settle_s: float,
    exposure_s: float | None,
    metadata: dict[str, Any],
    before: Callable[[], MsgGen] | None = None,
    fly_velocity_deg_s: float | None = None,
) -> MsgGen:
    """Run an announced detector-stream scan; ``scan_end`` is sent whatever happens.

    ``before`` (a plan factory) runs inside the run, before the scan is announced. With
    ``fly_velocity_deg_s`` the projections are taken on the fly (:mod:`.fly`).
    """
    started = False

    def body() -> MsgGen:
        nonlocal started
        if exposure_s is not None:
            yield from bps.mv(detector.exposure_time, exposure_s)
        if before is not None:
            yield from before()
        if fly_velocity_deg_s is not None:
            yield from bps.mv(stage.rotation, float(angles[0]))  # the run-up starts here
        started = True  # from here on the stream may carry the scan: always end it
        yield from begin_stream_scan(detector, scan_id, angles, role)
        if service is not None:
            yield from bps.mv(service.processed, (scan_id, 0))
        if fly_velocity_deg_s is None:
            for i, angle in enumerate(angles):
                yield from _step(i, float(angle), stage, detector, service, scan_id,
                                 move_piezo=move_piezo, settle_s=settle_s)
            return
        period = abs(float(angles[1] - angles[0])) / fly_velocity_deg_s
        yield from fly_projections(stage, detector, service, angles,
                                   velocity_deg_s=fly_velocity_deg_s, move_piezo=move_piezo,
                                   timeout_s=10.0 + 5.0 * period, scan_id=scan_id)
        if service is not None:  # the run ends once the service has every frame
            yield from bps.mv(service.processed, (scan_id, int(angles.size)))

    def cleanup() -> MsgGen:
        if started:
            yield from end_stream_scan(detector)

    yield from bpp.run_wrapper(bpp.finalize_wrapper(body(), cleanup()), md=metadata)


def _metadata(
    name: str, stage: Any, detector: Any, service: Any, angles: np.ndarray, scan_id: str,
    md: dict[str, Any] | None, **extra: Any,
) -> dict[str, Any]:
    detectors = [detector.name] + ([service.name] if service is not None else [])
    return {
        "plan_name": name,
        "tomolock_scan_id": scan_id,
        "angles_deg": [float(a) for a in angles],
        "num_points": int(angles.size),
        "detectors": detectors,
        "motors": [stage.rotation.name],
        "hints": {"dimensions": [([stage.rotation.name], "primary")]},
        **extra,
        **(md or {}),
    }


def reference_scan(
    stage: Any,
    detector: Any,
    *,
    angles: Sequence[float] | np.ndarray,
    service: Any = None,
    exposure_s: float | None = None,
    settle_s: float = 0.0,
    scan_id: str | None = None,
    md: dict[str, Any] | None = None,
    model_settle: ModelSettle | bool = True,
) -> MsgGen:
    """Fast, low-dose scan whose projections become the service's references.

    Announced with ``role="reference"``; no correction is applied by the plan (the service
    still corrects from its sensor feeds in ``apply`` mode). With ``service`` each projection
    waits until the service has stored it (no frame is lost to overload).

    Parameters
    ----------
    stage : SampleStage
        Rotation and piezo motors.
    detector : DetectorStream
        Streaming detector.
    angles : sequence of float
        Projection angles, degrees.
    service : TomolockService, optional
        Waited on per projection and recorded in the events.
    exposure_s : float, optional
        Exposure to set first (short = low dose); default: leave as is.
    settle_s : float
        Wait after each rotation before the exposure.
    scan_id : str, optional
        Stream scan id (default ``ref-<random>``).
    md : dict, optional
        Extra start-document metadata.
    model_settle : ModelSettle or bool
        With ``service``: first rotate to the first angle and wait until the service's drift
        model has settled (:func:`~tomolock.plans.settle.wait_for_model`; ``True``: default
        criteria), then record its state in a ``tomolock_model`` event. Every reference is
        stored with the position the model predicts for it, so an unsettled model would
        bias every later corrected scan. ``False`` skips the wait.

    Returns
    -------
    str
        The scan id.

    Raises
    ------
    ModelNotSettledError
        When the model does not settle in time (nothing has been exposed then).
    """
    arr = check_angles(angles)
    sid = check_scan_id(scan_id) if scan_id is not None else new_scan_id("ref")
    if isinstance(model_settle, bool):
        criteria = ModelSettle() if model_settle else None
    elif isinstance(model_settle, ModelSettle):
        criteria = model_settle
    else:
        raise TypeError(f"model_settle must be a ModelSettle or a bool, got {model_settle!r}")
    before = None
    if service is not None and criteria is not None:

        def before() -> MsgGen:
            yield from bps.mv(stage.rotation, float(arr[0]))
            yield from wait_for_model(service, criteria)
            yield from bps.create("tomolock_model")
            yield from bps.read(service.model)
            yield from bps.save()

    settle = check_number("settle_s", settle_s)
    if exposure_s is not None:
        check_number("exposure_s", exposure_s)
    metadata = _metadata("reference_scan", stage, detector, service, arr, sid, md,
                         tomolock_role="reference")
    yield from _stream_scan(stage, detector, service, arr, role="reference", scan_id=sid,
                            move_piezo=False, settle_s=settle, exposure_s=exposure_s,
                            metadata=metadata, before=before)
    return sid


def tomo_scan(
    stage: Any,
    detector: Any,
    service: Any,
    *,
    angles: Sequence[float] | np.ndarray,
    correction: Correction = "service",
    settle_s: float = 0.02,
    motion: Literal["step", "fly"] = "step",
    fly_period_s: float = 0.25,
    beam: Any = None,
    beam_resume_delay_s: float = 1.0,
    exposure_s: float | None = None,
    scan_id: str | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGen:
    """Tomography step scan with online drift correction.

    Per projection: ``checkpoint``; one ``primary`` event holding the service's state (its
    setpoint for this frame), the stage readbacks during the exposure (the correction really
    applied) and the detector; then wait until the service has processed the frame.

    ``correction``:

    * ``"service"``: the service moves the piezo between exposures (its mode is set to
      ``apply`` for the scan); the plan waits for each frame's correction, then settles.
    * ``"plan"``: the service only computes (``publish-only``); before each exposure the plan
      reads the service's latest setpoint and moves the piezo itself (``bps.mv``).
    * ``"off"``: no correction (``publish-only``; the piezo stays put): the same drift profile,
      for comparison.

    The service's previous mode is restored at the end. With ``beam``, the run suspends while
    it reads 0 (the RunEngine stops the motors), resumes ``beam_resume_delay_s`` after the
    beam is back and repeats the interrupted projection. ``scan_end`` is sent however the
    run ends (success, abort, error).

    Parameters
    ----------
    stage : SampleStage
        Rotation and piezo motors.
    detector : DetectorStream
        Streaming detector.
    service : TomolockService or None
        The service (``None`` only with ``correction="off"``). Changing its mode needs its
        token.
    angles : sequence of float
        Projection angles, degrees.
    correction : {"service", "plan", "off"}
        Who corrects.
    settle_s : float
        Wait after the rotation (and correction) before each exposure (step scans).
    motion : {"step", "fly"}
        ``"step"``: stop at each angle (above). ``"fly"``: rotate at constant speed through
        the angles (equally spaced, monotonic) and expose as the readback passes each one
        (:mod:`tomolock.plans.fly`); nothing waits for the service between exposures, so the
        ``period`` must exceed the service's processing time for every frame to be corrected.
        No beam suspension (a fly cannot replay one projection).
    fly_period_s : float
        Fly scans: time per angular step (sets the speed).
    beam : SignalR, optional
        Beam-available status (1/0) to suspend on.
    beam_resume_delay_s : float
        Wait after the beam returns.
    exposure_s : float, optional
        Exposure to set first; default: leave as is.
    scan_id : str, optional
        Stream scan id (default ``tomo-<random>``).
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    str
        The scan id.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if service is None and correction != "off":
        raise ValueError(f"correction={correction!r} needs the service device")
    if motion not in ("step", "fly"):
        raise ValueError(f"motion must be 'step' or 'fly', got {motion!r}")
    arr = check_angles(angles)
    velocity = fly_velocity(arr, fly_period_s) if motion == "fly" else None
    if velocity is not None and beam is not None:
        raise ValueError("beam suspension needs motion='step': a fly scan cannot replay the "
                         "interrupted projection")
    sid = check_scan_id(scan_id) if scan_id is not None else new_scan_id("tomo")
    settle = check_number("settle_s", settle_s)
    if exposure_s is not None:
        check_number("exposure_s", exposure_s)
    metadata = _metadata("tomo_scan", stage, detector, service, arr, sid, md,
                         tomolock_role="measurement", tomolock_correction=correction,
                         tomolock_motion=motion,
                         **({"fly_velocity_deg_s": velocity} if velocity else {}))
    scan = _stream_scan(stage, detector, service, arr, role="measurement", scan_id=sid,
                        move_piezo=correction == "plan", settle_s=settle,
                        exposure_s=exposure_s, metadata=metadata,
                        fly_velocity_deg_s=velocity)
    if beam is not None:
        scan = bpp.suspend_wrapper(scan, [beam_suspender(beam,
                                                         resume_delay_s=beam_resume_delay_s)])
    if service is None:
        yield from scan
        return sid
    state = yield from bps.read(service)  # refreshes from the service
    previous = reading_value(state, service.mode)
    wanted = _SERVICE_MODE[correction]

    def restore() -> MsgGen:
        if previous != wanted:
            yield from bps.mv(service.mode, previous)

    if previous != wanted:
        yield from bps.mv(service.mode, wanted)
    yield from bpp.finalize_wrapper(scan, restore())
    return sid
