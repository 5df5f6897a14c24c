"""A detector-stream sender process for the loop benchmark (pre-rendered frames, fixed rate).

Run as ``python -m benchmarks.sender ADDRESS SIZE RATE N_REF N_FRAMES``: binds a PUSH socket on
ADDRESS (loopback), sends a reference scan (role=reference, N_REF angles) and then a measurement
scan of N_FRAMES projections at RATE Hz cycling over the same angles, with scan_start/scan_end
control messages. Frames are rendered before sending starts so the sender is never the
bottleneck; each header's timestamp is the send time.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import zmq

from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.service.wire import ControlMessage, FrameHeader, encode_frame


def main(argv: list[str]) -> int:
    """Send the scans; print a JSON summary line at the end."""
    address, size, rate = argv[0], int(argv[1]), float(argv[2])
    n_ref, n_frames = int(argv[3]), int(argv[4])
    cfg = ScanConfig(shape=(size, size), counts=1000.0, seed=5, noise_model="gaussian")
    sim = ScanSimulator(cfg)
    angles = np.linspace(0.0, 180.0, n_ref, endpoint=False)
    rng = np.random.default_rng(1)
    refs = [sim.render(a, (0.0, 0.0), rng=rng) for a in angles]
    frames = [sim.render(a, tuple(rng.uniform(-3, 3, 2)), rng=rng) for a in angles]
    # Averaged darks/flats as at a beamline: one noisy flat would leave a fixed pattern common
    # to reference and frame that pulls every estimate toward zero shift.
    darks = [f.image for f in sim.darks()]
    flats = [f.image for f in sim.flats()]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.bind(address)
    print("ready", flush=True)
    sys.stdin.readline()  # the benchmark says go once the service is connected

    def control(event: str, scan: str, payload: dict) -> None:
        sock.send(ControlMessage(event, scan, time.time(), payload).to_json())

    def frame(scan: str, i: int, kind: str, angle: float, img: np.ndarray, block: bool) -> bool:
        h = FrameHeader(scan, i, kind, angle, time.time(), "uint16", (size, size))
        try:
            sock.send_multipart(encode_frame(h, img), copy=False, flags=0 if block else zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    sent = dropped = 0
    plan = (("ref", "reference", n_ref, refs), ("meas", "measurement", n_frames, frames))
    for scan, role, n, imgs in plan:
        control("scan_start", scan, {"role": role, "shape": [size, size], "dtype": "uint16"})
        for i, img in enumerate(darks):
            frame(scan, i, "dark", float("nan"), img, True)
        for i, img in enumerate(flats):
            frame(scan, i, "flat", float("nan"), img, True)
        period = 1.0 / rate if role == "measurement" else 0.05
        t_next = time.perf_counter()
        for i in range(n):
            k = i % len(angles)
            if frame(scan, i, "projection", float(angles[k]), imgs[k], block=role == "reference"):
                sent += 1
            else:
                dropped += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.perf_counter()))
        control("scan_end", scan, {})
    print(json.dumps({"sent": sent, "dropped_at_sender": dropped}), flush=True)
    sys.stdin.readline()
    sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
