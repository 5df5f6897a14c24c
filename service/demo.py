"""``tomolock demo``: the whole system on the embedded simulated beamline.

1. Start the simulated beamline: a caproto IOC subprocess (rotation + piezo motor records,
   laser interferometer, visible-light microscope, detector stream control) whose detector
   streamer renders projections of a phantom with the true drift plus the piezo offset.
2. Start the service on it (EPICS sensor feeds, frame stream, feedback in ``apply`` mode) and
   its HTTP API with the live dashboard.
3. Through EPICS, like a scan plan would: a runout-calibration rotation (the interferometer
   feed fits the runout harmonics), a reference scan, then a corrected scan.
4. Print the residual drift the detector saw with correction, against what it would have seen
   without (same frames: truth minus the applied offset), then keep serving the dashboard
   until Ctrl-C (``--no-serve`` to exit instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _bar(done: int, total: int, label: str) -> None:
    """Progress: a redrawn bar on a terminal, a line per 10 % otherwise (logs, CI)."""
    width = 30
    filled = int(width * done / max(total, 1))
    text = f"  {label:<22} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if sys.stdout.isatty():
        print("\r" + text, end="\n" if done >= total else "", flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(text, flush=True)


async def _wait_processed(service: Any, scan_id: str, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while service.scan is None or service.scan.scan_id != scan_id or service.scan.processed < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not process frame {n - 1} of {scan_id}")
        await asyncio.sleep(0.002)


async def _run_scan(
    stage: Any, det: Any, service: Any, scan_id: str, angles: np.ndarray, role: str
) -> None:
    """Step scan through EPICS: announce, then rotate, expose, wait for the correction."""
    step = float(angles[1] - angles[0]) if len(angles) > 1 else 0.0
    await det.begin_scan(scan_id, len(angles), role=role, angle_start=float(angles[0]),
                         angle_step=step)
    for i, angle in enumerate(angles):
        await stage.rotation.set(float(angle))
        await det.trigger()
        await _wait_processed(service, scan_id, i + 1)
        _bar(i + 1, len(angles), f"{role} scan")
    await det.finish_scan()


async def _collect(service: Any, sink: dict[str, list[dict[str, Any]]]) -> None:
    async for event in service.subscribe():
        if event.get("type") == "estimate" and event.get("truth"):
            sink.setdefault(event["scan_id"], []).append(event)


def _summary(events: list[dict[str, Any]], pixel_size_um: float, skip: int) -> dict[str, float]:
    truth = np.array([[e["truth"]["dy_px"], e["truth"]["dx_px"]] for e in events])[skip:]
    offset_px = np.array(
        [[e["truth"]["stage_z_um"], e["truth"]["stage_x_um"]] for e in events]
    )[skip:] / pixel_size_um
    uncorrected = truth - offset_px

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a**2))) if a.size else math.nan

    return {"n": len(truth), "rms": rms(truth), "rms_uncorrected": rms(uncorrected),
            "peak_uncorrected": float(np.abs(uncorrected).max()) if truth.size else math.nan}


async def _demo(args: argparse.Namespace) -> int:
    from tomolock.devices.sim.beamline import SimBeamline
    from tomolock.devices.sim.drift import DriftParams
    from tomolock.devices.sim.ioc import IocConfig

    shape = (args.size, args.size)
    config = IocConfig(shape=shape, drift_preset=args.drift)
    print(f"tomolock demo: simulated beamline ({args.drift} stage, {shape[0]}x{shape[1]} frames)")
    with SimBeamline(config=config) as beamline:
        # libca reads its environment once per process: set it before any CA client import.
        os.environ.update(beamline.client_env())
        from tomolock.devices import DetectorStream, SampleStage
        from tomolock.service.config import TomolockSettings
        from tomolock.service.serve import running_service

        p = beamline.prefixes
        token = args.token or secrets.token_urlsafe(16)
        pixel = DriftParams().pixel_size_um
        settings = TomolockSettings(
            ingest={"frames_address": beamline.zmq_address},
            epics={"stage_prefix": p.stage, "interferometer_prefix": p.interferometer,
                   "microscope_prefix": p.microscope, "detector_prefix": p.detector},
            feedback={"mode": "apply", "pixel_size_um": pixel,
                      "publish_address": "tcp://127.0.0.1:0",
                      "interlocks": {"max_step_um": 1.5, "min_confidence": 0.2}},
            record={"directory": args.record_dir},
            api={"host": "127.0.0.1", "port": args.port, "token": token},
        )
        print(f"  IOC on CA port {beamline.port}, frames on {beamline.zmq_address}")
        async with running_service(settings) as running:
            service = running.service
            print(f"  service API and dashboard: {running.url}/dashboard")
            stage = SampleStage(p.stage, name="stage")
            det = DetectorStream(p.detector, name="det")
            await asyncio.gather(stage.connect(timeout=10), det.connect(timeout=10))
            events: dict[str, list[dict[str, Any]]] = {}
            collector = asyncio.create_task(_collect(service, events))
            try:
                print("  runout calibration: rotating 360 deg with the interferometer feed")
                await stage.rotation.set(0.0)
                velocity = await stage.rotation.velocity.get_value()
                await stage.rotation.velocity.set(180.0)  # 100 Hz samples: ~200 per turn
                try:
                    await stage.rotation.set(360.0, timeout=60)
                    await stage.rotation.set(0.0, timeout=60)
                finally:
                    await stage.rotation.velocity.set(velocity)
                angles = np.linspace(0.0, 180.0, args.projections)
                await _run_scan(stage, det, service, "demo-reference", angles, "reference")
                await _run_scan(stage, det, service, "demo-scan", angles, "measurement")
                await asyncio.sleep(0.2)
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            s = _summary(events.get("demo-scan", []), pixel, skip=5)
            jitter_px = getattr(DriftParams, args.drift)().jitter_rms_um / pixel
            print()
            print(f"  corrected scan, {s['n']} projections after 5 frames of convergence:")
            print(f"    drift without correction   {s['rms_uncorrected']:7.3f} px RMS "
                  f"(peak {s['peak_uncorrected']:.1f} px)")
            print(f"    residual with correction   {s['rms']:7.3f} px RMS "
                  f"({s['rms_uncorrected'] / s['rms']:.0f}x better)")
            print(f"    unpredictable white jitter {jitter_px:7.3f} px RMS per axis "
                  "(the floor no feedback can remove)")
            logs = sorted(Path(args.record_dir).glob("*demo-scan*"))
            if logs:
                print(f"  drift log: {logs[-1]}")
            print(f"  control token for this run: {token}")
            if args.serve:
                print(f"\n  dashboard: {running.url}/dashboard  (Ctrl-C to stop)")
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                import signal

                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.add_signal_handler(sig, stop.set)
                await stop.wait()
        # Close our CA channels before the IOC goes away (else libca prints a
        # "Virtual circuit disconnect" warning for each of them).
        import aioca

        aioca.purge_channel_caches()
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.projections < 3:
        print("tomolock demo: --projections must be >= 3", file=sys.stderr)
        return 2
    if args.serve is None:
        args.serve = sys.stdin.isatty()
    try:
        return asyncio.run(_demo(args))
    except (RuntimeError, TimeoutError) as exc:
        print(f"\ntomolock demo failed: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tomolock demo``."""
    p = sub.add_parser("demo", help="run the whole system on the simulated beamline")
    p.add_argument("--size", type=int, default=256, help="frame size in pixels (square)")
    p.add_argument("--projections", type=int, default=91, help="projections per scan")
    p.add_argument("--drift", choices=("quiet", "typical", "severe"), default="typical")
    p.add_argument("--port", type=int, default=8600, help="API/dashboard port (0: any free)")
    p.add_argument("--token", help="control token (default: a random one, printed)")
    p.add_argument("--record-dir", type=Path, default=Path("tomolock-data"))
    serve = p.add_mutually_exclusive_group()
    serve.add_argument("--serve", dest="serve", action="store_true", default=None,
                       help="keep serving the dashboard after the scans (default on a terminal)")
    serve.add_argument("--no-serve", dest="serve", action="store_false")
    p.set_defaults(func=_run)
