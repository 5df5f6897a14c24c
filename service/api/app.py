"""The tomolock FastAPI application: read endpoints, authenticated control, metrics, live feed.

GET endpoints and the live WebSocket are open (control-room dashboards); every POST needs
``Authorization: Bearer <token>`` and is refused outright when the service has no token.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.requests import Request
from starlette.routing import Route
from starlette.websockets import WebSocket

from tomolock.service.api import prometheus
from tomolock.service.api.auth import make_token_check, validate_token
from tomolock.service.api.backend import (
    BACKEND_METHODS,
    ControlRefusedError,
    ServiceBackend,
    UnknownScanError,
)
from tomolock.service.api.dashboard import add_dashboard_routes
from tomolock.service.api.live import LiveHub, LiveSettings
from tomolock.service.api.models import (
    ComponentCheck,
    ConfigPatch,
    ConfigResponse,
    ControlRequest,
    DriftCheckResult,
    DriftHistory,
    EnableResponse,
    EndpointInfo,
    ErrorModel,
    HealthModel,
    IndexModel,
    ReferenceRequest,
    ReferenceResponse,
    RunoutModelResponse,
    ScanSummary,
    StatusModel,
)

T = TypeVar("T")

#: Largest ``limit`` a drift-history request may ask for.
MAX_HISTORY_ROWS = 100_000
CONTROL_TAG = "control"

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorModel, "description": "missing or wrong bearer token"},
    403: {"model": ErrorModel, "description": "service started without a token"},
    409: {"model": ErrorModel, "description": "refused in the current state"},
}

_RUNOUT_EXAMPLE = {
    "kind": "harmonic",
    "order": 2,
    "x_um": {"a": [0.0, 0.31, 0.02], "b": [0.0, -0.12, 0.01]},
    "z_um": {"a": [0.0, 0.05, 0.0], "b": [0.0, 0.02, 0.0]},
}


def package_version() -> str:
    """Return the installed tomolock version (``"unknown"`` when not installed)."""
    try:
        return importlib.metadata.version("tomolock")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def _control(call: Awaitable[T]) -> T:
    # A backend says "not acceptable" with ValueError (422), "not now" with ControlRefusedError.
    try:
        return await call
    except ControlRefusedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


def create_app(
    backend: ServiceBackend,
    *,
    token: str | None,
    title: str = "tomolock",
    live: LiveSettings | None = None,
) -> FastAPI:
    """Build the HTTP/WebSocket API around a backend.

    Parameters
    ----------
    backend : ServiceBackend
        The live pipeline (or a fake); the app only talks to it.
    token : str or None
        Bearer token for control endpoints. ``None`` refuses all control requests (403).
    title : str, optional
        Title in the OpenAPI schema and the index.
    live : LiveSettings, optional
        Limits of the ``/ws/live`` feed (default: 10 Hz per client).

    Returns
    -------
    FastAPI
        The application; its live hub is ``app.state.live``.

    Raises
    ------
    TypeError
        If ``backend`` lacks methods of :class:`ServiceBackend`.
    ValueError
        If ``token`` is empty or malformed.
    """
    # Not isinstance(): the Protocol also lists the optional methods (see backend.py).
    missing = [m for m in BACKEND_METHODS if not callable(getattr(backend, m, None))]
    if missing:
        raise TypeError(f"backend {type(backend).__name__} lacks ServiceBackend methods {missing}")
    expected = validate_token(token)
    hub = LiveHub(backend, live or LiveSettings())
    version = package_version()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start()
        try:
            yield
        finally:
            await hub.shutdown()

    app = FastAPI(
        title=title,
        version=version,
        summary="Online drift correction for X-ray nano-CT: status, history, control, live feed.",
        lifespan=lifespan,
    )
    app.state.live = hub
    app.state.backend = backend

    app.add_exception_handler(UnknownScanError, _unknown_scan)

    @app.get("/", response_model=IndexModel, summary="Index of endpoints")
    async def index(request: Request) -> IndexModel | RedirectResponse:
        """List every endpoint, its methods and whether it needs the token.

        A browser (``Accept: text/html``) is redirected to the dashboard instead.
        """
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("dashboard", status.HTTP_307_TEMPORARY_REDIRECT)
        return IndexModel(name=title, version=version, endpoints=_endpoints(app))

    @app.get(
        "/health",
        response_model=HealthModel,
        summary="Health (503 when failed)",
        responses={503: {"model": HealthModel, "description": "service failed"}},
    )
    async def health(response: Response) -> HealthModel:
        """Overall and per-component health; 200 when ok or degraded, 503 when failed."""
        try:
            report = backend.health()
        except Exception as exc:  # a broken backend is exactly what health must report
            report = HealthModel.from_checks(
                [ComponentCheck(name="backend", state="failed", detail=f"{exc!r}"[:500])]
            )
        if report.state == "failed":
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return report

    @app.get("/status", response_model=StatusModel, summary="Service status")
    async def get_status() -> StatusModel:
        """Scan state, loop state, model summary, counters and performance."""
        return backend.status()

    @app.get("/scans", response_model=list[ScanSummary], summary="Known scans")
    async def scans() -> list[ScanSummary]:
        """Return the scans the service knows about, oldest first."""
        return backend.scans()

    @app.get(
        "/scans/{scan_id}/drift",
        response_model=DriftHistory,
        summary="Drift log of one scan",
        responses={404: {"model": ErrorModel, "description": "unknown scan"}},
    )
    async def drift(
        scan_id: str,
        since_frame: Annotated[int, Query(ge=0, description="first frame number")] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_ROWS, description="most rows")] = 10_000,
    ) -> DriftHistory:
        """Per-frame estimates, fused drift and applied corrections, as JSON columns."""
        history = backend.drift_history(scan_id, since_frame=since_frame, limit=limit)
        if len(history.columns) > limit:
            raise RuntimeError(
                f"backend returned {len(history.columns)} rows for limit {limit} (backend bug)"
            )
        return history

    @app.get(
        "/drift_check",
        response_model=DriftCheckResult,
        summary="Latest drift check (0/180-degree pair)",
        responses={404: {"model": ErrorModel, "description": "no drift check yet"}},
    )
    async def latest_drift_check() -> DriftCheckResult:
        """Rotation-centre offset and drift from the newest ``drift_check`` scan."""
        result = backend.drift_check()
        if result is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                "no drift check result yet: run the drift_check plan (a scan with "
                "role='check' at theta and theta + 180 degrees)",
            )
        return result

    @app.get(
        "/drift_check/{scan_id}",
        response_model=DriftCheckResult,
        summary="Drift check of one scan",
        responses={404: {"model": ErrorModel, "description": "no result for this scan"}},
    )
    async def drift_check(scan_id: str) -> DriftCheckResult:
        """Return the result of check scan ``scan_id``."""
        result = backend.drift_check(scan_id)
        if result is None:
            known = any(s.scan_id == scan_id for s in backend.scans())
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"scan {scan_id!r} has no drift check result (not a check scan, or its "
                "0/180-degree pair is not processed yet)"
                if known
                else f"unknown scan {scan_id!r}: no drift check result",
            )
        return result

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"content": {prometheus.CONTENT_TYPE: {}}}},
    )
    async def metrics() -> PlainTextResponse:
        """Backend and API metrics in the Prometheus text format 0.0.4."""
        text = prometheus.render([*backend.metrics(), *hub.metrics()])
        return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)

    @app.websocket("/ws/live", name="live")
    async def live_feed(websocket: WebSocket) -> None:
        """Live events, throttled per client (see :mod:`tomolock.service.api.live`)."""
        await hub.handle(websocket)

    # Before the control routes: the index keeps POST /config as the "/config" entry.
    add_dashboard_routes(app, backend)

    # Not an APIRouter: FastAPI >= 0.16x includes routers lazily, hiding them from app.routes.
    guarded: dict[str, Any] = {
        "tags": [CONTROL_TAG],
        "dependencies": [Depends(make_token_check(expected))],
        "responses": _AUTH_ERRORS,
    }

    @app.post(
        "/control/enable", response_model=EnableResponse, summary="Enable feedback", **guarded
    )
    async def enable(request: ControlRequest) -> EnableResponse:
        """Enable the feedback loop (takes effect before the next frame)."""
        await _control(backend.set_enabled(True, request.reason))
        return EnableResponse(enabled=True, reason=request.reason)

    @app.post(
        "/control/disable", response_model=EnableResponse, summary="Disable feedback", **guarded
    )
    async def disable(request: ControlRequest) -> EnableResponse:
        """Disable the feedback loop at once; the stage keeps its last offset."""
        await _control(backend.set_enabled(False, request.reason))
        return EnableResponse(enabled=False, reason=request.reason)

    @app.post("/config", response_model=ConfigResponse, summary="Change runtime config", **guarded)
    async def update_config(patch: ConfigPatch) -> ConfigResponse:
        """Change interlock limits, confidence threshold, dead band or mode; rest unchanged."""
        return ConfigResponse(config=await _control(backend.update_config(patch)))

    @app.post("/reference", response_model=ReferenceResponse, summary="Set reference", **guarded)
    async def set_reference(request: ReferenceRequest) -> ReferenceResponse:
        """Choose how the estimator picks its reference image."""
        return ReferenceResponse(reference=await _control(backend.set_reference(request)))

    @app.post(
        "/model/runout",
        response_model=RunoutModelResponse,
        summary="Store a runout model",
        **guarded,
    )
    async def set_runout_model(
        model: Annotated[dict[str, Any], Body(examples=[_RUNOUT_EXAMPLE])],
    ) -> RunoutModelResponse:
        """Store a fitted runout model (a JSON object; the backend checks its content)."""
        if not model:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "runout model is empty")
        return RunoutModelResponse(model=await _control(backend.set_runout_model(model)))

    return app


async def _unknown_scan(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


def _endpoints(app: FastAPI) -> list[EndpointInfo]:
    endpoints = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            endpoints.append(
                EndpointInfo(
                    methods=sorted(route.methods),
                    path=route.path,
                    auth=CONTROL_TAG in route.tags,
                    summary=route.summary or "",
                )
            )
        elif isinstance(route, APIWebSocketRoute):
            endpoints.append(
                EndpointInfo(
                    methods=["WS"],
                    path=route.path,
                    auth=False,
                    summary="Live events (JSON), throttled per client",
                )
            )
        elif isinstance(route, Route) and route.include_in_schema is False:
            endpoints.append(
                EndpointInfo(
                    methods=sorted(route.methods or []),
                    path=route.path,
                    auth=False,
                    summary="API documentation",
                )
            )
    return endpoints
