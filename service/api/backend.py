"""The interface between the HTTP API and the live pipeline.

The API only talks to a :class:`ServiceBackend`; the pipeline implements it. All methods are
called on the event loop that serves the API, so synchronous methods must return a snapshot
quickly (no I/O, no heavy numerics) and asynchronous ones must not block the loop.

Errors a backend raises and how the API answers them:

* :class:`UnknownScanError` from :meth:`ServiceBackend.drift_history` -> 404.
* ``ValueError`` from a control method (a request that is well-formed but not acceptable,
  e.g. a runout model with missing coefficients) -> 422 with the message as ``detail``.
* :class:`ControlRefusedError` from a control method (not possible in the current state,
  e.g. changing the reference mid-scan) -> 409 with the message as ``detail``.
* Anything else -> 500 (a bug).

Optional methods (:data:`OPTIONAL_BACKEND_METHODS`: ``config``, ``model_state``,
``latest_images``) feed the dashboard. They have defaults in :class:`ServiceBackend` (a class
that subclasses it inherits them); a backend that merely matches the required methods need not
define them, and the API then answers their endpoints with 501 (see :func:`optional_method`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from tomolock.service.api.models import (
    ConfigPatch,
    DriftCheckResult,
    DriftHistory,
    HealthModel,
    Metric,
    ReferenceRequest,
    ScanSummary,
    StatusModel,
)

#: Methods a backend must have (checked by ``create_app``).
BACKEND_METHODS = (
    "status",
    "health",
    "scans",
    "drift_history",
    "drift_check",
    "metrics",
    "set_enabled",
    "update_config",
    "set_reference",
    "set_runout_model",
    "subscribe",
)

#: Methods a backend may have; the API calls them only when present (see ``optional_method``).
OPTIONAL_BACKEND_METHODS = ("config", "model_state", "latest_images")

#: ``type`` of live events that may be coalesced (newest wins) for slow clients.
FRAME_EVENT_TYPE = "frame"


class UnknownScanError(LookupError):
    """The scan id is not known to the backend."""

    def __init__(self, scan_id: str) -> None:
        super().__init__(f"unknown scan {scan_id!r}")
        self.scan_id = scan_id


class ControlRefusedError(RuntimeError):
    """A control request that cannot be carried out in the service's current state."""


@runtime_checkable
class ServiceBackend(Protocol):
    """What the API needs from the live pipeline.

    ``isinstance(obj, ServiceBackend)`` also requires the optional methods; ``create_app``
    checks only the required ones (:data:`BACKEND_METHODS`).
    """

    def status(self) -> StatusModel:
        """Return a snapshot of the service status."""
        ...

    def health(self) -> HealthModel:
        """Return the overall health and per-component checks.

        Well-known check names: ``ingest`` (receiver alive), ``last_frame_age``,
        ``ioc`` (stage IOC connected), ``record`` (drift log writable).
        """
        ...

    def scans(self) -> list[ScanSummary]:
        """Return the scans the service knows about, oldest first."""
        ...

    def drift_history(
        self, scan_id: str, *, since_frame: int = 0, limit: int = 10000
    ) -> DriftHistory:
        """Return at most ``limit`` rows of a scan's drift log with ``frame >= since_frame``.

        Raises
        ------
        UnknownScanError
            If ``scan_id`` is not known.
        """
        ...

    def drift_check(self, scan_id: str | None = None) -> DriftCheckResult | None:
        """Return the result of check scan ``scan_id`` (default: the newest result).

        None when there is none: no check has run, ``scan_id`` is unknown or not a check
        scan, or its 0/180-degree pair has not been processed yet (the API answers 404).
        """
        ...

    def metrics(self) -> list[Metric]:
        """Return the current value of every metric sample (counters, gauges, summaries)."""
        ...

    async def set_enabled(self, enabled: bool, reason: str) -> None:
        """Enable or disable the feedback loop; takes effect before the next frame."""
        ...

    async def update_config(self, patch: ConfigPatch) -> dict[str, Any]:
        """Apply a validated runtime configuration patch; return the effective config."""
        ...

    async def set_reference(self, request: ReferenceRequest) -> dict[str, Any]:
        """Choose the reference strategy; return a description of the reference in use."""
        ...

    async def set_runout_model(self, model: dict[str, Any]) -> dict[str, Any]:
        """Store a fitted runout model (JSON object); return it as stored.

        Raises ``ValueError`` with a clear message when the model is not usable.
        """
        ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Return a new subscription to live events, one dict per event.

        Every event has a string ``type``: ``"frame"`` (one per processed frame; these may be
        coalesced for slow clients, newest wins) or a state change such as ``"scan_start"``,
        ``"scan_end"``, ``"enabled"``, ``"config"`` (kept in order). Values must be
        JSON-serialisable (numpy scalars and arrays are converted). The API consumes each
        subscription promptly and closes it (``aclose``) when the client leaves; the backend
        must still never wait on a subscriber (bounded queue, drop on overflow). The iterator
        ending means the backend is shutting down.
        """
        ...

    # ------------------------------------------------------------------ optional (dashboard)

    def config(self) -> dict[str, Any] | None:
        """Return the effective runtime configuration (``GET /config``), or None if unknown.

        The same dict :meth:`update_config` returns. The dashboard reads ``mode``,
        ``interlock`` (keys of :class:`~tomolock.service.feedback.interlocks.InterlockConfig`:
        ``soft_limits`` ``{"x": {"low", "high"}, ...}``, ``max_step_um``,
        ``max_total_correction_um``, ``dead_band_um``, ``min_confidence``, ...) and, when
        present, ``detector`` ``{"pixel_size_um", "sign_x", "sign_z"}`` (defaults 0.03, 1, 1).
        """
        return None

    def model_state(self) -> dict[str, Any] | None:
        """Return the fitted drift model for display (``GET /model``), or None before a fit.

        Validated as :class:`~tomolock.service.api.models.ModelState`: ``kind``, ``fitted``,
        ``harmonics`` per axis ``{"offset_um", "cos_um": [c1..cN], "sin_um": [s1..sN]}``
        (``drift(theta) = offset + sum_k c_k cos k theta + s_k sin k theta``), ``residuals``
        per axis ``{"angle_deg": [...], "residual_um": [...]}`` (observation minus model),
        optional ``rms_residual_um`` per axis and scalar ``parameters``.
        """
        return None

    def latest_images(self) -> dict[str, Any] | None:
        """Return the latest projection thumbnail and its reference, or None when none yet.

        Keys: ``frame`` (2-D ``uint8`` array, at most 1024 px a side), ``reference`` (same, or
        None), optional ``frame_number`` (int) and ``angle_deg`` (float).
        ``tomolock.service.api.dashboard.make_thumbnail`` turns a raw frame into such an array.
        Called on the event loop: return prepared arrays, do no image processing here.
        """
        return None


def optional_method(backend: object, name: str) -> Callable[[], Any] | None:
    """Return a backend's optional method, or None when the backend does not provide it.

    Parameters
    ----------
    backend : object
        The backend.
    name : str
        One of :data:`OPTIONAL_BACKEND_METHODS`.

    Returns
    -------
    callable or None
        The bound method.

    Raises
    ------
    ValueError
        If ``name`` is not an optional backend method.
    """
    if name not in OPTIONAL_BACKEND_METHODS:
        raise ValueError(f"{name!r} is not one of {OPTIONAL_BACKEND_METHODS}")
    method = getattr(backend, name, None)
    return method if callable(method) else None
