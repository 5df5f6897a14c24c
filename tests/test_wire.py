"""Round trips and every WireError reason of tomolock.service.wire."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from tomolock.service import wire
from tomolock.service.wire import (
    ControlMessage,
    FrameHeader,
    WireError,
    decode_frame,
    decode_header,
    decode_message,
    encode_frame,
)


def header(**kw) -> FrameHeader:
    base = dict(scan_id="uid-1", frame=3, kind="projection", angle_deg=12.5, timestamp=1.7e9,
                dtype="uint16", shape=(4, 6), exposure_s=0.1)
    base.update(kw)
    return FrameHeader(**base)


def as_bytes(parts) -> list[bytes]:
    return [bytes(p) for p in parts]


@pytest.mark.parametrize("dtype", wire.ALLOWED_DTYPES)
def test_frame_round_trip_all_dtypes(dtype):
    img = (np.arange(24).reshape(4, 6) * 3).astype(dtype)
    h = header(dtype=dtype, truth={"dy_px": 0.25, "dx_px": -1.0})
    out_h, out_img = decode_message(as_bytes(encode_frame(h, img)))
    assert out_h == h
    np.testing.assert_array_equal(out_img, img)
    assert out_img.dtype == np.dtype(dtype).newbyteorder("<")
    assert not out_img.flags.writeable


def test_big_endian_and_strided_input_encoded_little_endian_contiguous():
    img = np.arange(24, dtype=">u2").reshape(6, 4).T  # big-endian, non-contiguous
    parts = encode_frame(header(), img)
    assert bytes(parts[1]) == np.ascontiguousarray(img, dtype="<u2").tobytes()
    _, out = decode_message(as_bytes(parts))
    np.testing.assert_array_equal(out, img)


def test_decode_is_zero_copy_and_read_only_even_from_writable_buffer():
    img = np.arange(24, dtype="<u2").reshape(4, 6)
    buf = bytearray(img.tobytes())
    out = decode_frame(header(), buf)
    assert not out.flags.writeable
    buf[0] = 99  # the view shares the buffer
    assert out[0, 0] == 99


def test_dark_frame_nan_angle_round_trip_as_null():
    h = header(kind="dark", angle_deg=math.nan)
    raw = h.to_json()
    assert json.loads(raw)["angle_deg"] is None
    out = decode_header(raw)
    assert out.kind == "dark" and math.isnan(out.angle_deg)
    assert "truth" not in json.loads(raw)


def test_control_round_trip():
    msg = ControlMessage("scan_start", "uid-1", 1.7e9, {"num_projections": 3, "shape": [4, 6]})
    assert decode_message([msg.to_json()]) == msg


def test_encode_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="does not match header shape"):
        encode_frame(header(), np.zeros((6, 4), dtype="uint16"))


GOOD = json.loads(header().to_json())
CTRL = json.loads(ControlMessage("scan_end", "uid-1", 1.0).to_json())
BUF = bytes(48)


def j(obj) -> bytes:
    return json.dumps(obj).encode()


CASES = {
    "bad_parts": [
        [],
        [j(GOOD)],
        [j(GOOD), BUF, b""],
        [j(CTRL), b""],
    ],
    "header_too_large": [[b" " * (wire.MAX_HEADER_BYTES + 1), BUF]],
    "bad_json": [
        [b"{nope", BUF],
        [b"\xff\xfe{", BUF],
        [b"[1]", BUF],
        [b"[" * 20000 + b"]" * 20000, BUF],  # valid JSON nested deep enough to overflow
    ],
    "unknown_htype": [[j({**GOOD, "htype": "dectris-stream2"}), BUF], [j({"a": 1}), BUF]],
    "unknown_event": [[j({**CTRL, "event": "explode"})]],
    "missing_field": [
        [j({k: v for k, v in GOOD.items() if k != key}), BUF]
        for key in ("kind", "dtype", "shape", "frame", "timestamp", "scan_id")
    ] + [[j({k: v for k, v in CTRL.items() if k != key})] for key in ("event", "scan_id")],
    "bad_field": [
        [j({**GOOD, "kind": "bright"}), BUF],
        [j({**GOOD, "frame": -1}), BUF],
        [j({**GOOD, "frame": 1.0}), BUF],
        [j({**GOOD, "frame": True}), BUF],
        [j({**GOOD, "angle_deg": "ten"}), BUF],
        [j({**GOOD, "angle_deg": False}), BUF],
        [json.dumps({**GOOD, "angle_deg": math.inf}).encode(), BUF],
        [j({**GOOD, "timestamp": "now"}), BUF],
        [json.dumps({**GOOD, "timestamp": math.nan}).encode(), BUF],
        [j({**GOOD, "timestamp": 10**400}), BUF],
        [j({**GOOD, "exposure_s": "long"}), BUF],
        [j({**GOOD, "exposure_s": -0.1}), BUF],
        [j({**GOOD, "exposure_s": None}), BUF],
        [j({**GOOD, "truth": [1, 2]}), BUF],
        [j({**GOOD, "scan_id": 5}), BUF],
        [j({**CTRL, "payload": [1]})],
        [j({**CTRL, "timestamp": "x"})],
    ],
    "bad_dtype": [[j({**GOOD, "dtype": d}), BUF] for d in ("float64", "int16", ">u2", "object")],
    "bad_shape": [
        [j({**GOOD, "shape": s}), BUF]
        for s in ([4], [4, 6, 1], [0, 6], [4, -6], [4.0, 6], [True, 6], [8193, 8193])
    ],
    "bad_size": [[j(GOOD), BUF[:-1]], [j(GOOD), BUF + b"\0"], [j(GOOD), b""]],
}


@pytest.mark.parametrize(
    ("reason", "parts"),
    [(reason, parts) for reason, cases in CASES.items() for parts in cases],
)
def test_every_reason(reason, parts):
    with pytest.raises(WireError) as info:
        decode_message(parts)
    assert info.value.reason == reason
    assert str(info.value).startswith(reason + ": ")


def test_cases_cover_every_reason_raised_in_wire_py():
    src = Path(wire.__file__).read_text()
    raised = set(re.findall(r'WireError\("([a-z_]+)"', src))
    assert raised == set(CASES)
