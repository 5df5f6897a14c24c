"""The live drift-correction pipeline: ingest -> estimate -> model -> feedback -> record.

:class:`DriftCorrectionService` wires the building blocks together on one asyncio loop
(:class:`~tomolock.service.backend.PipelineBackend` serves it to the HTTP API):

* frames and control messages come, in order, from a
  :class:`~tomolock.service.ingest.FrameReceiver` (projections newest-wins, everything else
  lossless);
* each projection is normalised and estimated by a :class:`FrameProcessor` in a worker thread
  (the event loop stays free for the API and the sensor feeds);
* the image estimate, converted to lab micrometres and with the fine-stage offset at its
  exposure removed, updates the :class:`~tomolock.service.model.DriftFusion` filter, which
  interferometer and microscope feeds update too (:meth:`feed_interferometer`, ...);
* the drift predicted for the next exposure goes through the interlocked
  :class:`~tomolock.service.feedback.FeedbackController` (publish, and move in ``apply`` mode);
* every projection is appended to the scan's HDF5 drift log and to the in-memory history the
  API serves, and a live event is published.

Scan roles: a ``scan_start`` whose payload has ``"role": "reference"`` is a reference scan: its
projections become the references of later scans (each stored with the lab position it carried:
stage offset plus the model's drift estimate at its exposure), and the loop corrects from the
sensor feeds alone meanwhile. A ``"check"`` scan (the ``drift_check`` plan) is estimated and
recorded like a measurement but never moves the stage; its 0/180-degree projection pair gives a
:class:`~tomolock.service.drift_check.DriftCheckCollector` result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tomolock.service.api.dashboard import make_thumbnail
from tomolock.service.api.memory import DriftRow as HistoryRow
from tomolock.service.api.memory import InMemoryBackend
from tomolock.service.config import TomolockSettings
from tomolock.service.drift_check import DriftCheckCollector
from tomolock.service.feedback import (
    FeedbackController,
    Interlocks,
    PublishOnlyActuator,
    SetpointPublisher,
    StageActuator,
)
from tomolock.service.feedback.setpoint import DetectorMapping
from tomolock.service.ingest import FrameReceiver, FrameReceiverConfig, ReceivedFrame
from tomolock.service.model import DriftFusion, FusionConfig, Measurement, RunoutModel
from tomolock.service.positions import PositionHistory
from tomolock.service.processor import FrameProcessor, FrameResult
from tomolock.service.record import DriftLog, DriftRow, EstimateRecord
from tomolock.service.tasks import wind_down
from tomolock.service.wire import SCAN_ROLES, ControlMessage

log = logging.getLogger(__name__)

AXES = ("x", "y", "z")
#: Seconds :meth:`DriftCorrectionService.stop` waits for its cancelled tasks.
STOP_TIMEOUT_S = 10.0
ESTIMATORS = ("reference_scan", "first_n", "mass_profile")


def _version() -> str:
    try:
        return version("tomolock")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "unknown"


def _log_failure(future: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("background work failed: %s", future.exception())


def _opt(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class AxisPrediction:
    """Prediction in the form the feedback controller reads (per-axis mappings)."""

    mean_um: dict[str, float]
    std_um: dict[str, float]
    t: float
    angle_deg: float
    confidence: float = 1.0


@dataclass
class ScanState:
    """What the service knows about the current scan."""

    scan_id: str
    role: str
    start_time: float
    angles_deg: list[float] | None = None
    frame_period_s: float | None = None
    received: int = 0
    processed: int = 0
    history: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=8))
    ended: bool = False

    @property
    def last_angle(self) -> float | None:
        """Angle of the last processed projection with an angle."""
        return self.history[-1][0] if self.history else None

    @property
    def last_t(self) -> float | None:
        """Exposure time of that projection."""
        return self.history[-1][1] if self.history else None


class DriftCorrectionService:
    """The live drift-correction service.

    Parameters
    ----------
    settings : TomolockSettings
        Configuration.
    actuator : StageActuator, optional
        Moves the fine stage in ``apply`` mode; default publish-only (never moves).
    runout : RunoutModel, optional
        Calibrated runout, used as the drift model's prior.
    clock : callable
        Time source (Unix seconds).
    """

    def __init__(
        self,
        settings: TomolockSettings | None = None,
        *,
        actuator: StageActuator | None = None,
        runout: RunoutModel | None = None,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings or TomolockSettings()
        s = self.settings
        self.clock = clock
        self.version = _version()
        self.started = time.monotonic()
        ing = s.ingest
        self.receiver = FrameReceiver(
            FrameReceiverConfig(
                address=ing.frames_address,
                socket_type=ing.frames_socket.upper(),
                bind=ing.frames_bind,
                rcvhwm=ing.rcvhwm,
                max_message_bytes=ing.max_message_bytes,
                queue_size=ing.frame_queue,
            )
        )
        self.processor = FrameProcessor(s.estimate)
        self.drift_checks = DriftCheckCollector(s.estimate)
        fb = s.feedback
        self.mapping = DetectorMapping(
            pixel_size_um=fb.pixel_size_um, sign_x=fb.sign_x, sign_z=fb.sign_z
        )
        self.runout = runout
        fusion_config = FusionConfig(
            axes=AXES,
            n_harmonics=s.model.n_harmonics,
            initial_offset_std_um=s.model.initial_offset_std_um,
        )
        self.fusion = DriftFusion(fusion_config, runout)
        self.interlocks = Interlocks(fb.interlocks)
        pub = urlsplit(fb.publish_address)
        self.publisher = SetpointPublisher(pub.hostname or "127.0.0.1", pub.port or 0)
        self.actuator: StageActuator = actuator or PublishOnlyActuator()
        self.controller = FeedbackController(
            self.interlocks, self.actuator, self.publisher, mode=fb.mode, axes=fb.axes
        )
        self.positions = PositionHistory()
        self.store = InMemoryBackend(version=self.version)
        self.scan: ScanState | None = None
        self.drift_log: DriftLog | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # One worker thread: the processor reuses buffers and is not thread-safe, and work
        # queued on it (the next reference's correlator) runs in order with the frames.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tomolock-estimate"
        )
        self.latency_ms: deque[float] = deque(maxlen=2000)
        self.done_times: deque[float] = deque(maxlen=200)
        self.interferometer_ok = True
        self._last_interferometer: float | None = None
        self._angle_now: float | None = None
        self._nominal: dict[str, float] | None = None
        self.counters: dict[str, int] = {
            "frames_processed": 0, "frames_rejected_estimate": 0, "image_rejected_model": 0,
            "sensor_updates": 0, "moves": 0, "holds": 0, "refusals": 0,
        }
        self.last_feedback: Any = None
        # Image-measurement innovations (measured minus model) for the dashboard's residuals.
        self.image_residuals: deque[tuple[float, float, float]] = deque(maxlen=720)
        self.thumbnails: dict[str, Any] | None = None
        self._thumb_time = 0.0
        self.last_result: FrameResult | None = None
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open sockets and start receiving and processing."""
        self.publisher.start()
        self.receiver.open()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.receiver.run(), name="tomolock-receiver"),
            loop.create_task(self._consume(), name="tomolock-consumer"),
        ]
        log.info("listening for frames on %s", self.receiver.endpoint)

    async def stop(self) -> None:
        """Stop receiving, close the drift log and the sockets."""
        self.receiver.stop()
        for task in self._tasks:
            task.cancel()
        # Bounded: a task stuck in a call to a vanished IOC must not hold the shutdown (the
        # drift log still gets closed below).
        await wind_down(self._tasks, STOP_TIMEOUT_S, "service task")
        self._tasks = []
        self._close_log()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.receiver.close()
        self.publisher.close()
        self.store.close()
        self._stopped.set()

    def subscribe(self) -> Any:
        """Return an async iterator of live events (frames, estimates, state changes)."""
        return self.store.subscribe()

    def model_now(self, t: float | None = None) -> tuple[AxisPrediction, dict[str, float]] | None:
        """Predict the sample displacement at the stage's current angle, now (or at ``t``).

        This is what a plan watches before a reference scan: right after start-up or a new
        runout model the fused offset still converges (tens of nm over a few seconds on the
        microscope), and references taken meanwhile carry that error into every later scan.
        A standing stage only observes the runout at its own angle, so the largest 1-sigma
        over a whole turn (every 10 degrees) is returned too: without a runout calibration it
        stays at the harmonics' prior (micrometres) however long one waits.

        Returns
        -------
        tuple of AxisPrediction and dict, or None
            The prediction, and the largest std over a turn per axis; None until the model
            has a measurement and the rotation angle is known.
        """
        angle = self._angle_now
        if self.fusion.t is None or angle is None:
            return None
        when = max(time.time() if t is None else float(t), self.fusion.t)
        pred = self.fusion.predict(angle, when)
        turn = np.array([self.fusion.predict(a, when).std_um for a in range(0, 360, 10)])
        prediction = AxisPrediction(
            mean_um={a: float(v) for a, v in zip(pred.axes, pred.mean_um, strict=True)},
            std_um={a: float(v) for a, v in zip(pred.axes, pred.std_um, strict=True)},
            t=when, angle_deg=angle,
        )
        return prediction, {a: float(v) for a, v in zip(pred.axes, turn.max(axis=0),
                                                          strict=True)}

    @property
    def receiving(self) -> bool:
        """Whether the frame receiver task is running."""
        return bool(self._tasks) and not self._tasks[0].done()

    async def __aenter__(self) -> DriftCorrectionService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ sensor feeds
    def feed_stage(self, t: float, positions_um: dict[str, float]) -> None:
        """Record fine-stage readbacks (absolute, um) at time ``t``."""
        self.positions.record(t, positions_um)

    def feed_angle(self, angle_deg: float) -> None:
        """Record the current rotation angle (for sensor readings without their own)."""
        if math.isfinite(angle_deg):
            self._angle_now = float(angle_deg)

    def feed_interferometer(
        self, t: float, values_nm: tuple[float, float, float], *, ok: bool = True,
        angle_deg: float | None = None,
    ) -> None:
        """Fuse an interferometer reading (nm, x/y/z, includes the stage offset)."""
        self.interferometer_ok = bool(ok)
        angle = self._angle_now if angle_deg is None else angle_deg
        if angle is None or not math.isfinite(angle):
            return
        self._last_interferometer = t
        off = self.positions.offset_at(t)
        values = [v * 1e-3 - off[a] for v, a in zip(values_nm, AXES, strict=True)]
        self.fusion.update(
            Measurement.interferometer(t, angle, values, confidence=1.0 if ok else 0.0)
        )
        self.counters["sensor_updates"] += 1

    def interferometer_lost(self, reason: str) -> None:
        """Mark the interferometer signal as lost (the interlocks may hold the loop)."""
        if self.interferometer_ok:
            log.warning("interferometer signal lost: %s", reason)
        self.interferometer_ok = False

    def feed_microscope(
        self, t: float, values_um: tuple[float, float, float], *, quality: bool = True,
        angle_deg: float | None = None,
    ) -> None:
        """Fuse a visible-light microscope reading (um, x/y/z, includes the stage offset)."""
        angle = self._angle_now if angle_deg is None else angle_deg
        if angle is None or not math.isfinite(angle):
            return
        off = self.positions.offset_at(t)
        values = [v - off[a] for v, a in zip(values_um, AXES, strict=True)]
        self.fusion.update(Measurement.microscope(t, angle, values, quality))
        self.counters["sensor_updates"] += 1

    # ------------------------------------------------------------------ processing
    async def _consume(self) -> None:
        async for item in self.receiver:
            try:
                if isinstance(item, ControlMessage):
                    await self._on_control(item)
                elif item.header.kind == "projection":
                    await self._on_projection(item)
                elif item.header.kind == "dark":
                    self.processor.add_dark(item.image)
                else:
                    self.processor.add_flat(item.image)
            except Exception:  # one bad item must not stop the service
                log.exception("failed to handle %r", getattr(item, "header", item))

    async def _on_control(self, msg: ControlMessage) -> None:
        if msg.event == "scan_start":
            await self._begin_scan(msg)
        elif msg.event == "scan_end":
            self._end_scan(msg)
        elif msg.event == "reference_set":
            log.info("reference_set received for %s", msg.scan_id)

    async def _begin_scan(self, msg: ControlMessage) -> None:
        if self.scan is not None and not self.scan.ended:
            log.warning("scan %s started before %s ended", msg.scan_id, self.scan.scan_id)
            self._end_scan(None)
        p = msg.payload
        role = p.get("role", "measurement")
        if role not in SCAN_ROLES:
            log.error("scan %s: unknown role %r, treated as measurement", msg.scan_id, role)
            role = "measurement"
        angles = p.get("angles_deg")
        period = p.get("frame_period_s")
        self.scan = ScanState(
            scan_id=msg.scan_id, role=role, start_time=msg.timestamp,
            angles_deg=[float(a) for a in angles] if isinstance(angles, list) else None,
            frame_period_s=float(period) if isinstance(period, (int, float)) else None,
        )
        self.processor.begin_scan(role)
        if role == "reference":
            self.processor.references.source_scan = msg.scan_id
        if self._nominal is None:
            await self._capture_nominal()
        self._open_log(msg.scan_id)
        with contextlib.suppress(ValueError):
            self.store.start_scan(msg.scan_id, msg.timestamp)
        if self.scan.angles_deg and role != "check":  # a check measures, never moves
            # The stage still holds the last scan's correction (for its last angle): set it
            # for this scan's first exposure before that exposure, not one frame late.
            await self._correct(0, self.scan.angles_deg[0], self.clock(), ahead=0)
        log.info("scan %s started (%s)", msg.scan_id, role)

    def _end_scan(self, msg: ControlMessage | None) -> None:
        if self.scan is None or self.scan.ended:
            return
        self.scan.ended = True
        self._close_log()
        with contextlib.suppress(RuntimeError):
            self.store.end_scan(msg.timestamp if msg else self.clock())
        log.info("scan %s ended: %d processed", self.scan.scan_id, self.scan.processed)

    def _open_log(self, scan_id: str) -> None:
        self._close_log()
        directory = self.settings.record.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.drift_log = DriftLog.for_scan(
                directory, scan_id, pixel_size_um=self.settings.feedback.pixel_size_um,
                estimators=ESTIMATORS, config=self.settings.model_dump(mode="json"),
            )
        except (OSError, ValueError) as exc:
            # Never lose the loop over the record: say so loudly, keep correcting.
            log.error("cannot open the drift log for %s: %s", scan_id, exc)
            self.drift_log = None

    def _close_log(self) -> None:
        if self.drift_log is not None:
            with contextlib.suppress(Exception):
                self.drift_log.close()
            self.drift_log = None

    async def _capture_nominal(self) -> None:
        """Fix the zero-correction stage position: where the stage is before any correction.

        Captured once (first scan, or :meth:`reset_nominal`), never per scan: the stage then
        still holds the last scan's correction, which must not become the new zero.
        """
        current = await self._current_positions()
        self._nominal = {a: current.get(a, 0.0) for a in AXES}
        self.positions.set_nominal(self._nominal)
        self.controller.nominal_um = {a: self._nominal[a] for a in self.controller.axes}
        log.info("nominal stage position %s um", self._nominal)

    async def reset_nominal(self) -> None:
        """Take the stage's current position as the new zero-correction position.

        Use after the sample was realigned by hand; the drift model is reset too.
        """
        self._nominal = None
        self.fusion.reset()
        await self._capture_nominal()

    async def _current_positions(self) -> dict[str, float]:
        try:
            return dict(await asyncio.wait_for(self.actuator.positions(), 2.0))
        except Exception as exc:
            log.warning("stage positions unavailable (%s); using last known", exc)
            return self.positions.current()

    def _next_exposure(
        self, frame: int, angle: float, t: float, ahead: int | None = None
    ) -> tuple[float, float]:
        """Angle and time of the exposure ``ahead`` frames after ``frame``."""
        scan = self.scan
        ahead = self.settings.feedback.lookahead_frames if ahead is None else ahead
        assert scan is not None
        hist = list(scan.history)
        period = scan.frame_period_s
        if period is None and len(hist) >= 2:
            period = (hist[-1][1] - hist[0][1]) / (len(hist) - 1)
        period = period if period and period > 0 else 0.0
        if scan.angles_deg and frame + ahead < len(scan.angles_deg):
            return scan.angles_deg[frame + ahead], t + ahead * period
        step = (hist[-1][0] - hist[0][0]) / (len(hist) - 1) if len(hist) >= 2 else 0.0
        return angle + ahead * step, t + ahead * period

    async def _on_projection(self, item: ReceivedFrame) -> None:
        h = item.header
        scan = self.scan
        if scan is None or scan.ended or h.scan_id != scan.scan_id:
            log.warning("projection of scan %s outside a running scan: ignored", h.scan_id)
            return
        scan.received += 1
        t, angle = h.timestamp, h.angle_deg
        self.feed_angle(angle)
        offset = self.positions.offset_at(t)
        position = None
        wants_position = scan.role == "reference" or (
            len(self.processor.scan_references) < self.processor.first_n
        )
        if wants_position and math.isfinite(angle):
            pred = self.fusion.predict(angle, t)
            position = {
                a: offset[a] + float(m) for a, m in zip(pred.axes, pred.mean_um, strict=True)
            }
        loop = asyncio.get_running_loop()
        res = await loop.run_in_executor(
            self._executor, self._process, h.frame, angle, t, item.image, position
        )
        self.last_result = res
        if scan.role == "check":  # the pair's correlation runs on the numerics worker too
            checked = await loop.run_in_executor(
                self._executor, self.drift_checks.add, scan.scan_id, res
            )
            if checked is not None:
                self.store.publish({"type": "drift_check", **checked.model_dump(mode="json")})
        scan.processed += 1
        if math.isfinite(angle):
            scan.history.append((angle, t))
        flags: list[str] = []
        est = res.estimate
        if res.strategy == "rejected":
            self.counters["frames_rejected_estimate"] += 1
            flags.append("estimate_failed")
            log.warning("frame %d rejected: %s", h.frame, res.error)
        elif est is not None and math.isfinite(angle):
            upd = self.fusion.update(self._image_measurement(res, offset))
            if not upd.accepted:
                self.counters["image_rejected_model"] += 1
                flags.append("outlier")
            elif len(upd.innovation_um) == len(AXES):
                ix, _, iz = upd.innovation_um
                self.image_residuals.append((angle, ix, iz))
        feedback = None
        if math.isfinite(angle) and scan.role != "check":
            feedback = await self._correct(h.frame, angle, t)
        self._record(item, res, flags, feedback)
        self.latency_ms.append((time.time() - item.received_at) * 1e3)
        self.done_times.append(time.monotonic())
        self.counters["frames_processed"] += 1

    def _process(
        self, frame: int, angle: float, t: float, image: np.ndarray,
        position: dict[str, float] | None,
    ) -> FrameResult:
        """Worker-thread part of a projection: estimate, and thumbnails at most once a second."""
        res = self.processor.process(frame, angle, t, image, position_um=position)
        now = time.monotonic()
        if now - self._thumb_time >= 1.0:
            self._thumb_time = now
            ref = None
            if res.reference_angle_deg is not None:
                found = self.processor.references.nearest(res.reference_angle_deg)
                if found is not None:
                    ref = make_thumbnail(self.processor.references.image(found[0]))
            self.thumbnails = {
                "frame": make_thumbnail(image), "reference": ref,
                "frame_number": frame, "angle_deg": angle,
            }
        return res

    def _image_measurement(self, res: FrameResult, offset: dict[str, float]) -> Measurement:
        est = res.estimate
        assert est is not None
        dy = est.dy if math.isfinite(est.dy) else 0.0
        dx = est.dx if math.isfinite(est.dx) else 0.0
        resid = self.mapping.px_to_um(dy, dx)  # {"x", "z"} lab um
        values = []
        measured_axes = {"x": math.isfinite(est.dx), "y": False, "z": math.isfinite(est.dy)}
        for axis, measured in measured_axes.items():
            if not measured:
                values.append(math.nan)
                continue
            ref = res.reference_position_um.get(axis, 0.0)
            values.append(resid[axis] + ref - offset[axis])
        return Measurement.image(res.t, res.angle_deg, values, confidence=est.confidence)

    async def _correct(
        self, frame: int, angle: float, t: float, *, ahead: int | None = None
    ) -> Any:
        next_angle, next_t = self._next_exposure(frame, angle, t, ahead)
        pred = self.fusion.predict(next_angle, next_t)
        axes = pred.axes
        prediction = AxisPrediction(
            mean_um={a: float(v) for a, v in zip(axes, pred.mean_um, strict=True)},
            std_um={a: float(v) for a, v in zip(axes, pred.std_um, strict=True)},
            t=next_t, angle_deg=next_angle,
        )
        ifm_ok = self.interferometer_ok
        assert self.scan is not None
        if self.scan.role == "measurement" and len(self.processor.references):
            # Prepare the next frame's reference while the stage moves and the detector
            # exposes; the worker runs it before that frame.
            asyncio.get_running_loop().run_in_executor(
                self._executor, self.processor.references.prefetch, next_angle
            ).add_done_callback(_log_failure)
        result = await self.controller.step(
            prediction, scan_id=self.scan.scan_id, frame=frame,
            current_positions_um=self.positions.current(), interferometer_ok=ifm_ok,
        )
        self.last_feedback = result
        action = result.decision.action
        self.counters[{"move": "moves", "hold": "holds"}.get(action, "refusals")] += 1
        if result.applied_um:
            # Commanded targets stand in for readbacks until the motor monitors report.
            self.positions.record(self.clock(), result.applied_um)
        return result

    def _record(self, item: ReceivedFrame, res: FrameResult, flags: list[str], fb: Any) -> None:
        est = res.estimate
        h = item.header
        pred = self.fusion.predict(res.angle_deg, res.t) if math.isfinite(res.angle_deg) else None
        drift = (
            {a: float(v) for a, v in zip(pred.axes, pred.mean_um, strict=True)} if pred else {}
        )
        std = {a: float(v) for a, v in zip(pred.axes, pred.std_um, strict=True)} if pred else {}
        offset = self.positions.offset_at(res.t)
        estimates = {}
        if est is not None and res.strategy in ESTIMATORS:
            estimates[res.strategy] = EstimateRecord(est.dy, est.dx, est.confidence)
        decision = fb.decision.action if fb is not None else "none"
        if fb is not None:
            flags = flags + [r for r in fb.decision.reasons]
        if self.drift_log is not None:
            try:
                self.drift_log.append(
                    DriftRow(
                        frame=h.frame, angle_deg=res.angle_deg, t=res.t, estimates=estimates,
                        residual_dy_px=est.dy if est is not None else math.nan,
                        residual_dx_px=est.dx if est is not None else math.nan,
                        drift_um=drift, drift_std_um=std, applied_um=offset,
                        decision=decision, flags=flags,
                    )
                )
            except Exception as exc:
                log.error("drift log append failed (%s); log closed", exc)
                self._close_log()
        target = fb.setpoint.offsets_um if fb is not None else {}
        with contextlib.suppress(RuntimeError, ValueError):
            self.store.add_frame(
                HistoryRow(
                    frame=h.frame, angle_deg=res.angle_deg, t=res.t,
                    est_dy_px=_opt(est.dy) if est else None,
                    est_dx_px=_opt(est.dx) if est else None,
                    confidence=_opt(est.confidence) if est else None,
                    drift_x_um=_opt(drift.get("x", math.nan)),
                    drift_z_um=_opt(drift.get("z", math.nan)),
                    correction_x_um=_opt(target.get("x", math.nan)),
                    correction_z_um=_opt(target.get("z", math.nan)),
                    decision=decision,
                )
            )
        truth = h.truth or {}
        self.store.publish({
            "type": "estimate", "scan_id": h.scan_id, "frame": h.frame, "strategy": res.strategy,
            "truth_dy_px": truth.get("dy_px"), "truth_dx_px": truth.get("dx_px"),
            "truth": truth or None,
            "process_ms": round(res.process_ms, 3),
        })
