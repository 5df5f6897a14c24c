"""An in-memory :class:`~tomolock.service.api.backend.ServiceBackend`.

It holds whatever state it is given and records every control call, so the API can be
exercised (tests, dashboard development, demos) without the live pipeline. It enforces the
same rules a real backend should: unknown scans raise :class:`UnknownScanError`, subscribers
never make :meth:`InMemoryBackend.publish` wait (bounded queues, newest dropped, counted).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tomolock.service.api.backend import UnknownScanError
from tomolock.service.api.dashboard import check_thumbnail
from tomolock.service.api.models import (
    ConfigPatch,
    Counters,
    DriftCheckResult,
    DriftColumns,
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

_END = object()
#: Drift-check results kept (newest last).
MAX_DRIFT_CHECKS = 32


@dataclass(frozen=True)
class DriftRow:
    """One processed frame of a drift log (units as in :class:`DriftColumns`)."""

    frame: int
    angle_deg: float
    t: float
    est_dy_px: float | None
    est_dx_px: float | None
    confidence: float | None
    drift_x_um: float | None
    drift_z_um: float | None
    correction_x_um: float | None
    correction_z_um: float | None
    decision: str


class InMemoryBackend:
    """A complete backend over in-memory state.

    Parameters
    ----------
    version : str, optional
        Reported in the status.
    subscriber_queue : int, optional
        Events buffered per subscriber before new ones are dropped.

    Attributes
    ----------
    health_report : HealthModel
        Returned by :meth:`health`; replace it to simulate faults.
    metric_samples : list of Metric
        Returned by :meth:`metrics`.
    calls : list of tuple
        Every control call, ``(method name, argument)``, in order.
    runtime_config : dict
        Runtime configuration, updated by :meth:`update_config`, returned by :meth:`config`.
    events_dropped : int
        Events not queued for a full subscriber.
    counters : Counters
        Reported in the status; replace it to simulate drops and rejections.
    performance : Performance
        Reported in the status (latency, fps).
    model_summary : ModelSummary or None
        Reported in the status.
    fitted_model : dict or None
        Returned by :meth:`model_state` (see :class:`ModelState`); set it to show a model.
    """

    def __init__(self, *, version: str = "0.0.0-memory", subscriber_queue: int = 1000) -> None:
        self.version = version
        self.started = time.monotonic()
        self.health_report = HealthModel(state="ok", checks=[])
        self.metric_samples: list[Metric] = []
        self.calls: list[tuple[str, Any]] = []
        self.runtime_config: dict[str, Any] = {"mode": "publish-only", "interlock": {}}
        self.reference: dict[str, Any] = {"strategy": "first_n", "n_frames": 1}
        self.runout_model: dict[str, Any] | None = None
        self.enabled = True
        self.disabled_reason: str | None = None
        self.events_dropped = 0
        self.counters = Counters()
        self.performance = Performance()
        self.model_summary: ModelSummary | None = None
        self.fitted_model: dict[str, Any] | None = None
        self._images: dict[str, Any] | None = None
        self._scans: dict[str, ScanSummary] = {}
        self._rows: dict[str, list[DriftRow]] = {}
        self._current: str | None = None
        self._subscribers: set[asyncio.Queue[Any]] = set()
        self._subscriber_queue = subscriber_queue
        self._drift_checks: OrderedDict[str, DriftCheckResult] = OrderedDict()

    # ----------------------------------------------------------------- feeding state

    def start_scan(self, scan_id: str, t: float | None = None) -> None:
        """Begin a scan (publishes a ``scan_start`` event)."""
        if scan_id in self._scans:
            raise ValueError(f"scan {scan_id!r} already exists")
        t = time.time() if t is None else t
        self._scans[scan_id] = ScanSummary(scan_id=scan_id, state="running", start_time=t)
        self._rows[scan_id] = []
        self._current = scan_id
        self.publish({"type": "scan_start", "scan_id": scan_id, "t": t})

    def add_frame(self, row: DriftRow) -> None:
        """Append a processed frame to the current scan (publishes a ``frame`` event)."""
        if self._current is None or self._scans[self._current].state != "running":
            raise RuntimeError("add_frame needs a running scan: call start_scan first")
        rows = self._rows[self._current]
        if rows and row.frame <= rows[-1].frame:
            raise ValueError(f"frame {row.frame} is not after frame {rows[-1].frame}")
        rows.append(row)
        summary = self._scans[self._current]
        self._scans[self._current] = summary.model_copy(update={"frames": len(rows)})
        self.publish({"type": "frame", "scan_id": self._current, **asdict(row)})

    def end_scan(self, t: float | None = None) -> None:
        """End the current scan (publishes a ``scan_end`` event)."""
        if self._current is None:
            raise RuntimeError("no scan to end")
        t = time.time() if t is None else t
        summary = self._scans[self._current]
        self._scans[self._current] = summary.model_copy(update={"state": "ended", "end_time": t})
        self.publish({"type": "scan_end", "scan_id": self._current, "t": t})

    def add_drift_check(self, result: DriftCheckResult | dict[str, Any]) -> DriftCheckResult:
        """Store a drift-check result (the last :data:`MAX_DRIFT_CHECKS` are kept).

        Publishes a ``drift_check`` event; a dict is validated as :class:`DriftCheckResult`.
        """
        checked = DriftCheckResult.model_validate(result)
        self._drift_checks.pop(checked.scan_id, None)  # a repeated scan id becomes the newest
        self._drift_checks[checked.scan_id] = checked
        while len(self._drift_checks) > MAX_DRIFT_CHECKS:
            self._drift_checks.popitem(last=False)
        self.publish({"type": "drift_check", **checked.model_dump(mode="json")})
        return checked

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to every subscriber without waiting (full queues drop it)."""
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.events_dropped += 1

    def close(self) -> None:
        """End every subscription (as a backend shutting down does)."""
        for queue in self._subscribers:
            while True:
                try:
                    queue.put_nowait(_END)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()  # the end marker must get through
                    self.events_dropped += 1

    def set_images(
        self,
        frame: NDArray[np.uint8],
        reference: NDArray[np.uint8] | None = None,
        *,
        frame_number: int | None = None,
        angle_deg: float | None = None,
    ) -> None:
        """Store the latest projection thumbnail and its reference (see :meth:`latest_images`).

        Raises
        ------
        ValueError
            If an image is not a 2-D ``uint8`` thumbnail (see ``dashboard.make_thumbnail``).
        """
        self._images = {
            "frame": check_thumbnail("frame", frame),
            "reference": None if reference is None else check_thumbnail("reference", reference),
            "frame_number": frame_number,
            "angle_deg": angle_deg,
        }

    @property
    def subscriber_count(self) -> int:
        """Number of open subscriptions."""
        return len(self._subscribers)

    # ----------------------------------------------------------------- ServiceBackend

    def status(self) -> StatusModel:
        """Return a snapshot of the status."""
        scan = ScanStatus(state="idle")
        if self._current is not None:
            rows = self._rows[self._current]
            last = rows[-1] if rows else None
            scan = ScanStatus(
                state=self._scans[self._current].state,
                scan_id=self._current,
                frames_received=len(rows),
                frames_processed=len(rows),
                last_frame_angle_deg=last.angle_deg if last else None,
                last_frame_time=last.t if last else None,
            )
        rows = self._rows[self._current] if self._current is not None else []
        last_row = rows[-1] if rows else None
        loop = LoopStatus(
            enabled=self.enabled,
            disabled_reason=self.disabled_reason,
            mode=self.runtime_config["mode"],
            last_setpoint=_setpoint(last_row),
            last_decision=last_row.decision if last_row else None,
        )
        return StatusModel(
            version=self.version,
            uptime_s=time.monotonic() - self.started,
            scan=scan,
            loop=loop,
            model=self.model_summary,
            counters=self.counters,
            performance=self.performance,
            drift_check=self.drift_check(),
        )

    def health(self) -> HealthModel:
        """Return :attr:`health_report`."""
        return self.health_report

    def scans(self) -> list[ScanSummary]:
        """Return the scans, oldest first."""
        return list(self._scans.values())

    def drift_history(
        self, scan_id: str, *, since_frame: int = 0, limit: int = 10000
    ) -> DriftHistory:
        """Return up to ``limit`` rows with ``frame >= since_frame``."""
        if scan_id not in self._rows:
            raise UnknownScanError(scan_id)
        selected = [r for r in self._rows[scan_id] if r.frame >= since_frame]
        page, rest = selected[:limit], selected[limit:]
        columns = {name: [getattr(r, name) for r in page] for name in DriftColumns.model_fields}
        return DriftHistory(
            scan_id=scan_id,
            since_frame=since_frame,
            next_frame=rest[0].frame if rest else None,
            columns=DriftColumns(**columns),
        )

    def drift_check(self, scan_id: str | None = None) -> DriftCheckResult | None:
        """Return the stored result of ``scan_id`` (default: the newest), or None."""
        if scan_id is None:
            return next(reversed(self._drift_checks.values()), None)
        return self._drift_checks.get(scan_id)

    def metrics(self) -> list[Metric]:
        """Return :attr:`metric_samples`."""
        return list(self.metric_samples)

    async def set_enabled(self, enabled: bool, reason: str) -> None:
        """Enable or disable the (imaginary) loop."""
        self.calls.append(("set_enabled", (enabled, reason)))
        self.enabled = enabled
        self.disabled_reason = None if enabled else reason
        self.publish({"type": "enabled", "enabled": enabled, "reason": reason})

    async def update_config(self, patch: ConfigPatch) -> dict[str, Any]:
        """Merge a patch into :attr:`config` and return the result."""
        self.calls.append(("update_config", patch))
        changes = patch.model_dump(exclude_none=True)
        dead_band = changes.get("dead_band_um", self.runtime_config.get("dead_band_um", 0.0))
        max_step = changes.get("interlock", {}).get(
            "max_step_um", self.runtime_config["interlock"].get("max_step_um", math.inf)
        )
        if dead_band >= max_step:
            raise ValueError(f"dead_band_um ({dead_band}) must be below max_step_um ({max_step})")
        interlock = {**self.runtime_config["interlock"], **changes.pop("interlock", {})}
        self.runtime_config = {**self.runtime_config, **changes, "interlock": interlock}
        self.publish({"type": "config", "config": self.runtime_config})
        return self.runtime_config

    async def set_reference(self, request: ReferenceRequest) -> dict[str, Any]:
        """Store the reference choice; a reference scan must be known and ended."""
        self.calls.append(("set_reference", request))
        if request.strategy == "reference_scan":
            assert request.scan_id is not None  # guaranteed by ReferenceRequest
            if request.scan_id not in self._scans:
                raise ValueError(f"reference scan {request.scan_id!r} is unknown")
        self.reference = request.model_dump(exclude_none=True)
        self.publish({"type": "reference", "reference": self.reference})
        return self.reference

    async def set_runout_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """Store a runout model; it must at least name its ``kind``."""
        self.calls.append(("set_runout_model", model))
        if not isinstance(model.get("kind"), str):
            raise ValueError("runout model needs a string 'kind'")
        self.runout_model = model
        return model

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Return a new subscription to the events :meth:`publish` sends."""
        return _Subscription(self._subscribers, asyncio.Queue(self._subscriber_queue))

    # ----------------------------------------------------------------- optional (dashboard)

    def config(self) -> dict[str, Any]:
        """Return :attr:`runtime_config`, the effective runtime configuration."""
        return self.runtime_config

    def model_state(self) -> dict[str, Any] | None:
        """Return :attr:`fitted_model`."""
        return self.fitted_model

    def latest_images(self) -> dict[str, Any] | None:
        """Return what :meth:`set_images` stored last, or None."""
        return self._images


def _setpoint(row: DriftRow | None) -> StageVector | None:
    # The stage offset of the last frame, when both axes got one (y is not corrected).
    if row is None or row.correction_x_um is None or row.correction_z_um is None:
        return None
    if not (math.isfinite(row.correction_x_um) and math.isfinite(row.correction_z_um)):
        return None
    return StageVector(x_um=row.correction_x_um, y_um=0.0, z_um=row.correction_z_um)


class _Subscription:
    """Async iterator over one subscriber queue.

    Registered at creation, so nothing published after :meth:`InMemoryBackend.subscribe`
    returns is missed; unregistered by ``aclose`` even if never iterated.
    """

    def __init__(self, registry: set[asyncio.Queue[Any]], queue: asyncio.Queue[Any]) -> None:
        self._registry = registry
        self._queue = queue
        registry.add(queue)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._queue not in self._registry:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _END:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._registry.discard(self._queue)
