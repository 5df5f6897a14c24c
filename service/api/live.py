"""The ``/ws/live`` WebSocket feed: backend events to clients, throttled per client.

Each client gets its own backend subscription, drained at once into a small per-client buffer,
so the backend never waits on a client. A sender task sends what is buffered at most
``max_rate_hz`` times a second as one message (an envelope)::

    {"type": "live", "seq": 7, "dropped": 12, "events": [{"type": "frame", ...}, ...]}

``seq`` counts this client's messages from 1; ``dropped`` is the total number of events this
client did not get. Events keep their order; consecutive ``"frame"`` events coalesce (newest
wins, the older ones count as dropped); other events (state changes) are kept unless a client
falls ``max_pending`` events behind, when the oldest go (counted). A client whose single send
takes longer than ``send_timeout_s`` is disconnected (close code 1008). On shutdown clients get
close code 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic_core
from starlette.websockets import WebSocket, WebSocketDisconnect

from tomolock.service.api.backend import FRAME_EVENT_TYPE, ServiceBackend
from tomolock.service.api.models import Metric

log = logging.getLogger(__name__)

#: WebSocket close codes (RFC 6455).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011

# Errors that mean "the client is gone" when sending or closing.
_GONE = (WebSocketDisconnect, RuntimeError, OSError)


@dataclass(frozen=True)
class LiveSettings:
    """Per-client limits of the live feed.

    Parameters
    ----------
    max_rate_hz : float
        Most messages per second sent to one client.
    max_pending : int
        Most events buffered for one client before the oldest are dropped.
    send_timeout_s : float
        A client that takes longer than this to accept one message is disconnected.
    """

    max_rate_hz: float = 10.0
    max_pending: int = 256
    send_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.max_rate_hz > 0:
            raise ValueError(f"max_rate_hz must be > 0, got {self.max_rate_hz}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {self.max_pending}")
        if not self.send_timeout_s > 0:
            raise ValueError(f"send_timeout_s must be > 0, got {self.send_timeout_s}")


def _json_fallback(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_event(event: Any) -> bytes:
    """Serialise one backend event to JSON (NaN/inf become ``null``, numpy is converted).

    Parameters
    ----------
    event : Any
        The event; must be a dict with a string ``type``.

    Returns
    -------
    bytes
        UTF-8 JSON.

    Raises
    ------
    ValueError
        If the event is not a dict with a string ``type`` or holds a non-serialisable value.
    """
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError(f"live event must be a dict with a string 'type', got {event!r:.200}")
    try:
        return pydantic_core.to_json(event, inf_nan_mode="null", fallback=_json_fallback)
    except (TypeError, pydantic_core.PydanticSerializationError) as exc:
        raise ValueError(f"live event {event['type']!r} is not JSON-serialisable: {exc}") from exc


class EventBuffer:
    """One client's pending events: order kept, consecutive frame events coalesced.

    Parameters
    ----------
    max_pending : int
        Most events kept; beyond it the oldest is dropped.
    """

    def __init__(self, max_pending: int) -> None:
        self._events: deque[tuple[bool, bytes]] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self.closed = False
        self.failed = False
        self.dropped = 0

    def push(self, encoded: bytes, *, is_frame: bool) -> int:
        """Add one encoded event; return how many events it displaced (0 or 1)."""
        if is_frame and self._events and self._events[-1][0]:
            self._events[-1] = (True, encoded)
            displaced = 1
        else:
            self._events.append((is_frame, encoded))
            displaced = 0
            if len(self._events) > self._max_pending:
                self._events.popleft()
                displaced = 1
        self.dropped += displaced
        self._ready.set()
        return displaced

    def take(self) -> list[bytes]:
        """Remove and return every pending event, oldest first."""
        events = [encoded for _, encoded in self._events]
        self._events.clear()
        self._ready.clear()
        return events

    def close(self, *, failed: bool = False) -> None:
        """Mark the end of the stream; pending events are still delivered."""
        self.closed = True
        self.failed = self.failed or failed
        self._ready.set()

    async def wait(self) -> bool:
        """Wait for pending events; return False once closed and empty."""
        while not self._events:
            if self.closed:
                return False
            await self._ready.wait()
            self._ready.clear()
        return True


class SlowClientError(Exception):
    """A client did not accept a message within ``send_timeout_s``."""


@dataclass
class LiveStats:
    """Counters over all live clients since start."""

    clients: int = 0
    messages_sent: int = 0
    events_dropped: int = 0
    events_invalid: int = 0
    slow_disconnects: int = 0


class LiveHub:
    """Serves ``/ws/live`` connections from one backend.

    Parameters
    ----------
    backend : ServiceBackend
        Source of events (:meth:`ServiceBackend.subscribe`).
    settings : LiveSettings
        Per-client limits.
    sleep : callable, optional
        Awaitable sleep used for the throttle interval (``asyncio.sleep``); replaceable so a
        simulation or test can drive time.
    """

    def __init__(
        self,
        backend: ServiceBackend,
        settings: LiveSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.sleep = sleep
        self.stats = LiveStats()
        self._closing = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def shut_down(self) -> bool:
        """True after :meth:`shutdown` (until the next :meth:`start`)."""
        return self._closing.is_set()

    def start(self) -> None:
        """Accept clients (again); called at application startup."""
        self._closing.clear()

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Close every client with code 1001 and wait for their handlers to finish."""
        self._closing.set()
        handlers = set(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=timeout_s)
            for task in pending:
                task.cancel()

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one client until it leaves, is too slow, the stream ends or shutdown."""
        await websocket.accept()
        if self._closing.is_set():
            await _close(websocket, CLOSE_GOING_AWAY, "server shutting down")
            return
        this = asyncio.current_task()
        if this is not None:
            self._handlers.add(this)
        self.stats.clients += 1
        buffer = EventBuffer(self.settings.max_pending)
        subscription = self.backend.subscribe()
        collector = asyncio.create_task(self._collect(subscription, buffer))
        sender = asyncio.create_task(self._send(websocket, buffer))
        receiver = asyncio.create_task(_receive_until_disconnect(websocket))
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({sender, receiver, closing}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                return  # the client left; nothing to close
            if closing.done():
                await _close(websocket, CLOSE_GOING_AWAY, "server shutting down")
            elif isinstance(sender.exception(), SlowClientError):
                self.stats.slow_disconnects += 1
                log.warning("live client %s too slow, disconnected", websocket.client)
                await _close(websocket, CLOSE_POLICY, "client too slow")
            elif sender.exception() is None:
                if buffer.failed:
                    await _close(websocket, CLOSE_INTERNAL_ERROR, "live stream failed")
                else:
                    await _close(websocket, CLOSE_GOING_AWAY, "live stream ended")
        finally:
            tasks = (collector, sender, receiver, closing)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            aclose = getattr(subscription, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            self.stats.clients -= 1
            if this is not None:
                self._handlers.discard(this)

    async def _collect(
        self, subscription: AsyncIterator[dict[str, Any]], buffer: EventBuffer
    ) -> None:
        failed = False
        try:
            async for event in subscription:
                try:
                    encoded = encode_event(event)
                except ValueError as exc:
                    self.stats.events_invalid += 1
                    log.warning("live event skipped: %s", exc)
                    continue
                self.stats.events_dropped += buffer.push(
                    encoded, is_frame=event["type"] == FRAME_EVENT_TYPE
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            failed = True
            log.exception("live subscription failed")
        finally:
            buffer.close(failed=failed)

    async def _send(self, websocket: WebSocket, buffer: EventBuffer) -> None:
        interval = 1.0 / self.settings.max_rate_hz
        seq = 0
        while await buffer.wait():
            events = buffer.take()
            seq += 1
            head = f'{{"type":"live","seq":{seq},"dropped":{buffer.dropped},"events":['
            message = head + b",".join(events).decode() + "]}"
            try:
                await asyncio.wait_for(websocket.send_text(message), self.settings.send_timeout_s)
            except TimeoutError:
                raise SlowClientError from None
            self.stats.messages_sent += 1
            # Throttle: whatever arrives meanwhile is coalesced into the next message.
            await self.sleep(interval)

    def metrics(self) -> list[Metric]:
        """Return the live feed's own metric samples."""
        s = self.stats
        return [
            Metric(name="tomolock_api_ws_clients", type="gauge",
                   help="Connected live WebSocket clients.", value=s.clients),
            Metric(name="tomolock_api_ws_messages_sent_total", type="counter",
                   help="Live messages sent to clients.", value=s.messages_sent),
            Metric(name="tomolock_api_ws_events_dropped_total", type="counter",
                   help="Live events not delivered to a slow client (coalesced or overflow).",
                   value=s.events_dropped),
            Metric(name="tomolock_api_ws_events_invalid_total", type="counter",
                   help="Backend live events skipped as malformed.", value=s.events_invalid),
            Metric(name="tomolock_api_ws_slow_disconnects_total", type="counter",
                   help="Live clients disconnected for being too slow.",
                   value=s.slow_disconnects),
        ]  # fmt: skip


async def _receive_until_disconnect(websocket: WebSocket) -> None:
    # Clients have nothing to say; reading is how a disconnect is noticed.
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(*_GONE, TimeoutError):
        await asyncio.wait_for(websocket.close(code=code, reason=reason), timeout=1.0)
