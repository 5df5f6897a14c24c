"""Wire formats shared by the detector streamer (simulation) and the service ingest.

Two kinds of ZMQ message travel on the frame stream:

* **frame**: a two-part multipart message ``[header, buffer]``. ``header`` is UTF-8 JSON
  (see :class:`FrameHeader`), ``buffer`` the raw C-ordered pixel data, exactly
  ``prod(shape) * itemsize`` bytes.
* **control**: a one-part message whose JSON has ``"htype": "tomolock-control-1"``
  (see :class:`ControlMessage`): scan start/end, reference set. Control messages must never be
  dropped by a receiver, frames may be (newest-wins, counted).

Every decoder raises :class:`WireError` with a short machine-readable ``reason`` so a receiver
can count rejections per reason and keep running.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

FRAME_HTYPE = "tomolock-frame-1"
CONTROL_HTYPE = "tomolock-control-1"

#: Pixel types a frame may carry (little-endian on the wire).
ALLOWED_DTYPES = ("uint8", "uint16", "uint32", "float32")
FRAME_KINDS = ("projection", "dark", "flat")
CONTROL_EVENTS = ("scan_start", "scan_end", "reference_set", "dark_flat_done")
#: ``role`` of a ``scan_start``: corrected scan, reference acquisition, or a drift check (the
#: service estimates and records but never moves the stage, see ``service.drift_check``).
SCAN_ROLES = ("measurement", "reference", "check")
#: Upper bound on one frame's pixel count (guards against absurd headers).
MAX_PIXELS = 8192 * 8192
MAX_HEADER_BYTES = 64 * 1024

FrameKind = Literal["projection", "dark", "flat"]


class WireError(ValueError):
    """A message that cannot be decoded; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FrameHeader:
    """JSON header of one frame message.

    Attributes
    ----------
    scan_id : str
        Identifier of the scan (bluesky run start uid where one exists).
    frame : int
        Frame number within the scan, starting at 0, counted per kind.
    kind : {"projection", "dark", "flat"}
        What the frame is.
    angle_deg : float
        Rotation angle at the exposure midpoint, degrees (NaN for dark/flat allowed).
    timestamp : float
        Exposure midpoint, seconds since the Unix epoch.
    dtype : str
        One of :data:`ALLOWED_DTYPES`, little-endian.
    shape : tuple of int
        ``(rows, cols)``.
    exposure_s : float
        Exposure time in seconds.
    truth : dict, optional
        Simulation only: ground truth, e.g. ``{"dy_px": .., "dx_px": ..}`` of the drift the
        frame really carries (true drift minus applied correction). Never used by the
        estimators; used by tests and benchmarks to score them.
    """

    scan_id: str
    frame: int
    kind: FrameKind
    angle_deg: float
    timestamp: float
    dtype: str
    shape: tuple[int, int]
    exposure_s: float = 0.0
    truth: dict[str, float] | None = None
    htype: str = field(default=FRAME_HTYPE)

    def to_json(self) -> bytes:
        """Serialise to the UTF-8 JSON header part."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        if d["truth"] is None:
            del d["truth"]
        # NaN is not JSON: dark/flat frames without an angle carry null.
        if isinstance(d["angle_deg"], float) and math.isnan(d["angle_deg"]):
            d["angle_deg"] = None
        return json.dumps(d, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ControlMessage:
    """A lossless control message on the frame stream.

    Attributes
    ----------
    event : str
        One of :data:`CONTROL_EVENTS`.
    scan_id : str
        Scan the event belongs to.
    timestamp : float
        Seconds since the Unix epoch.
    payload : dict
        Event-specific data, e.g. ``{"num_projections": 361, "angles_deg": [...]}`` on
        ``scan_start``.
    """

    event: str
    scan_id: str
    timestamp: float
    payload: dict[str, Any] = field(default_factory=dict)
    htype: str = field(default=CONTROL_HTYPE)

    def to_json(self) -> bytes:
        """Serialise to one UTF-8 JSON message part."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def encode_frame(header: FrameHeader, image: np.ndarray) -> list[bytes | memoryview]:
    """Build the two parts of a frame message.

    Parameters
    ----------
    header : FrameHeader
        Header; its ``dtype`` and ``shape`` must match ``image``.
    image : numpy.ndarray
        2-D pixel data. It is made C-contiguous little-endian; do not mutate it after a
        zero-copy send.

    Returns
    -------
    list
        ``[header_json, buffer]`` ready for ``socket.send_multipart(..., copy=False)``.
    """
    arr = np.ascontiguousarray(image, dtype=np.dtype(header.dtype).newbyteorder("<"))
    if arr.shape != tuple(header.shape):
        raise ValueError(f"image shape {arr.shape} does not match header shape {header.shape}")
    return [header.to_json(), memoryview(arr).cast("B")]


def _parse_json(part: bytes | memoryview) -> dict[str, Any]:
    if len(part) > MAX_HEADER_BYTES:
        raise WireError("header_too_large", f"{len(part)} bytes > {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(bytes(part))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested arrays fit in MAX_HEADER_BYTES and overflow the parser.
        raise WireError("bad_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise WireError("bad_json", "header is not a JSON object")
    return obj


def _require(obj: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise WireError("missing_field", key)
    val = obj[key]
    # bool is an int subclass: refuse it where a number is expected.
    if isinstance(val, bool) or not isinstance(val, typ):
        raise WireError("bad_field", f"{key}={val!r}")
    return val


def _number(obj: dict[str, Any], key: str, default: float | None = None) -> float:
    """Read a JSON number as float; ``default`` where the key is absent (None: required)."""
    if key not in obj and default is not None:
        return default
    val = _require(obj, key, (int, float))
    try:
        return float(val)
    except OverflowError:  # JSON integers are unbounded
        raise WireError("bad_field", f"{key} out of range") from None


def decode_header(part: bytes | memoryview) -> FrameHeader | ControlMessage:
    """Decode the first part of a message into a frame header or a control message.

    Raises
    ------
    WireError
        For malformed JSON, unknown ``htype``, missing or ill-typed fields.
    """
    obj = _parse_json(part)
    htype = obj.get("htype")
    if htype == CONTROL_HTYPE:
        event = _require(obj, "event", str)
        if event not in CONTROL_EVENTS:
            raise WireError("unknown_event", event)
        payload = obj.get("payload", {})
        if not isinstance(payload, dict):
            raise WireError("bad_field", "payload")
        return ControlMessage(
            event=event,
            scan_id=_require(obj, "scan_id", str),
            timestamp=_number(obj, "timestamp"),
            payload=payload,
        )
    if htype != FRAME_HTYPE:
        raise WireError("unknown_htype", repr(htype))
    kind = _require(obj, "kind", str)
    if kind not in FRAME_KINDS:
        raise WireError("bad_field", f"kind={kind!r}")
    dtype = _require(obj, "dtype", str)
    if dtype not in ALLOWED_DTYPES:
        raise WireError("bad_dtype", dtype)
    shape = _require(obj, "shape", list)
    if (
        len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        or min(shape) < 1
        or shape[0] * shape[1] > MAX_PIXELS
    ):
        raise WireError("bad_shape", repr(shape))
    # null (or an absent key) means "no angle", as for dark/flat frames.
    angle = math.nan if obj.get("angle_deg") is None else _number(obj, "angle_deg")
    if math.isinf(angle):
        raise WireError("bad_field", f"angle_deg={angle!r}")
    frame = _require(obj, "frame", int)
    if frame < 0:
        raise WireError("bad_field", f"frame={frame}")
    exposure = _number(obj, "exposure_s", 0.0)
    if not math.isfinite(exposure) or exposure < 0:
        raise WireError("bad_field", f"exposure_s={exposure!r}")
    timestamp = _number(obj, "timestamp")
    if not math.isfinite(timestamp):
        raise WireError("bad_field", f"timestamp={timestamp!r}")
    truth = obj.get("truth")
    if truth is not None and not isinstance(truth, dict):
        raise WireError("bad_field", "truth")
    return FrameHeader(
        scan_id=_require(obj, "scan_id", str),
        frame=frame,
        kind=kind,
        angle_deg=angle,
        timestamp=timestamp,
        dtype=dtype,
        shape=(shape[0], shape[1]),
        exposure_s=exposure,
        truth=truth,
    )


def decode_frame(header: FrameHeader, buffer: bytes | memoryview) -> np.ndarray:
    """View a frame buffer as a read-only 2-D array (zero copy).

    Raises
    ------
    WireError
        ``bad_size`` if the buffer length does not match the header.
    """
    dt = np.dtype(header.dtype).newbyteorder("<")
    expected = header.shape[0] * header.shape[1] * dt.itemsize
    if len(buffer) != expected:
        raise WireError("bad_size", f"{len(buffer)} bytes, header says {expected}")
    arr = np.frombuffer(buffer, dtype=dt).reshape(header.shape)
    # A writable source buffer (bytearray, zmq frame) would give a writable view: enforce the
    # documented read-only contract so no consumer mutates a buffer that others share.
    arr.flags.writeable = False
    return arr


Decoded = tuple[FrameHeader, np.ndarray] | ControlMessage


def decode_message(parts: list[bytes | memoryview]) -> Decoded:
    """Decode a whole multipart message.

    Returns
    -------
    tuple or ControlMessage
        ``(header, image)`` for a frame, the message for a control message.

    Raises
    ------
    WireError
        ``bad_parts`` for a wrong number of parts, and the reasons of :func:`decode_header`
        and :func:`decode_frame`.
    """
    if not parts:
        raise WireError("bad_parts", "empty message")
    head = decode_header(parts[0])
    if isinstance(head, ControlMessage):
        if len(parts) != 1:
            raise WireError("bad_parts", f"control message with {len(parts)} parts")
        return head
    if len(parts) != 2:
        raise WireError("bad_parts", f"frame message with {len(parts)} parts, expected 2")
    return head, decode_frame(head, parts[1])
