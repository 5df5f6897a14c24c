"""The live service as the API's backend: status, health, metrics, control, dashboard views.

:class:`PipelineBackend` implements :class:`~tomolock.service.api.backend.ServiceBackend` over a
running :class:`~tomolock.service.pipeline.DriftCorrectionService`. It only reads the pipeline's
state (cheap snapshots: these methods run on the event loop) and forwards operator controls to
the interlocks, the feedback controller and the drift model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from tomolock.service.api.backend import ControlRefusedError
from tomolock.service.api.models import (
    ComponentCheck,
    ConfigPatch,
    Counters,
    DriftCheckResult,
    DriftHistory,
    HealthModel,
    LoopStatus,
    Metric,
    ModelSummary,
    Performance,
    ReferenceRequest,
    ScanStatus,
    ScanSummary,
    StageVector,
    StatusModel,
)
from tomolock.service.feedback import PublishOnlyActuator
from tomolock.service.feedback.interlocks import InterlockConfig
from tomolock.service.model import DriftFusion, RunoutModel
from tomolock.service.pipeline import AXES, DriftCorrectionService

log = logging.getLogger(__name__)


class PipelineBackend:
    """API backend over a :class:`DriftCorrectionService`.

    Parameters
    ----------
    service : DriftCorrectionService
        The running pipeline.
    """

    def __init__(self, service: DriftCorrectionService) -> None:
        self.service = service

    def _performance(self) -> Performance:
        lat = np.asarray(self.service.latency_ms)
        fps = None
        if len(self.service.done_times) >= 2:
            span = self.service.done_times[-1] - self.service.done_times[0]
            fps = (len(self.service.done_times) - 1) / span if span > 0 else None
        return Performance(
            latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
            latency_p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
            fps=fps,
        )

    def status(self) -> StatusModel:
        """Return a snapshot of the service status."""
        scan = ScanStatus(state="idle")
        if self.service.scan is not None:
            scan = ScanStatus(
                state="ended" if self.service.scan.ended else "running",
                scan_id=self.service.scan.scan_id,
                frames_received=self.service.scan.received,
                frames_processed=self.service.scan.processed,
                last_frame_angle_deg=self.service.scan.last_angle,
                last_frame_time=self.service.scan.last_t,
            )
        fb = self.service.last_feedback
        last_sp = None
        if fb is not None:
            off = fb.setpoint.offsets_um
            vals = [off.get(a, 0.0) for a in AXES]
            if all(math.isfinite(v) for v in vals):
                last_sp = StageVector(x_um=vals[0], y_um=vals[1], z_um=vals[2])
        loop = LoopStatus(
            enabled=self.service.interlocks.enabled,
            disabled_reason=None
            if self.service.interlocks.enabled
            else self.service.interlocks.disable_reason,
            mode=self.service.controller.mode,
            last_setpoint=last_sp,
            last_decision=(
                ":".join([fb.decision.action, *fb.decision.reasons]) if fb is not None else None
            ),
        )
        st = self.service.receiver.stats()
        now, turn_std = self.service.model_now() or (None, {})
        model = ModelSummary(
            kind="runout+thermal (Kalman)",
            fitted=self.service.fusion.t is not None,
            n_samples=int(sum(c.get("accepted", 0) for c in self.service.fusion.counts().values())),
            angle_deg=now.angle_deg if now is not None else None,
            position_um=now.mean_um if now is not None else {},
            position_std_um=now.std_um if now is not None else {},
            turn_std_max_um=turn_std,
        )
        return StatusModel(
            version=self.service.version,
            uptime_s=time.monotonic() - self.service.started,
            scan=scan,
            loop=loop,
            model=model,
            counters=Counters(
                frames_dropped=st.dropped_overload, frames_rejected=dict(st.rejected)
            ),
            performance=self._performance(),
            drift_check=self.service.drift_checks.latest(),
        )

    def health(self) -> HealthModel:
        """Return per-component health."""
        checks = [
            ComponentCheck(
                name="ingest",
                state="ok" if self.service.receiving else "failed",
                detail=f"listening on {self.service.receiver.endpoint}",
            ),
            ComponentCheck(
                name="record",
                state="ok"
                if self.service.drift_log is not None
                or self.service.scan is None
                or self.service.scan.ended
                else "degraded",
                detail=str(self.service.settings.record.directory),
            ),
            ComponentCheck(
                name="interferometer",
                state="ok" if self.service.interferometer_ok else "degraded",
                detail="signal ok"
                if self.service.interferometer_ok
                else "signal lost: loop holds",
            ),
        ]
        return HealthModel.from_checks(checks)

    def scans(self) -> list[ScanSummary]:
        """Return the scans seen since start."""
        return self.service.store.scans()

    def drift_history(
        self, scan_id: str, *, since_frame: int = 0, limit: int = 10000
    ) -> DriftHistory:
        """Return the drift history of a scan (raises UnknownScanError)."""
        return self.service.store.drift_history(scan_id, since_frame=since_frame, limit=limit)

    def drift_check(self, scan_id: str | None = None) -> DriftCheckResult | None:
        """Return the result of check scan ``scan_id`` (default: the newest), or None."""
        checks = self.service.drift_checks
        return checks.latest() if scan_id is None else checks.get(scan_id)

    def metrics(self) -> list[Metric]:
        """Return Prometheus samples."""
        st = self.service.receiver.stats()
        out = [
            Metric(
                name="tomolock_frames_received_total",
                type="counter",
                help="frames received",
                value=st.received,
            ),
            Metric(
                name="tomolock_frames_dropped_total",
                type="counter",
                help="projections dropped under overload (newest wins)",
                value=st.dropped_overload,
            ),
        ]
        out += [
            Metric(
                name="tomolock_messages_rejected_total",
                type="counter",
                help="messages rejected, per reason",
                labels={"reason": r},
                value=n,
            )
            for r, n in st.rejected.items()
        ]
        out += [
            Metric(name=f"tomolock_{k}_total", type="counter", help=k.replace("_", " "), value=v)
            for k, v in self.service.counters.items()
        ]
        out.append(
            Metric(
                name="tomolock_loop_enabled",
                type="gauge",
                help="1 if corrections may be sent",
                value=int(self.service.interlocks.enabled),
            )
        )
        lat = np.asarray(self.service.latency_ms)
        if lat.size:
            name, text = "tomolock_frame_latency_ms", "frame receipt to decision latency (ms)"
            for q in (0.5, 0.9, 0.99):
                out.append(
                    Metric(
                        name=name,
                        type="summary",
                        help=text,
                        labels={"quantile": str(q)},
                        value=float(np.quantile(lat, q)),
                    )
                )
            out.append(
                Metric(name=name, type="summary", help=text, suffix="_sum", value=float(lat.sum()))
            )
            out.append(
                Metric(name=name, type="summary", help=text, suffix="_count", value=lat.size)
            )
        return out

    async def set_enabled(self, enabled: bool, reason: str) -> None:
        """Enable or disable corrections, effective immediately."""
        if enabled:
            self.service.interlocks.enable()
        else:
            self.service.interlocks.disable(reason)
        log.warning("loop %s by operator: %s", "enabled" if enabled else "disabled", reason)
        self.service.store.publish({"type": "enabled", "enabled": enabled, "reason": reason})

    async def update_config(self, patch: ConfigPatch) -> dict[str, Any]:
        """Apply a validated configuration patch (interlocks, mode)."""
        changes = patch.model_dump(exclude_none=True)
        mode = changes.pop("mode", None)
        interlock = changes.pop("interlock", {})
        interlock.update(changes)  # min_confidence, dead_band_um live on the interlocks
        current = self.service.interlocks.config.model_dump()
        try:
            new = InterlockConfig.model_validate({**current, **interlock})
        except ValueError as exc:
            raise ValueError(f"invalid interlock configuration: {exc}") from None
        if (
            mode is not None
            and mode == "apply"
            and isinstance(self.service.actuator, PublishOnlyActuator)
        ):
            raise ControlRefusedError("no stage actuator is configured: cannot switch to apply")
        self.service.interlocks.config = new
        if mode is not None:
            self.service.controller.mode = mode
        result = {"mode": self.service.controller.mode, "interlock": new.model_dump(mode="json")}
        self.service.store.publish({"type": "config", "config": result})
        return result

    async def set_reference(self, request: ReferenceRequest) -> dict[str, Any]:
        """Choose how frames find references.

        ``reference_scan``: the projections of the last reference scan (scans announced with
        ``role="reference"``) are used where a frame's angle has one. ``first_n``: also keep the
        first ``n_frames`` projections of each scan as references for frames that revisit their
        angles. ``mirror`` (0/180-degree pairs) measures the rotation-centre offset, not each
        frame's drift: run the ``drift_check`` plan for it.
        """
        proc = self.service.processor
        if request.strategy == "mirror":
            raise ControlRefusedError(
                "mirror pairs measure the rotation-centre offset, not live drift: use the "
                "drift_check plan"
            )
        if request.strategy == "reference_scan":
            if len(proc.references) == 0:
                raise ControlRefusedError("no reference scan has been acquired")
            if request.scan_id is not None and request.scan_id != proc.references.source_scan:
                raise ControlRefusedError(
                    f"the references come from scan {proc.references.source_scan!r}, not "
                    f"{request.scan_id!r}: stream that scan again with role='reference'"
                )
            proc.first_n = 0
        else:
            proc.first_n = int(request.n_frames or 1)
        result = {
            "strategy": request.strategy, "references": len(proc.references),
            "first_n": proc.first_n, "reference_scan": proc.references.source_scan,
        }
        self.service.store.publish({"type": "reference", "reference": result})
        return result

    async def set_runout_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """Install a calibrated runout model as the drift model's prior (resets the filter)."""
        runout = RunoutModel.from_dict(model)
        self.service.runout = runout
        self.service.fusion = DriftFusion(self.service.fusion.config, runout)
        self.service.store.publish({"type": "runout_model", "harmonics": runout.n_harmonics})
        return {"installed": True, "n_harmonics": runout.n_harmonics, "axes": list(runout.axes)}

    def config(self) -> dict[str, Any]:
        """Return the live configuration: feedback mode, interlocks, detector mapping."""
        fb = self.service.settings.feedback
        return {
            "mode": self.service.controller.mode,
            "interlock": self.service.interlocks.config.model_dump(mode="json"),
            "detector": {
                "pixel_size_um": fb.pixel_size_um,
                "sign_x": fb.sign_x,
                "sign_z": fb.sign_z,
            },
        }

    def model_state(self) -> dict[str, Any] | None:
        """Return the drift model's runout harmonics and recent image residuals."""
        st = self.service.fusion.state_dict()
        harmonics = {}
        for axis in ("x", "z"):
            coef = st["harmonics_um"][axis]
            offset = st["thermal"][axis]["offset_um"]
            harmonics[axis] = {
                "offset_um": offset if offset is not None else 0.0,
                "cos_um": [c if c is not None else 0.0 for c in coef[0::2]],
                "sin_um": [c if c is not None else 0.0 for c in coef[1::2]],
            }
        res = np.array(self.service.image_residuals, dtype=float).reshape(-1, 3)
        residuals, rms = {}, {}
        for j, axis in ((1, "x"), (2, "z")):
            ok = np.isfinite(res[:, j])
            residuals[axis] = {"angle_deg": res[ok, 0].tolist(), "residual_um": res[ok, j].tolist()}
            rms[axis] = float(np.sqrt(np.mean(res[ok, j] ** 2))) if ok.any() else None
        return {
            "kind": "runout+thermal (Kalman)",
            "fitted": self.service.fusion.t is not None,
            "harmonics": harmonics,
            "residuals": residuals,
            "rms_residual_um": rms,
            "parameters": {
                f"thermal_{a}_um_per_s": float(st["thermal"][a]["velocity_um_per_s"] or 0.0)
                for a in ("x", "z")
            },
        }

    def latest_images(self) -> dict[str, Any] | None:
        """Return thumbnails of the latest projection and its reference (refreshed at 1 Hz)."""
        return self.service.thumbnails

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Return a subscription to live events."""
        return self.service.subscribe()
