"""``tomolock serve``: run the live service (frames, EPICS feeds, feedback, API) until stopped.

:func:`running_service` is the reusable async context (the demo and tests use it): it builds the
service from settings, connects the EPICS devices (optional), starts the feeds and the HTTP API,
and tears everything down in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tomolock.service.config import TomolockSettings

log = logging.getLogger(__name__)


@dataclass
class RunningService:
    """Handles of a running service."""

    service: Any  # DriftCorrectionService
    feeds: Any | None  # EpicsFeeds
    server: Any  # RunningServer

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return str(self.server.url)


@contextlib.asynccontextmanager
async def running_service(
    settings: TomolockSettings, *, epics: bool = True, runout: Any = None
) -> AsyncIterator[RunningService]:
    """Run the service with its feeds and API for the duration of the ``async with`` block.

    Parameters
    ----------
    settings : TomolockSettings
        Configuration; ``api.port`` 0 picks a free port.
    epics : bool
        Connect the EPICS devices (sensor feeds, and the stage actuator in apply mode).
    runout : RunoutModel, optional
        Calibrated runout prior.

    Raises
    ------
    RuntimeError
        In ``apply`` mode when the stage does not connect (nothing could be corrected safely).
    """
    from tomolock.service.api.app import create_app
    from tomolock.service.api.server import serve
    from tomolock.service.backend import PipelineBackend
    from tomolock.service.pipeline import DriftCorrectionService

    feeds = None
    actuator = None
    service = DriftCorrectionService(settings, runout=runout)
    if epics:
        from tomolock.service.feeds import EpicsFeeds

        feeds = EpicsFeeds(service, settings.epics, axes=tuple(settings.feedback.axes))
        connected = await feeds.connect()
        log.info("EPICS devices: %s", connected)
        if settings.feedback.mode == "apply":
            actuator = feeds.actuator()  # raises when the stage is missing
            service.actuator = actuator
            service.controller.actuator = actuator
    elif settings.feedback.mode == "apply":
        raise RuntimeError("apply mode needs the EPICS stage: run without --no-epics")
    token = settings.api.token.get_secret_value() if settings.api.token else None
    app = create_app(PipelineBackend(service), token=token)
    await service.start()
    try:
        if feeds is not None:
            await feeds.start()
        server = await serve(app, host=settings.api.host, port=settings.api.port)
        try:
            yield RunningService(service, feeds, server)
        finally:
            await server.stop()
    finally:
        if feeds is not None:
            await feeds.stop()
        await service.stop()


async def _serve_forever(settings: TomolockSettings, epics: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running_service(settings, epics=epics) as running:
        print(f"tomolock serving on {running.url}  (frames: {settings.ingest.frames_address})")
        if settings.api.token is None:
            print("no API token configured: control endpoints are refused (read-only)")
        await stop.wait()
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        settings = TomolockSettings.load(args.config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tomolock serve: {exc}", file=sys.stderr)
        return 2
    if args.host is not None or args.port is not None:
        api = settings.api.model_copy(
            update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        )
        settings = settings.model_copy(update={"api": api})
    try:
        return asyncio.run(_serve_forever(settings, epics=not args.no_epics))
    except RuntimeError as exc:
        print(f"tomolock serve: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tomolock serve``."""
    p = sub.add_parser("serve", help="run the live drift-correction service")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--host", help="API bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default from config)")
    p.add_argument("--no-epics", action="store_true", help="do not connect EPICS devices")
    p.set_defaults(func=_run)
