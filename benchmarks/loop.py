"""Live-loop benchmark (issue 4): closed-loop residual, frame->decision latency, sustained fps.

1. Closed loop (in process, loopback ZMQ): the simulated detector stream renders each frame
   with the true drift plus the stage offset the service commanded; >= 20 px runout plus a
   thermal warm-up. Runout sweep (interferometer), reference scan, then the measured scan with
   correction on. Residual = the shift the detector really saw (truth in the frame header);
   the uncorrected run is the same drift profile with no offset. Done for a low-jitter stage
   (what a loop can remove) and for the simulator's ``typical`` stage whose white per-exposure
   jitter no predictive loop can remove (a floor).
2. Throughput at 2048² (separate sender process, pre-rendered frames, PUSH->PULL): sustained
   processed fps, frame receipt -> decision latency p50/p99, drops (counted, newest wins) and
   control messages lost (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import progress
from tomolock.devices.sim.drift import DriftParams
from tomolock.service.config import TomolockSettings
from tomolock.service.pipeline import DriftCorrectionService
from tomolock.service.simloop import calibrated_scan, residuals, simulated_loop

LOW_JITTER = DriftParams(
    thermal_tau_s=300.0, jitter_rms_um=0.0005, vibration=(), jump_rate_per_h=0.0,
    jump_size_um=0.0,
)


async def _closed_loop(params: DriftParams, shape: int, n_angles: int, workdir: Path) -> dict:
    angles = np.linspace(0.0, 180.0, n_angles)

    def show(i: int, n: int) -> None:
        if i % 20 == 0 or i == n:
            progress(f"  frame {i}/{n}")

    async with simulated_loop(params, shape=(shape, shape), workdir=workdir) as sl:
        headers = await calibrated_scan(sl, angles, progress=show)
        truth, uncorrected = residuals(sl, headers)
        service = sl.service
    conv = slice(10, None)

    def rms(a: np.ndarray) -> float:
        return round(float(np.sqrt(np.mean(a**2))), 4)

    res, unc = truth[conv], uncorrected[conv]
    return {
        "frames": len(headers), "shape": [shape, shape], "converged_from_frame": 10,
        "peak_uncorrected_px": round(float(np.abs(uncorrected).max()), 2),
        "rms_residual_px": rms(res), "rms_residual_about_mean_px": rms(res - res.mean(0)),
        "rms_residual_per_axis_px": {"dy": rms(res[:, 0]), "dx": rms(res[:, 1])},
        "rms_uncorrected_px": rms(unc), "improvement_ratio": round(rms(unc) / rms(res), 1),
        "white_jitter_rms_px_per_axis": round(
            float(np.hypot(params.jitter_rms_um, 0.0) / params.pixel_size_um), 4),
        "p50_latency_ms": round(float(np.median(service.latency_ms)), 2),
    }


async def _throughput(
    size: int, rate_hz: float, n_frames: int, workdir: Path, *, binning: int = 1,
    queue: int = 1,
) -> dict:
    n_ref = 8
    port_probe = __import__("socket").socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    address = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sender", address, str(size), str(rate_hz),
         str(n_ref), str(n_frames)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("sender failed to start")
    settings = TomolockSettings(
        ingest={"frames_address": address, "frame_queue": queue},
        feedback={"publish_address": "tcp://127.0.0.1:0"},
        estimate={"workers": 2, "binning": binning},
        record={"directory": workdir},
    )
    service = DriftCorrectionService(settings)
    async with service:
        await asyncio.sleep(0.3)  # let the PULL connect
        t0 = time.perf_counter()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        summary = await asyncio.to_thread(proc.stdout.readline)
        # drain: wait until the measurement scan ended and everything queued was processed
        deadline = time.monotonic() + 60
        while (service.scan is None or service.scan.scan_id != "meas" or not service.scan.ended):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        stats = service.receiver.stats()
        lat = np.asarray(service.latency_ms)[n_ref:]  # measured scan only
        scan = service.scan
        scans = [s.scan_id for s in service.store.scans()]
    proc.stdin.write("bye\n")
    proc.stdin.flush()
    proc.wait(timeout=10)
    sent = json.loads(summary)
    return {
        "shape": [size, size], "binning": binning, "frame_queue": queue,
        "offered_rate_hz": rate_hz, "frames_offered": n_frames,
        "sent": sent, "processed_measured": scan.processed if scan else 0,
        "processed_fps": round((scan.processed if scan else 0) / max(elapsed, 1e-9), 2),
        "dropped_overload": stats.dropped_overload, "rejected": dict(stats.rejected),
        "latency_receipt_to_decision_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        },
        "control_messages_lost": 0 if scans == ["ref", "meas"] and scan and scan.ended else 1,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Run the loop benchmarks; returns a JSON-serialisable dict."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = 31 if quick else 91
        progress(f"closed loop, low-jitter stage, {n} projections")
        out["closed_loop_low_jitter"] = asyncio.run(_closed_loop(LOW_JITTER, 192, n, work))
        progress(f"closed loop, typical stage (5 nm white jitter), {n} projections")
        typical = replace(DriftParams.typical(), thermal_tau_s=300.0)
        out["closed_loop_typical_jitter"] = asyncio.run(_closed_loop(typical, 192, n, work))
        cases = [(1024, 1, 10.0)] if quick else [(1024, 1, 20.0), (2048, 1, 10.0), (2048, 2, 10.0)]
        for size, binning, rate in cases:
            progress(f"throughput {size}² (binning {binning}) offered at {rate:g} Hz")
            out[f"throughput_{size}_bin{binning}_{rate:g}hz"] = asyncio.run(
                _throughput(size, rate, 60 if quick else 120, work, binning=binning))
    out["targets"] = {"rms_residual_px": "<= 0.1 after convergence",
                      "control_messages_lost": 0}
    return out
