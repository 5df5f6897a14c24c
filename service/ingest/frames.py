"""Receive detector frames and control messages over ZMQ without ever slowing the sender.

Messages follow :mod:`tomolock.service.wire`. The receive loop only decodes (zero copy) and
validates, then hands items to one ordered :class:`~.latest_queue.LatestQueue`: control
messages and dark/flat frames are lossless, projections are newest-wins (the oldest pending
projection is dropped and counted when the consumer falls behind). Order between control
messages and frames is preserved.

Typical use::

    async with FrameReceiver(address="tcp://127.0.0.1:5555") as rx:
        async for item in rx:
            if isinstance(item, ControlMessage): ...
            else: item.image  # read-only numpy view of the zmq buffer
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import zmq
import zmq.asyncio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from zmq.utils.monitor import parse_monitor_message

from tomolock.service.ingest.lifecycle import ReceiverLifecycle
from tomolock.service.wire import (
    ALLOWED_DTYPES,
    MAX_HEADER_BYTES,
    MAX_PIXELS,
    ControlMessage,
    FrameHeader,
    WireError,
    decode_message,
)

from .latest_queue import LatestQueue, QueueClosed
from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_FRAME_ADDRESS = "tcp://127.0.0.1:5555"
#: Largest legal frame message: biggest header plus MAX_PIXELS of the widest dtype.
DEFAULT_MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_PIXELS * 4
#: How many scans' announced shape/dtype are remembered (late frames of a previous scan).
_ANNOUNCED_SCANS = 16


class FrameReceiverConfig(BaseModel):
    """Settings of a :class:`FrameReceiver`.

    Attributes
    ----------
    address : str
        ZMQ endpoint, ``tcp://host:port`` or ``ipc://path``. With ``bind=True`` a tcp port of
        ``0`` or ``*`` picks a free port (see :attr:`FrameReceiver.endpoint`).
    socket_type : {"PULL", "SUB"}
        PULL for PUSH senders (each message goes to one receiver), SUB for PUB senders.
    bind : bool
        Bind instead of connect (detector streams usually bind; then connect, the default).
    rcvhwm : int
        libzmq receive high-water mark in messages. Small on purpose: the receive loop drains
        into the newest-wins queue, libzmq buffering only adds latency (and 8 MB per 2048²
        uint16 message). With PUB senders a full HWM drops at the sender; with PUSH it blocks
        the sender, which this receiver avoids by draining continuously.
    max_message_bytes : int
        Largest accepted message part, enforced by libzmq (``ZMQ_MAXMSGSIZE``) so an absurd
        message is never allocated, and checked again on the whole message (reason
        ``oversize``). libzmq handles an oversize part by dropping the *connection* (it then
        reconnects); that shows up as a ``disconnected`` connection event, not as a counted
        message, and messages queued behind it on that connection are lost too.
    queue_size : int
        Maximum pending projections for the consumer (newest wins beyond).
    check_finite : bool
        Reject float frames containing NaN or inf (reason ``non_finite``).
    subscribe : str
        SUB topic prefix (matched against the start of the JSON header); "" takes all.
    log_interval_s : float
        Minimum seconds between two log records of the same rejection reason.
    rate_window_s : float
        Window of the receive-rate estimate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = DEFAULT_FRAME_ADDRESS
    socket_type: Literal["PULL", "SUB"] = "PULL"
    bind: bool = False
    rcvhwm: int = Field(64, ge=1)
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    queue_size: int = Field(2, ge=1)
    check_finite: bool = True
    subscribe: str = ""
    log_interval_s: float = Field(5.0, gt=0)
    rate_window_s: float = Field(1.0, gt=0)

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
            raise ValueError(
                f"address must look like tcp://host:port, ipc://path or inproc://name, got {v!r}"
            )
        if scheme == "tcp":
            host, colon, port = rest.rpartition(":")
            if not colon or not host or not (port == "*" or port.isdigit()):
                raise ValueError(f"tcp address needs host and port (tcp://host:port), got {v!r}")
        return v

    @model_validator(mode="after")
    def _connect_needs_port(self) -> Self:
        port = self.address.rsplit(":", 1)[1]
        if not self.bind and self.address.startswith("tcp://") and port in ("0", "*"):
            raise ValueError(f"connecting needs a concrete port, got {self.address!r}")
        return self


@dataclass(frozen=True)
class ReceivedFrame:
    """A decoded, validated frame.

    Attributes
    ----------
    header : FrameHeader
        The wire header.
    image : numpy.ndarray
        Read-only ``(rows, cols)`` view of the received ZMQ buffer (no copy).
    received_at : float
        Wall-clock receive time, seconds since the Unix epoch.
    nbytes : int
        Size of the whole message on the wire.
    """

    header: FrameHeader
    image: np.ndarray
    received_at: float
    nbytes: int

    @property
    def kind(self) -> str:
        """``"projection"``, ``"dark"`` or ``"flat"``."""
        return self.header.kind

    @property
    def scan_id(self) -> str:
        """Scan the frame belongs to."""
        return self.header.scan_id

    @property
    def frame(self) -> int:
        """Frame number within the scan, per kind."""
        return self.header.frame


Item = ReceivedFrame | ControlMessage


def is_droppable(item: Item) -> bool:
    """Only projections may be dropped under overload; control, dark and flat are lossless."""
    return isinstance(item, ReceivedFrame) and item.header.kind == "projection"


@dataclass(frozen=True)
class ReceiverStats:
    """Snapshot of a receiver's counters.

    Attributes
    ----------
    received : int
        Messages taken off the socket.
    accepted : int
        Messages that passed validation and were queued.
    dropped_overload : int
        Projections discarded because the consumer fell behind (newest wins).
    rejected : dict
        Rejected messages per reason (wire reasons plus ``oversize``, ``non_finite``,
        ``shape_mismatch``, ``dtype_mismatch``, ``decode_error``).
    accepted_by_kind : dict
        Accepted messages per kind (``projection``, ``dark``, ``flat``, ``control``).
    bytes : int
        Bytes received (all messages).
    rate_hz, bytes_per_s : float
        Receive rate over the last window.
    queue_depth, lossless_depth, max_lossless_depth : int
        Pending items, pending lossless items, and the highest lossless backlog seen.
    connection_events : dict
        Socket monitor events by name (``accepted``, ``connected``, ``disconnected``, ...).
    ignored_announcements : int
        scan_start messages whose ``shape``/``dtype`` payload was unusable (message kept).
    """

    received: int
    accepted: int
    dropped_overload: int
    rejected: dict[str, int]
    accepted_by_kind: dict[str, int]
    bytes: int
    rate_hz: float
    bytes_per_s: float
    queue_depth: int
    lossless_depth: int
    max_lossless_depth: int
    connection_events: dict[str, int] = field(default_factory=dict)
    ignored_announcements: int = 0

    @property
    def rejected_total(self) -> int:
        """Sum of all rejections."""
        return sum(self.rejected.values())


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class FrameReceiver(ReceiverLifecycle):
    """Asyncio ZMQ receiver for frame and control messages.

    Parameters
    ----------
    config : FrameReceiverConfig, optional
        Settings; alternatively pass its fields as keyword arguments.
    context : zmq.asyncio.Context, optional
        ZMQ context; the process-wide asyncio instance by default (never terminated here).
    **settings
        Fields of :class:`FrameReceiverConfig` when ``config`` is not given.

    Notes
    -----
    Use from one event loop: ``await run()`` (or ``async with``), consume with ``await get()``
    or ``async for``. Keep heavy numerics off the loop or the receive loop stalls.
    """

    _task_name = "frame-receiver"

    def __init__(
        self,
        config: FrameReceiverConfig | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise TypeError("pass either config or keyword settings, not both")
        self.config = config if config is not None else FrameReceiverConfig(**settings)
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._queue: LatestQueue[Item] = LatestQueue(self.config.queue_size, droppable=is_droppable)
        self._socket: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._endpoint: str | None = None
        self._init_lifecycle()
        self._ratelog = RateLimitedLog(log, self.config.log_interval_s)
        # Per-scan (shape, dtype) announced by scan_start, bounded.
        self._announced: OrderedDict[str, tuple[tuple[int, int] | None, str | None]] = OrderedDict()
        self._received = 0
        self._accepted = 0
        self._bytes = 0
        self._rejected: Counter[str] = Counter()
        self._by_kind: Counter[str] = Counter()
        self._conn_events: Counter[str] = Counter()
        self._ignored_announcements = 0
        self._win_t0 = time.monotonic()
        self._win_n0 = 0
        self._win_b0 = 0
        self._rate = 0.0
        self._byte_rate = 0.0

    # ----------------------------------------------------------------- socket lifecycle
    @property
    def endpoint(self) -> str | None:
        """The bound or connected endpoint (the real port after binding port 0), once open."""
        return self._endpoint

    @property
    def queue(self) -> LatestQueue[Item]:
        """The ordered consumer queue (lossless control/dark/flat, newest-wins projections)."""
        return self._queue

    def open(self) -> str:
        """Create, configure and bind/connect the socket (idempotent).

        Returns
        -------
        str
            The endpoint; after binding port 0 or ``*`` it holds the port chosen.

        Raises
        ------
        RuntimeError
            If the receiver was already closed.
        zmq.ZMQError
            If binding or connecting fails (e.g. the address is in use).
        """
        if self._closed:
            raise RuntimeError("FrameReceiver is closed; create a new one")
        if self._socket is not None:
            assert self._endpoint is not None
            return self._endpoint
        cfg = self.config
        sock = self._ctx.socket(zmq.PULL if cfg.socket_type == "PULL" else zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, cfg.rcvhwm)
            sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
            if cfg.socket_type == "SUB":
                sock.setsockopt(zmq.SUBSCRIBE, cfg.subscribe.encode())
            # The monitor must exist before bind/connect to see the first connection.
            self._monitor = sock.get_monitor_socket()
            address = cfg.address
            if cfg.bind:
                if address.startswith("tcp://") and address.rsplit(":", 1)[1] == "0":
                    address = address.rsplit(":", 1)[0] + ":*"  # libzmq's "any free port"
                sock.bind(address)
                self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(address)
                self._endpoint = address
        except BaseException:
            self._close_sockets(sock)
            raise
        self._socket = sock
        log.info(
            "frame receiver %s %s %s",
            cfg.socket_type,
            "bound" if cfg.bind else "connected",
            self._endpoint,
        )
        return self._endpoint

    def _close_sockets(self, sock: zmq.asyncio.Socket | None) -> None:
        if sock is not None and self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if sock is not None:
            sock.close(linger=0)

    async def run(self) -> None:
        """Receive until :meth:`stop`; then close the sockets and the queue.

        Consumers drain what is pending, after which :meth:`get` raises
        :class:`~.latest_queue.QueueClosed` and ``async for`` ends.
        """
        if self._running:
            raise RuntimeError("FrameReceiver.run() is already running")
        self.open()
        assert self._socket is not None
        self._running = True
        monitor_task = asyncio.create_task(self._monitor_loop(), name="frame-receiver-monitor")
        try:
            while not self._stopping:
                self._pending = self._socket.recv_multipart(copy=False)
                try:
                    parts = await self._pending
                except asyncio.CancelledError:
                    if self._stopping:
                        break
                    raise
                finally:
                    self._pending = None
                self._handle(parts)
        finally:
            monitor_task.cancel()
            await asyncio.gather(monitor_task, return_exceptions=True)
            self._running = False
            self.close()

    def close(self) -> None:
        """Close sockets (linger 0) and the queue; prefer :meth:`stop` while running."""
        self._stopping = True
        if self._closed:
            return
        self._closed = True
        self._close_sockets(self._socket)
        self._socket = None
        self._queue.close()

    # ----------------------------------------------------------------- consumer side
    async def get(self) -> Item:
        """Wait for the next item (oldest first).

        Raises
        ------
        QueueClosed
            After the receiver stopped and every pending item was taken.
        """
        return await self._queue.get()

    def get_nowait(self) -> Item:
        """Next item without waiting; raises ``asyncio.QueueEmpty`` if none is pending."""
        return self._queue.get_nowait()

    async def __aiter__(self) -> AsyncIterator[Item]:
        while True:
            try:
                yield await self._queue.get()
            except QueueClosed:
                return

    def stats(self) -> ReceiverStats:
        """Snapshot of the counters."""
        now = time.monotonic()
        rate, byte_rate = self._rate, self._byte_rate
        elapsed = now - self._win_t0
        if elapsed >= self.config.rate_window_s:
            # The current window is already long: report it, so an idle stream decays to 0.
            rate = (self._received - self._win_n0) / elapsed
            byte_rate = (self._bytes - self._win_b0) / elapsed
        return ReceiverStats(
            received=self._received,
            accepted=self._accepted,
            dropped_overload=self._queue.dropped_overload,
            rejected=dict(self._rejected),
            accepted_by_kind=dict(self._by_kind),
            bytes=self._bytes,
            rate_hz=rate,
            bytes_per_s=byte_rate,
            queue_depth=self._queue.qsize(),
            lossless_depth=self._queue.lossless_depth,
            max_lossless_depth=self._queue.max_lossless_depth,
            connection_events=dict(self._conn_events),
            ignored_announcements=self._ignored_announcements,
        )

    # ----------------------------------------------------------------- receive path
    def _handle(self, parts: list[zmq.Frame]) -> None:
        now = time.monotonic()
        nbytes = sum(len(p) for p in parts)
        self._received += 1
        self._bytes += nbytes
        if now - self._win_t0 >= self.config.rate_window_s:
            dt = now - self._win_t0
            self._rate = (self._received - self._win_n0) / dt
            self._byte_rate = (self._bytes - self._win_b0) / dt
            self._win_t0, self._win_n0, self._win_b0 = now, self._received, self._bytes
        try:
            item = self._validate(parts, nbytes)
        except _Rejected as rej:
            self._reject(rej.reason, rej.detail)
            return
        self._queue.put(item)
        self._accepted += 1
        self._by_kind["control" if isinstance(item, ControlMessage) else item.kind] += 1

    def _reject(self, reason: str, detail: str) -> None:
        self._rejected[reason] += 1
        self._ratelog.warning(
            reason, "frame receiver rejected a message (%s): %s", reason, detail[:200]
        )

    def _validate(self, parts: list[zmq.Frame], nbytes: int) -> Item:
        if nbytes > self.config.max_message_bytes:
            raise _Rejected("oversize", f"{nbytes} bytes > {self.config.max_message_bytes}")
        try:
            decoded = decode_message([p.buffer for p in parts])
        except WireError as exc:
            raise _Rejected(exc.reason, exc.detail) from None
        except Exception as exc:  # a hostile message must never stop the receiver
            raise _Rejected("decode_error", repr(exc)) from None
        if isinstance(decoded, ControlMessage):
            if decoded.event == "scan_start":
                self._announce(decoded)
            return decoded
        header, image = decoded
        shape, dtype = self._announced.get(header.scan_id, (None, None))
        if shape is not None and header.shape != shape:
            raise _Rejected(
                "shape_mismatch", f"scan {header.scan_id!r} announced {shape}, got {header.shape}"
            )
        if dtype is not None and header.dtype != dtype:
            raise _Rejected(
                "dtype_mismatch", f"scan {header.scan_id!r} announced {dtype}, got {header.dtype}"
            )
        # One float64 sum instead of an isfinite temporary: NaN and inf propagate, and float32
        # values cannot overflow a float64 sum, so this is exact and allocation-free.
        if (
            self.config.check_finite
            and image.dtype.kind == "f"
            and not math.isfinite(float(image.sum(dtype=np.float64)))
        ):
            raise _Rejected("non_finite", f"frame {header.frame} of {header.scan_id!r}")
        return ReceivedFrame(header, image, time.time(), nbytes)

    def _announce(self, msg: ControlMessage) -> None:
        """Remember the frame shape/dtype a scan_start announces (payload ``shape``, ``dtype``)."""
        raw_shape = msg.payload.get("shape")
        raw_dtype = msg.payload.get("dtype")
        shape: tuple[int, int] | None = None
        dtype: str | None = None
        bad = []
        if raw_shape is not None:
            if (
                isinstance(raw_shape, list)
                and len(raw_shape) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in raw_shape)
            ):
                shape = (raw_shape[0], raw_shape[1])
            else:
                bad.append(f"shape={raw_shape!r}")
        if raw_dtype is not None:
            if raw_dtype in ALLOWED_DTYPES:
                dtype = raw_dtype
            else:
                bad.append(f"dtype={raw_dtype!r}")
        if bad:
            # The control message itself is kept (lossless); only the check is skipped.
            self._ignored_announcements += 1
            self._ratelog.warning(
                "bad_announcement", "scan_start of %r: unusable %s", msg.scan_id, ", ".join(bad)
            )
        self._announced[msg.scan_id] = (shape, dtype)
        self._announced.move_to_end(msg.scan_id)
        while len(self._announced) > _ANNOUNCED_SCANS:
            self._announced.popitem(last=False)

    async def _monitor_loop(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        while True:
            try:
                msg = await mon.recv_multipart()
                event = parse_monitor_message(msg)["event"]
            except (zmq.ZMQError, ValueError):
                return
            name = zmq.Event(event).name.lower() if isinstance(event, int) else str(event)
            self._conn_events[name] += 1
            if name == "disconnected":
                self._ratelog.warning(
                    "disconnected",
                    "frame sender disconnected from %s (a peer restart, or a message part "
                    "over max_message_bytes=%d, which libzmq answers by dropping the link)",
                    self._endpoint,
                    self.config.max_message_bytes,
                )
            if name == "monitor_stopped":
                return
