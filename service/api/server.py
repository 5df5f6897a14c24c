"""Run the API with uvicorn inside the current event loop (service process, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class ServerStartupError(RuntimeError):
    """uvicorn did not start (address in use, or the application's startup failed)."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn server that leaves signal handling to its host unless asked to take it."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install uvicorn's SIGINT/SIGTERM handlers only when asked to."""
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


@dataclass
class RunningServer:
    """A uvicorn server running as a task; stop it with :meth:`stop` or ``async with``."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    host: str
    port: int
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (connections close, lifespan shutdown runs); idempotent.

        Parameters
        ----------
        timeout_s : float, optional
            After this long the server is forced to exit, then cancelled.
        """
        if self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        done, _ = await asyncio.wait({self.task}, timeout=timeout_s)
        if not done:
            log.warning("uvicorn did not stop within %.1f s; forcing exit", timeout_s)
            self.server.force_exit = True
            done, _ = await asyncio.wait({self.task}, timeout=2.0)
            if not done:
                self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServerStartupError):
            await self.task

    async def __aenter__(self) -> RunningServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    handle_signals: bool = False,
    startup_timeout_s: float = 30.0,
    **config: Any,
) -> RunningServer:
    """Start uvicorn for ``app`` as a task of the running loop and wait until it listens.

    Parameters
    ----------
    app : FastAPI
        The application (e.g. from :func:`~tomolock.service.api.app.create_app`).
    host : str, optional
        Interface to bind; loopback by default. Pass ``"0.0.0.0"`` only deliberately.
    port : int, optional
        TCP port; 0 picks a free one (read it from the result's ``port``).
    log_level : str, optional
        uvicorn log level.
    handle_signals : bool, optional
        Let uvicorn install SIGINT/SIGTERM handlers (a standalone service); off by default so
        an embedding program keeps its own.
    startup_timeout_s : float, optional
        Give up (and stop the server) when it is not listening after this long.
    **config
        Further :class:`uvicorn.Config` arguments (e.g. ``timeout_graceful_shutdown``).

    Returns
    -------
    RunningServer
        Handle with the bound ``port`` and ``stop()``.

    Raises
    ------
    ValueError
        If ``port`` is outside 0-65535.
    ServerStartupError
        If the address cannot be bound or the application's lifespan startup fails.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    uv_config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", **config
    )
    server = _EmbeddedServer(uv_config, handle_signals=handle_signals)
    task = asyncio.create_task(_run(server, host, port), name=f"uvicorn {host}:{port}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + startup_timeout_s
    while not server.started:
        if task.done():
            await task  # raises ServerStartupError
            raise ServerStartupError(f"uvicorn on {host}:{port} exited during startup")
        if loop.time() > deadline:
            server.should_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ServerStartupError):
                await task
            raise ServerStartupError(
                f"uvicorn on {host}:{port} not listening after {startup_timeout_s} s"
            )
        await asyncio.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(server=server, task=task, host=host, port=bound_port)


async def _run(server: uvicorn.Server, host: str, port: int) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn calls sys.exit on a failed bind or lifespan startup; inside a task that
        # would escape the event loop, so turn it into an ordinary exception.
        raise ServerStartupError(
            f"uvicorn could not start on {host}:{port} (address in use, or the application's "
            f"startup failed; see the 'uvicorn.error' log), exit code {exc.code}"
        ) from None
