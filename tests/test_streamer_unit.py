"""DetectorStreamer without an IOC: ordering, truth, drop policy, input checks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq
import zmq.asyncio
from skimage.registration import phase_cross_correlation

from tomolock.devices.sim.drift import DriftParams
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.devices.sim.streamer import DetectorStreamer, ManualBeamState, true_shift_px
from tomolock.service.wire import ControlMessage, decode_message


@pytest.fixture(scope="module")
def simulator() -> ScanSimulator:
    return ScanSimulator(ScanConfig(shape=(128, 128), n_darks=1, n_flats=2, seed=3,
                                    drift=DriftParams.typical()))


async def _recv_all(sock, n: int) -> list:
    return [decode_message(await asyncio.wait_for(sock.recv_multipart(), 5)) for _ in range(n)]


async def test_pub_stream_order_truth_and_untouched_zero_copy_buffers(simulator):
    ctx = zmq.asyncio.Context()
    state = ManualBeamState(angle_deg=25.0, stage_offset_um=(0.09, 0.0, -0.06))
    streamer = DetectorStreamer(simulator, simulator.drift, state, mode="pub", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(streamer.address)
    await asyncio.sleep(0.2)  # PUB drops messages until the subscription has arrived
    try:
        await streamer.start_scan("unit", {"num_projections": 4})
        headers = []
        for k in range(4):  # sent back to back: buffers queue inside zmq meanwhile
            state.angle_deg = 25.0 + 10 * k
            headers.append(await streamer.acquire(0.0))
        await streamer.end_scan()
        msgs = await _recv_all(sub, 1 + 1 + 2 + 1 + 4 + 1)
    finally:
        streamer.close()
        sub.close(linger=0)
        ctx.term()
    events = [m.event for m in msgs if isinstance(m, ControlMessage)]
    assert events == ["scan_start", "dark_flat_done", "scan_end"]
    kinds = [m[0].kind for m in msgs if not isinstance(m, ControlMessage)]
    assert kinds == ["dark", "flat", "flat", "projection", "projection", "projection",
                     "projection"]
    projections = [m for m in msgs if not isinstance(m, ControlMessage)][3:]
    for (header, image), sent in zip(projections, headers, strict=True):
        assert header == sent
        dy, dx = simulator.drift.detector_shift_px(header.angle_deg, header.truth["t_s"],
                                                   stage_offset_um=(0.09, 0.0, -0.06))
        assert (header.truth["dy_px"], header.truth["dx_px"]) == pytest.approx((dy, dx))
        ref = simulator.render(header.angle_deg, (dy, dx), noise=False)
        est, _, _ = phase_cross_correlation(ref.astype(np.float32), image.astype(np.float32),
                                            upsample_factor=50, normalization=None)
        assert np.abs(est).max() < 0.1  # each frame intact and at its own truth
    assert msgs[-1].payload["projections"] == 4
    assert streamer.sent == 1 + 2 + 4 and streamer.dropped == 0


async def test_push_without_consumer_drops_frames_and_times_out_controls(simulator):
    streamer = DetectorStreamer(simulator, simulator.drift, ManualBeamState(),
                                control_timeout_s=0.1)
    try:
        await streamer.acquire(0.0)
        await streamer.acquire(0.0)
        assert (streamer.sent, streamer.dropped) == (0, 2)
        await streamer.end_scan()
        assert streamer.control_failures == 1
    finally:
        streamer.close()


def test_drift_disabled_leaves_only_the_stage_offset(simulator):
    pixel = simulator.drift.params.pixel_size_um
    state = ManualBeamState(angle_deg=40.0, stage_offset_um=(3 * pixel, 0.0, -2 * pixel),
                            drift_enabled=False)
    assert true_shift_px(simulator.drift, state()) == pytest.approx((-2.0, 3.0))
    state.drift_enabled = True
    assert true_shift_px(simulator.drift, state()) != pytest.approx((-2.0, 3.0), abs=0.5)


async def test_bad_arguments_are_refused_with_clear_messages(simulator):
    with pytest.raises(ValueError, match="mode"):
        DetectorStreamer(simulator, simulator.drift, ManualBeamState(), mode="router")
    with pytest.raises(ValueError, match="loopback"):
        DetectorStreamer(simulator, simulator.drift, ManualBeamState(),
                         address="tcp://0.0.0.0:*")
    streamer = DetectorStreamer(simulator, simulator.drift, ManualBeamState())
    try:
        with pytest.raises(ValueError, match="exposure"):
            await streamer.acquire(-1.0)
        with pytest.raises(ValueError, match="scan_id"):
            await streamer.start_scan("")
    finally:
        streamer.close()
