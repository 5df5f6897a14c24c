"""Receive bluesky documents over ZMQ (msgpack only, never pickle) and feed a ScanContext.

Wire format, as written by :class:`bluesky.callbacks.zmq.Publisher`: one message part
``prefix b" " name b" " payload`` where ``payload`` is the serialised document. bluesky's
default serializer is pickle, which executes code on load; tomolock publishes with
``serializer=pack_document`` (msgpack + msgpack-numpy encoding) and this receiver only ever
decodes msgpack. Anything else is rejected and counted.

msgpack-numpy's own decoder is not used on the receive side: it unpickles object arrays
(``kind == "O"``) and builds arrays from raw bytes with any dtype, including object dtypes
(pointers read from attacker bytes). :func:`unpack_document` decodes numeric arrays only.

Publishing side::

    from bluesky.callbacks.zmq import Publisher
    RE.subscribe(Publisher("127.0.0.1:5577", serializer=pack_document))
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import zmq
import zmq.asyncio
from event_model import DocumentNames, schema_validators

from tomolock.service.ingest.lifecycle import ReceiverLifecycle

from .ratelog import RateLimitedLog

log = logging.getLogger(__name__)

#: Document names a receiver accepts (bluesky's DocumentNames, minus legacy bulk names).
DOCUMENT_NAMES = frozenset(n.name for n in DocumentNames if not n.name.startswith("bulk"))


class UnsafePayload(ValueError):
    """A msgpack payload that asks for an object array (pickle or raw pointers)."""


def pack_document(doc: Mapping[str, Any]) -> bytes:
    """Serialise a document with msgpack, numpy arrays via msgpack-numpy's encoding.

    Use as ``Publisher(..., serializer=pack_document)``.
    """
    return msgpack.packb(doc, default=msgpack_numpy.encode)


def _dtype(descr: Any) -> np.dtype:
    # msgpack delivers strings that were bytes on the encoding side as bytes: normalise.
    if isinstance(descr, bytes):
        return np.dtype(descr.decode())
    if isinstance(descr, str):
        return np.dtype(descr)
    if isinstance(descr, list):  # structured: [[name, type, *shape], ...]
        fields = []
        for entry in descr:
            if not isinstance(entry, list) or len(entry) < 2:
                raise ValueError(f"bad structured dtype entry {entry!r}")
            name = entry[0].decode() if isinstance(entry[0], bytes) else entry[0]
            sub_shape = [tuple(x) if isinstance(x, list) else x for x in entry[2:]]
            fields.append((name, _dtype(entry[1]), *sub_shape))
        return np.dtype(fields)
    raise ValueError(f"bad dtype description {descr!r}")


def _numpy_hook(obj: dict[Any, Any]) -> Any:
    """Msgpack object_hook: rebuild msgpack-numpy arrays and scalars, numeric dtypes only."""
    if b"nd" not in obj:
        if b"complex" in obj and isinstance(obj[b"complex"], bool):
            data = obj[b"data"]
            return complex(data.decode() if isinstance(data, bytes) else str(data))
        return obj
    if obj.get(b"kind") == b"O":
        raise UnsafePayload("object array (msgpack-numpy would unpickle it)")
    dtype = _dtype(obj[b"type"])
    if dtype.hasobject:
        raise UnsafePayload(f"object dtype {dtype!r}")
    data = obj[b"data"]
    if obj[b"nd"] is True:
        shape = tuple(obj[b"shape"])
        arr = np.ndarray(buffer=data, dtype=dtype, shape=shape)
        arr.flags.writeable = False  # backed by the message bytes
        return arr
    return np.frombuffer(data, dtype=dtype)[0]


def unpack_document(payload: bytes | memoryview) -> dict[str, Any]:
    """Decode a msgpack document payload (numeric numpy arrays allowed, nothing executable).

    Raises
    ------
    UnsafePayload
        For object arrays.
    ValueError
        If the payload is not exactly one msgpack map (pickle payloads end up here).
    """
    try:
        doc = msgpack.unpackb(payload, object_hook=_numpy_hook, raw=False)
    except UnsafePayload:
        raise
    except Exception as exc:
        raise ValueError(f"not a msgpack document: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"payload decodes to {type(doc).__name__}, not a document mapping")
    return doc


@dataclass(frozen=True)
class DocumentStats:
    """Snapshot of a :class:`DocumentReceiver`'s counters.

    Attributes
    ----------
    received : int
        Messages taken off the socket.
    accepted : dict
        Documents passed to the sinks, per name.
    rejected : dict
        Rejected messages per reason: ``bad_framing``, ``bad_name``, ``not_msgpack``,
        ``object_array``, ``invalid_document``, ``sink_error``.
    """

    received: int
    accepted: dict[str, int]
    rejected: dict[str, int]

    @property
    def rejected_total(self) -> int:
        """Sum of all rejections."""
        return sum(self.rejected.values())


Sink = Callable[[str, dict[str, Any]], Any]


class DocumentReceiver(ReceiverLifecycle):
    """Asyncio SUB receiver for bluesky documents from a 0MQ proxy.

    Parameters
    ----------
    address : str
        The proxy's *out* endpoint, e.g. ``"tcp://127.0.0.1:5578"`` (``host:port`` accepted).
    sinks : sequence of callables, optional
        ``sink(name, doc)`` for each accepted document, e.g. a :class:`~.context.ScanContext`.
    prefix : bytes
        Only documents published with this Publisher prefix (filtered by libzmq); b"" takes
        all.
    validate : bool
        Check each document against event-model's JSON schema (reason ``invalid_document``).
    context : zmq.asyncio.Context, optional
        ZMQ context; the process-wide asyncio instance by default.
    log_interval_s : float
        Minimum seconds between two log records of the same rejection reason.
    """

    _task_name = "document-receiver"

    def __init__(
        self,
        address: str,
        *,
        sinks: list[Sink] | tuple[Sink, ...] = (),
        prefix: bytes = b"",
        validate: bool = True,
        context: zmq.asyncio.Context | None = None,
        log_interval_s: float = 5.0,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"address must be a non-empty string, got {address!r}")
        if "://" not in address:
            address = "tcp://" + address
        if not isinstance(prefix, bytes) or b" " in prefix:
            raise ValueError(f"prefix must be bytes without b' ', got {prefix!r}")
        for sink in sinks:
            if not callable(sink):
                raise TypeError(f"sink {sink!r} is not callable")
        self.address = address
        self.prefix = prefix
        self.validate = validate
        self._sinks: list[Sink] = list(sinks)
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._init_lifecycle()
        self._ratelog = RateLimitedLog(log, log_interval_s)
        self._received = 0
        self._accepted: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    def subscribe(self, sink: Sink) -> None:
        """Add a ``sink(name, doc)`` callback."""
        if not callable(sink):
            raise TypeError(f"sink {sink!r} is not callable")
        self._sinks.append(sink)

    def open(self) -> None:
        """Create the SUB socket and connect (idempotent)."""
        if self._closed:
            raise RuntimeError("DocumentReceiver is closed; create a new one")
        if self._socket is not None:
            return
        sock = self._ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            # Publisher messages start with prefix + b" ": let libzmq filter.
            sock.setsockopt(zmq.SUBSCRIBE, self.prefix + b" " if self.prefix else b"")
            sock.connect(self.address)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock

    async def run(self) -> None:
        """Receive and dispatch until :meth:`stop`."""
        if self._running:
            raise RuntimeError("DocumentReceiver.run() is already running")
        self.open()
        assert self._socket is not None
        self._running = True
        try:
            while not self._stopping:
                self._pending = self._socket.recv()
                try:
                    message = await self._pending
                except asyncio.CancelledError:
                    if self._stopping:
                        break
                    raise
                finally:
                    self._pending = None
                self.handle(message)
        finally:
            self._running = False
            self.close()

    def close(self) -> None:
        """Close the socket (linger 0)."""
        self._stopping = True
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def stats(self) -> DocumentStats:
        """Snapshot of the counters."""
        return DocumentStats(self._received, dict(self._accepted), dict(self._rejected))

    def handle(self, message: bytes) -> bool:
        """Decode one wire message and dispatch it; count and log a rejection.

        Returns
        -------
        bool
            Whether the document was accepted.
        """
        self._received += 1
        try:
            prefix, name_b, payload = message.split(b" ", 2)
        except ValueError:
            return self._reject("bad_framing", "message is not 'prefix name payload'")
        if self.prefix and prefix != self.prefix:
            return self._reject("bad_framing", f"prefix {prefix[:40]!r}")
        name = name_b.decode("utf-8", "replace")
        if name not in DOCUMENT_NAMES:
            return self._reject("bad_name", repr(name[:40]))
        try:
            doc = unpack_document(payload)
        except UnsafePayload as exc:
            return self._reject("object_array", str(exc))
        except ValueError as exc:
            return self._reject("not_msgpack", str(exc))
        if self.validate:
            try:
                schema_validators[DocumentNames[name]].validate(doc)
            except Exception as exc:
                return self._reject("invalid_document", f"{name}: {str(exc).splitlines()[0]}")
        for sink in self._sinks:
            try:
                sink(name, doc)
            except Exception as exc:  # one bad document must not stop the stream
                self._reject("sink_error", f"{sink!r} on {name}: {exc!r}")
                return False
        self._accepted[name] += 1
        return True

    def _reject(self, reason: str, detail: str) -> bool:
        self._rejected[reason] += 1
        self._ratelog.warning(
            reason, "document receiver rejected a message (%s): %s", reason, detail[:200]
        )
        return False
