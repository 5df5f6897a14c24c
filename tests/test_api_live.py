"""The /ws/live feed: delivery, coalescing for slow clients, throttling, closing."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning
from starlette.websockets import WebSocketDisconnect

from tomolock.service.api import LiveSettings, create_app
from tomolock.service.api.live import EventBuffer, LiveHub, encode_event
from tomolock.service.api.memory import InMemoryBackend

with warnings.catch_warnings():
    # Starlette 1.x announces a move of its TestClient to httpx2; httpx works today.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "tomolock-test-token-0123456789"


def frame(i: int) -> dict[str, Any]:
    return {"type": "frame", "frame": i, "angle_deg": 0.5 * i}


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition driven by other tasks (fails the test if it never holds)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


class RawWebSocketClient:
    """Drives the ASGI WebSocket protocol directly, so a test controls how fast the client
    accepts messages (``gate``) without any network."""

    def __init__(self, app: FastAPI, *, gate: asyncio.Event | None = None) -> None:
        self.app = app
        self.gate = gate
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepted = asyncio.Event()
        self.sending = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "scheme": "ws",
            "path": "/ws/live",
            "raw_path": b"/ws/live",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "subprotocols": [],
        }
        self.to_app.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self._from_app))
        async with asyncio.timeout(5):
            await self.accepted.wait()

    async def _from_app(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self.accepted.set()
        elif kind == "websocket.send":
            self.sending.set()
            if self.gate is not None:
                await self.gate.wait()  # a stalled client: the send does not complete
            self.inbox.put_nowait(json.loads(message["text"]))
        elif kind == "websocket.close":
            self.close_code = message.get("code", 1000)
            self.close_reason = message.get("reason", "")
            self.closed.set()

    async def next_message(self) -> dict[str, Any]:
        async with asyncio.timeout(5):
            return await self.inbox.get()

    async def disconnect(self) -> None:
        self.to_app.put_nowait({"type": "websocket.disconnect", "code": 1000})
        assert self.task is not None
        async with asyncio.timeout(5):
            await self.task


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend(subscriber_queue=4)


def running(app: FastAPI) -> AbstractAsyncContextManager[Any]:
    # httpx/raw ASGI do not run the lifespan: enter it explicitly.
    return app.router.lifespan_context(app)


async def connected(app: FastAPI, backend: InMemoryBackend, **kw: Any) -> RawWebSocketClient:
    client = RawWebSocketClient(app, **kw)
    n = backend.subscriber_count
    await client.connect()
    await until(lambda: backend.subscriber_count == n + 1)
    return client


async def test_events_are_delivered_in_envelopes(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN)
    async with running(app):
        client = await connected(app, backend)
        backend.start_scan("scan-7", t=5.0)
        first = await client.next_message()
        assert first == {
            "type": "live",
            "seq": 1,
            "dropped": 0,
            "events": [{"type": "scan_start", "scan_id": "scan-7", "t": 5.0}],
        }
        backend.publish(
            {"type": "frame", "frame": 0, "drift_um": np.array([0.25, float("nan")]),
             "confidence": np.float32(0.5), "n": np.int64(3)}
        )  # fmt: skip
        second = await client.next_message()
        assert second["seq"] == 2
        assert second["events"] == [
            {"type": "frame", "frame": 0, "drift_um": [0.25, None], "confidence": 0.5, "n": 3}
        ]
        await client.disconnect()
        assert backend.subscriber_count == 0
        assert app.state.live.stats.clients == 0
        assert app.state.live.stats.messages_sent == 2


async def test_slow_client_gets_coalesced_events_and_never_backs_up_the_backend(
    backend: InMemoryBackend,
) -> None:
    app = create_app(backend, token=TOKEN, live=LiveSettings(max_rate_hz=100, send_timeout_s=30))
    async with running(app):
        gate = asyncio.Event()
        slow = await connected(app, backend, gate=gate)
        fast = await connected(app, backend)

        backend.publish(frame(0))
        async with asyncio.timeout(5):
            await slow.sending.wait()  # the slow client is now stuck in its first send
        # 210 frames and a state change, with the loop turning between events as a live
        # pipeline would. The subscriber queues hold only 4 events, so if the stalled client
        # held up its subscription, the backend would drop events.
        for i in range(1, 200):
            backend.publish(frame(i))
            await asyncio.sleep(0)
        backend.publish({"type": "scan_end", "scan_id": "s"})
        await asyncio.sleep(0)
        for i in range(200, 210):
            backend.publish(frame(i))
            await asyncio.sleep(0)
        assert backend.events_dropped == 0
        await until(lambda: slow.inbox.empty() and app.state.live.stats.events_dropped >= 207)

        # The fast client kept receiving while the slow one was stuck.
        fast_events = []
        while not fast_events or fast_events[-1] != frame(209):
            fast_events += (await fast.next_message())["events"]
        assert {"type": "scan_end", "scan_id": "s"} in fast_events

        gate.set()
        assert (await slow.next_message())["events"] == [frame(0)]
        second = await slow.next_message()
        # Order kept, consecutive frames coalesced (newest wins), state change kept.
        assert second["events"] == [frame(199), {"type": "scan_end", "scan_id": "s"}, frame(209)]
        assert second["dropped"] == 198 + 9
        assert slow.inbox.empty()
        await slow.disconnect()
        await fast.disconnect()


async def test_sends_are_throttled_to_max_rate(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN, live=LiveSettings(max_rate_hz=10))
    hub: LiveHub = app.state.live
    intervals: list[float] = []
    tick = asyncio.Event()

    async def manual_sleep(interval: float) -> None:  # the test decides when time passes
        intervals.append(interval)
        await tick.wait()
        tick.clear()

    hub.sleep = manual_sleep
    async with running(app):
        client = await connected(app, backend)
        backend.publish(frame(0))
        assert (await client.next_message())["events"] == [frame(0)]
        await until(lambda: len(intervals) == 1)
        assert intervals[0] == pytest.approx(0.1)
        for i in range(1, 6):
            backend.publish(frame(i))
            await asyncio.sleep(0)
        await until(lambda: hub.stats.events_dropped == 4)
        assert client.inbox.empty()  # nothing is sent before the interval has passed
        tick.set()
        message = await client.next_message()
        assert message["events"] == [frame(5)]
        assert message["dropped"] == 4
        await client.disconnect()


async def test_stalled_client_is_disconnected(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN, live=LiveSettings(send_timeout_s=0.05))
    async with running(app):
        client = await connected(app, backend, gate=asyncio.Event())
        backend.publish(frame(0))
        async with asyncio.timeout(5):
            await client.closed.wait()
            await client.task  # type: ignore[misc]
        assert (client.close_code, client.close_reason) == (1008, "client too slow")
        assert app.state.live.stats.slow_disconnects == 1
        assert backend.subscriber_count == 0


async def test_shutdown_closes_clients_with_going_away(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN)
    async with running(app):
        client = await connected(app, backend)
    # Leaving the lifespan context ran the shutdown, which waits for the handlers.
    assert client.task is not None and client.task.done()
    assert (client.close_code, client.close_reason) == (1001, "server shutting down")
    assert backend.subscriber_count == 0


async def test_end_of_backend_stream_flushes_then_closes(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN, live=LiveSettings(max_rate_hz=1000))
    async with running(app):
        client = await connected(app, backend)
        backend.publish({"type": "scan_end", "scan_id": "s"})
        backend.close()
        async with asyncio.timeout(5):
            await client.task  # type: ignore[misc]
        assert (await client.next_message())["events"] == [{"type": "scan_end", "scan_id": "s"}]
        assert (client.close_code, client.close_reason) == (1001, "live stream ended")


async def test_failing_backend_stream_closes_with_internal_error(
    backend: InMemoryBackend,
) -> None:
    async def broken() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "scan_start", "scan_id": "s"}
        raise RuntimeError("subscription broke")

    backend.subscribe = broken  # type: ignore[method-assign,assignment]
    app = create_app(backend, token=TOKEN)
    async with running(app):
        client = RawWebSocketClient(app)
        await client.connect()
        async with asyncio.timeout(5):
            await client.task  # type: ignore[misc]
        assert (await client.next_message())["events"] == [{"type": "scan_start", "scan_id": "s"}]
        assert (client.close_code, client.close_reason) == (1011, "live stream failed")


async def test_malformed_events_are_skipped_and_counted(backend: InMemoryBackend) -> None:
    app = create_app(backend, token=TOKEN)
    async with running(app):
        client = await connected(app, backend)
        backend.publish({"no": "type"})  # type: ignore[typeddict-item]
        backend.publish({"type": "frame", "blob": object()})
        backend.publish(frame(1))
        assert (await client.next_message())["events"] == [frame(1)]
        assert app.state.live.stats.events_invalid == 2
        await client.disconnect()


def test_starlette_test_client_round_trip() -> None:
    """The same feed through Starlette's WebSocket test transport (real text frames)."""
    backend = InMemoryBackend()
    app = create_app(backend, token=None)
    with TestClient(app) as tc, tc.websocket_connect("/ws/live") as ws:
        tc.portal.call(until, lambda: backend.subscriber_count == 1)
        tc.portal.call(backend.publish, frame(3))
        assert ws.receive_json()["events"] == [frame(3)]
        tc.portal.call(backend.close)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1001


# ----------------------------------------------------------------------------- units


def test_event_buffer_coalesces_only_adjacent_frames() -> None:
    buf = EventBuffer(max_pending=3)
    pushes = [(b"f1", True), (b"f2", True), (b"s1", False), (b"f3", True), (b"s2", False)]
    displaced = [buf.push(data, is_frame=is_frame) for data, is_frame in pushes]
    # f2 replaced f1; then s1, f3, s2 exceed max_pending=3 by one: the oldest (f2) goes.
    assert displaced == [0, 1, 0, 0, 1]
    assert buf.take() == [b"s1", b"f3", b"s2"]
    assert buf.dropped == 2
    assert buf.take() == []


def test_encode_event_rejects_bad_events() -> None:
    with pytest.raises(ValueError, match="string 'type'"):
        encode_event(["frame"])
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        encode_event({"type": "frame", "x": object()})
    assert json.loads(encode_event({"type": "x", "v": float("inf")})) == {"type": "x", "v": None}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_rate_hz": 0}, "max_rate_hz"),
        ({"max_pending": 0}, "max_pending"),
        ({"send_timeout_s": -1}, "send_timeout_s"),
    ],
)
def test_live_settings_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LiveSettings(**kwargs)  # type: ignore[arg-type]
