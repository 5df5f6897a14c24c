"""FrameReceiver over real ZMQ sockets on 127.0.0.1."""

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq
from pydantic import ValidationError

from tomolock.service.ingest import (
    FrameReceiver,
    FrameReceiverConfig,
    QueueClosed,
    ReceivedFrame,
)
from tomolock.service.wire import ControlMessage, FrameHeader, encode_frame

SHAPE = (32, 48)


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


def image(seed: int, dtype: str = "uint16", shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(dtype)


def frame_msg(scan: str, n: int, kind: str = "projection", *, img=None, **hdr) -> list:
    img = image(n) if img is None else img
    header = FrameHeader(
        scan_id=scan,
        frame=n,
        kind=kind,
        angle_deg=float(n) if kind == "projection" else math.nan,
        timestamp=1.7e9 + n,
        dtype=str(img.dtype),
        shape=img.shape,
        **hdr,
    )
    return encode_frame(header, img)


def control_msg(event: str, scan: str, **payload) -> list:
    return [ControlMessage(event=event, scan_id=scan, timestamp=1.7e9, payload=payload).to_json()]


@pytest.fixture
def sender_ctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def push_to(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def drain(rx: FrameReceiver) -> list:
    out = []
    while not rx.queue.empty():
        out.append(rx.get_nowait())
    return out


def label(item) -> str:
    if isinstance(item, ControlMessage):
        return f"{item.event}:{item.scan_id}"
    return f"{item.kind}:{item.scan_id}:{item.frame}"


async def test_frames_and_control_arrive_in_order(sender_ctx):
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True) as rx:
        assert rx.endpoint.startswith("tcp://127.0.0.1:")
        assert not rx.endpoint.endswith(":0")
        tx = push_to(sender_ctx, rx.endpoint)
        tx.send_multipart(control_msg("scan_start", "A", shape=list(SHAPE), dtype="uint16"))
        tx.send_multipart(frame_msg("A", 0, "dark"))
        tx.send_multipart(frame_msg("A", 0))
        # float32 differs from the announced uint16: rejected, not delivered.
        tx.send_multipart(frame_msg("A", 1, img=image(1, "float32")))
        tx.send_multipart(frame_msg("A", 2))
        items = [await asyncio.wait_for(rx.get(), 10) for _ in range(4)]
    assert [label(i) for i in items] == [
        "scan_start:A",
        "dark:A:0",
        "projection:A:0",
        "projection:A:2",
    ]
    assert items[0].payload == {"shape": list(SHAPE), "dtype": "uint16"}
    stats = rx.stats()
    assert stats.rejected == {"dtype_mismatch": 1}
    assert stats.accepted_by_kind == {"control": 1, "dark": 1, "projection": 2}
    assert stats.received == 5
    assert stats.bytes > 4 * image(0).nbytes


async def test_frame_payload_exact_and_read_only(sender_ctx):
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True) as rx:
        tx = push_to(sender_ctx, rx.endpoint)
        img = image(7)
        tx.send_multipart(frame_msg("S", 3, img=img, truth={"dy_px": 1.5, "dx_px": -2.0}))
        item = await asyncio.wait_for(rx.get(), 10)
    assert isinstance(item, ReceivedFrame)
    assert item.header.truth == {"dy_px": 1.5, "dx_px": -2.0}
    assert item.header.angle_deg == 3.0
    np.testing.assert_array_equal(item.image, img)
    assert item.image.dtype == np.dtype("<u2")
    assert not item.image.flags.writeable
    assert not item.image.flags.owndata  # a view of the received buffer, not a copy
    with pytest.raises(ValueError):
        item.image[0, 0] = 1
    header = frame_msg("S", 3, img=img, truth={"dy_px": 1.5, "dx_px": -2.0})[0]
    assert item.nbytes == img.nbytes + len(header)


async def test_burst_drops_only_projections_and_keeps_order(sender_ctx):
    """Consumer idle during a burst: lossless items all arrive in order, projections newest."""
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True, queue_size=2) as rx:
        tx = push_to(sender_ctx, rx.endpoint)
        sent = []

        def send(msg, lbl):
            tx.send_multipart(msg)
            sent.append(lbl)

        send(control_msg("scan_start", "A", shape=list(SHAPE)), "scan_start:A")
        for n in range(3):
            send(frame_msg("A", n, "dark"), f"dark:A:{n}")
        for n in range(20):
            send(frame_msg("A", n), f"projection:A:{n}")
            if n == 10:
                send(frame_msg("A", 0, "flat"), "flat:A:0")
        send(control_msg("scan_end", "A"), "scan_end:A")
        send(control_msg("scan_start", "B", shape=list(SHAPE)), "scan_start:B")
        for n in range(5):
            send(frame_msg("B", n), f"projection:B:{n}")
        send(control_msg("scan_end", "B"), "scan_end:B")
        await wait_until(lambda: rx.stats().received == len(sent))
        got = [label(i) for i in drain(rx)]
    stats = rx.stats()
    assert got == [
        "scan_start:A",
        "dark:A:0",
        "dark:A:1",
        "dark:A:2",
        "flat:A:0",
        "scan_end:A",
        "scan_start:B",
        "projection:B:3",
        "projection:B:4",
        "scan_end:B",
    ]
    assert stats.dropped_overload == 25 - 2
    assert stats.accepted == len(sent)
    assert stats.rejected == {}
    assert stats.max_lossless_depth == 8


async def test_slow_consumer_sees_increasing_newest_projections(sender_ctx):
    n_proj = 150
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True, queue_size=3) as rx:
        got: list = []

        async def consume():
            async for item in rx:
                got.append(item)
                if isinstance(item, ReceivedFrame) and item.kind == "projection":
                    await asyncio.sleep(0.004)  # slower than the sender
                if isinstance(item, ControlMessage) and item.event == "scan_end":
                    return

        consumer = asyncio.create_task(consume())
        tx = push_to(sender_ctx, rx.endpoint)
        tx.send_multipart(control_msg("scan_start", "A"))
        for n in range(n_proj):
            tx.send_multipart(frame_msg("A", n))
            if n % 50 == 0:
                tx.send_multipart(frame_msg("A", n // 50, "flat"))
            await asyncio.sleep(0)  # let the receive loop run, as a live detector would
        tx.send_multipart(control_msg("scan_end", "A"))
        await asyncio.wait_for(consumer, 20)
    stats = rx.stats()
    proj = [i.frame for i in got if isinstance(i, ReceivedFrame) and i.kind == "projection"]
    flats = [i.frame for i in got if isinstance(i, ReceivedFrame) and i.kind == "flat"]
    assert flats == [0, 1, 2]
    assert label(got[0]) == "scan_start:A"
    assert label(got[-1]) == "scan_end:A"
    assert proj == sorted(proj)
    assert proj[-1] == n_proj - 1  # the newest projection is never the one dropped
    assert stats.dropped_overload > 0
    assert len(proj) + stats.dropped_overload == n_proj


async def test_malformed_messages_counted_and_receiver_survives(sender_ctx, caplog):
    caplog.set_level(logging.WARNING, logger="tomolock.service.ingest.frames")
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True) as rx:
        tx = push_to(sender_ctx, rx.endpoint)
        good = frame_msg("A", 0)
        nan_img = image(1, "float32")
        nan_img[3, 4] = np.nan
        inf_img = image(2, "float32")
        inf_img[0, 0] = -np.inf
        hdr = json.loads(good[0])
        bad = {
            "one_part": [good[0]],
            "three_parts": [*good, b"extra"],
            "control_two_parts": [*control_msg("scan_end", "A"), b"x"],
            "bad_json": [b"{not json", bytes(good[1])],
            "not_object": [b"[1, 2]", bytes(good[1])],
            "wrong_size": [good[0], bytes(good[1])[:-2]],
            "bad_dtype": [json.dumps({**hdr, "dtype": "float64"}).encode(), bytes(good[1])],
            "nan": frame_msg("A", 1, img=nan_img),
            "inf": frame_msg("A", 2, img=inf_img),
            "htype": [json.dumps({**hdr, "htype": "eiger-2"}).encode(), bytes(good[1])],
            "missing": [json.dumps({k: v for k, v in hdr.items() if k != "frame"}).encode(),
                        bytes(good[1])],
            "bad_shape": [json.dumps({**hdr, "shape": [32, 0]}).encode(), b""],
            "exposure": [json.dumps({**hdr, "exposure_s": "long"}).encode(), bytes(good[1])],
        }
        for msg in bad.values():
            tx.send_multipart(msg)
        for _ in range(50):  # a flood of one kind must not flood the log
            tx.send_multipart(bad["bad_json"])
        tx.send_multipart(good)
        item = await asyncio.wait_for(rx.get(), 10)
        assert isinstance(item, ReceivedFrame) and item.frame == 0
        # Announce a shape, then send a frame of another shape.
        tx.send_multipart(control_msg("scan_start", "B", shape=[16, 16], dtype="uint16"))
        tx.send_multipart(frame_msg("B", 0))
        tx.send_multipart(frame_msg("B", 1, img=image(1, shape=(16, 16))))
        labels = [label(await asyncio.wait_for(rx.get(), 10)) for _ in range(2)]
        assert labels == ["scan_start:B", "projection:B:1"]
    stats = rx.stats()
    assert stats.rejected == {
        "bad_parts": 3,
        "bad_json": 52,
        "bad_size": 1,
        "bad_dtype": 1,
        "non_finite": 2,
        "unknown_htype": 1,
        "missing_field": 1,
        "bad_shape": 1,
        "bad_field": 1,
        "shape_mismatch": 1,
    }
    assert stats.received == len(bad) + 50 + 4
    assert stats.accepted == 3
    rejections = [r for r in caplog.records if "rejected a message" in r.getMessage()]
    assert len(rejections) == len(stats.rejected)  # one record per reason in the interval


async def test_bad_announcement_keeps_control_message(sender_ctx):
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True) as rx:
        tx = push_to(sender_ctx, rx.endpoint)
        tx.send_multipart(control_msg("scan_start", "A", shape="big", dtype="int64"))
        tx.send_multipart(frame_msg("A", 0))
        items = [await asyncio.wait_for(rx.get(), 10) for _ in range(2)]
    assert [label(i) for i in items] == ["scan_start:A", "projection:A:0"]
    assert rx.stats().ignored_announcements == 1


async def test_oversize_total_counted_and_oversize_part_drops_link(sender_ctx):
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True, max_message_bytes=2048) as rx:
        tx = push_to(sender_ctx, rx.endpoint)
        small = image(0, "uint8", (32, 63))  # 2016 B buffer + ~190 B header > 2048 in total
        assert len(frame_msg("A", 0, img=small)[0]) + small.nbytes > 2048
        tx.send_multipart(frame_msg("A", 0, img=small))
        await wait_until(lambda: rx.stats().rejected.get("oversize") == 1)
        # A part over the libzmq limit: libzmq drops the connection; the sender reconnects.
        tx.send_multipart(frame_msg("A", 1, img=image(1, "uint8", (64, 64))))
        await wait_until(lambda: rx.stats().connection_events.get("disconnected", 0) >= 1)
        ok = image(2, "uint8", (16, 16))
        # Messages sent right after the drop may be lost with the link: resend until one lands.
        deadline = time.monotonic() + 10
        while rx.queue.empty():
            assert time.monotonic() < deadline, "receiver did not recover after the link drop"
            tx.send_multipart(frame_msg("A", 2, img=ok))
            await asyncio.sleep(0.02)
        item = rx.get_nowait()
    assert item.frame == 2
    assert rx.stats().connection_events["accepted"] >= 2


async def test_sender_restart_is_survived_pull_connect():
    """Detector binds PUSH, receiver connects; the detector process restarts on the same port."""
    ctx = zmq.Context()
    try:
        tx = ctx.socket(zmq.PUSH)
        tx.setsockopt(zmq.LINGER, 0)
        port = tx.bind_to_random_port("tcp://127.0.0.1")
        async with FrameReceiver(address=f"tcp://127.0.0.1:{port}") as rx:
            tx.send_multipart(frame_msg("A", 0))  # blocks until connected (PUSH semantics)
            assert (await asyncio.wait_for(rx.get(), 10)).frame == 0
            tx.close(linger=0)
            await wait_until(lambda: rx.stats().connection_events.get("disconnected", 0) >= 1)
            tx = ctx.socket(zmq.PUSH)
            tx.setsockopt(zmq.LINGER, 0)
            tx.bind(f"tcp://127.0.0.1:{port}")
            deadline = time.monotonic() + 10
            while True:  # PUSH without a peer refuses to send: wait for the reconnect
                try:
                    tx.send_multipart(frame_msg("A", 1), flags=zmq.NOBLOCK)
                    break
                except zmq.Again:
                    assert time.monotonic() < deadline, "receiver never reconnected"
                    await asyncio.sleep(0.01)
            assert (await asyncio.wait_for(rx.get(), 10)).frame == 1
        tx.close(linger=0)
    finally:
        ctx.destroy(linger=0)


async def test_sub_receiver_with_pub_sender_restart(sender_ctx):
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True, socket_type="SUB") as rx:
        for generation in range(2):
            tx = sender_ctx.socket(zmq.PUB)
            tx.setsockopt(zmq.LINGER, 0)
            tx.connect(rx.endpoint)
            # PUB drops until the subscription has propagated: repeat until one arrives.
            deadline = time.monotonic() + 10
            while rx.queue.empty():
                assert time.monotonic() < deadline, "no message through PUB/SUB"
                tx.send_multipart(frame_msg("G", generation))
                await asyncio.sleep(0.02)
            assert {i.frame for i in drain(rx)} == {generation}
            tx.close(linger=0)


async def test_stop_ends_iteration_and_closes():
    rx = FrameReceiver(address="tcp://127.0.0.1:0", bind=True)
    task = asyncio.create_task(rx.run())
    await asyncio.sleep(0.01)
    rx.stop()
    await asyncio.wait_for(task, 5)
    assert [i async for i in rx] == []
    with pytest.raises(QueueClosed):
        await rx.get()
    with pytest.raises(RuntimeError, match="closed"):
        rx.open()


async def test_address_in_use_is_a_clear_error():
    async with FrameReceiver(address="tcp://127.0.0.1:0", bind=True) as rx:
        other = FrameReceiver(address=rx.endpoint, bind=True)
        with pytest.raises(zmq.ZMQError):
            other.open()
        other.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"address": "127.0.0.1:5555"}, "address must look like"),
        ({"address": "tcp://127.0.0.1"}, "host and port"),
        ({"address": "tcp://127.0.0.1:0"}, "concrete port"),
        ({"socket_type": "REQ"}, "socket_type"),
        ({"queue_size": 0}, "queue_size"),
        ({"rcvhwm": 0}, "rcvhwm"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_rejected(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        FrameReceiverConfig(**kwargs)


def test_config_and_settings_are_exclusive():
    with pytest.raises(TypeError, match="either config"):
        FrameReceiver(FrameReceiverConfig(), queue_size=3)


def test_receive_rate_window(monkeypatch):
    from tomolock.service.ingest import frames

    now = [100.0]
    monkeypatch.setattr(frames.time, "monotonic", lambda: now[0])
    rx = FrameReceiver(rate_window_s=1.0)  # never opened: feed _handle directly
    msg = [zmq.Frame(p) for p in control_msg("scan_end", "A")]
    size = len(msg[0])
    for k in range(10):
        now[0] = 100.0 + 0.1 * k
        rx._handle(msg)
    assert rx.stats().rate_hz == 0.0  # no window completed yet
    now[0] = 101.0
    rx._handle(msg)  # completes the first window: 11 messages in 1.0 s
    assert rx.stats().rate_hz == pytest.approx(11.0)
    assert rx.stats().bytes_per_s == pytest.approx(11.0 * size)
    now[0] = 101.5
    assert rx.stats().rate_hz == pytest.approx(11.0)
    now[0] = 103.0  # idle for longer than a window: the rate decays to zero
    assert rx.stats().rate_hz == 0.0
    assert rx.stats().received == 11
    rx.close()
