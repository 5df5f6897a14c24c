"""A real uvicorn on 127.0.0.1 serving the API in-process, started and stopped in the test."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tomolock.service.api import ServerStartupError, create_app, serve
from tomolock.service.api.memory import InMemoryBackend
from tomolock.service.api.models import ComponentCheck, HealthModel

TOKEN = "tomolock-test-token-0123456789"


async def test_serves_health_on_loopback_and_stops() -> None:
    backend = InMemoryBackend()
    app = create_app(backend, token=TOKEN)
    sigint_before = signal.getsignal(signal.SIGINT)
    server = await serve(app)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        # The embedding program keeps its own signal handlers.
        assert signal.getsignal(signal.SIGINT) is sigint_before
        async with httpx.AsyncClient(base_url=server.url) as client:
            r = await client.get("/health")
            assert r.status_code == 200
            assert r.json() == {"state": "ok", "checks": []}
            r = await client.post(
                "/control/disable",
                json={"reason": "test"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.json() == {"enabled": False, "reason": "test"}
            backend.health_report = HealthModel.from_checks(
                [ComponentCheck(name="ingest", state="failed", detail="receiver died")]
            )
            r = await client.get("/health")
            assert r.status_code == 503
    finally:
        await server.stop()
    assert server.task.done()
    assert app.state.live.shut_down  # lifespan shutdown ran
    await server.stop()  # idempotent
    async with httpx.AsyncClient(base_url=server.url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/health")


async def test_context_manager_and_port_in_use() -> None:
    app = create_app(InMemoryBackend(), token=None)
    async with await serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/status")).status_code == 200
        with pytest.raises(ServerStartupError, match=f"could not start on 127.0.0.1:{server.port}"):
            await serve(create_app(InMemoryBackend(), token=None), port=server.port)
    assert server.task.done()


async def test_failing_lifespan_is_a_startup_error() -> None:
    @asynccontextmanager
    async def broken(_app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("cannot open the drift log")
        yield  # pragma: no cover

    with pytest.raises(ServerStartupError, match="startup failed"):
        await serve(FastAPI(lifespan=broken))


async def test_bad_port_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535"):
        await serve(create_app(InMemoryBackend(), token=None), port=70000)


async def test_live_feed_over_a_real_socket() -> None:
    # uvicorn speaks WebSocket only with the `websockets` (or `wsproto`) package installed.
    ws_client = pytest.importorskip("websockets.asyncio.client")
    backend = InMemoryBackend()
    app = create_app(backend, token=None)
    async with (
        await serve(app) as server,
        ws_client.connect(f"ws://127.0.0.1:{server.port}/ws/live") as ws,
        asyncio.timeout(5),
    ):
        while backend.subscriber_count == 0:
            await asyncio.sleep(0.01)
        backend.publish({"type": "frame", "frame": 1})
        message = json.loads(await ws.recv())
    assert message["events"] == [{"type": "frame", "frame": 1}]
