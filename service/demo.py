"""``tomolock demo``: the whole system on the embedded simulated beamline.

1. Start the simulated beamline: a caproto IOC subprocess (rotation + piezo motor records,
   laser interferometer, visible-light microscope, detector stream control) whose detector
   streamer renders projections of a phantom with the true drift plus the piezo offset.
2. Start the service on it (EPICS sensor feeds, frame stream, feedback in ``apply`` mode) and
   its HTTP API with the live dashboard.
3. Run the bluesky plans on a RunEngine, as a beamline session would (``docs/bluesky.md``):
   ``runout_calibration`` (fits the runout harmonics, stores them in the service),
   ``reference_scan`` (waits for the drift model to settle first), ``tomo_scan`` with the
   service correcting, and ``drift_check`` (0/180 pair: rotation-centre offset).
4. Print the residual drift the detector saw with correction, against what it would have seen
   without (same frames: truth minus the applied offset), then keep serving the dashboard
   until Ctrl-C (``--no-serve`` to exit instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np


async def _collect(service: Any, sink: dict[str, list[dict[str, Any]]]) -> None:
    async for event in service.subscribe():
        if event.get("type") == "estimate" and event.get("truth"):
            sink.setdefault(event["scan_id"], []).append(event)


async def _start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def _summary(events: list[dict[str, Any]], pixel_size_um: float, skip: int) -> dict[str, float]:
    events = sorted(events, key=lambda e: e["frame"])
    truth = np.array([[e["truth"]["dy_px"], e["truth"]["dx_px"]] for e in events])[skip:]
    offset_px = np.array(
        [[e["truth"]["stage_z_um"], e["truth"]["stage_x_um"]] for e in events]
    )[skip:] / pixel_size_um
    uncorrected = truth - offset_px

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a**2))) if a.size else math.nan

    return {"n": len(truth), "rms": rms(truth), "rms_uncorrected": rms(uncorrected),
            "peak_uncorrected": float(np.abs(uncorrected).max()) if truth.size else math.nan}


def _demo(args: argparse.Namespace) -> int:
    from tomolock.devices.sim.beamline import SimBeamline
    from tomolock.devices.sim.drift import DriftParams
    from tomolock.devices.sim.ioc import IocConfig

    shape = (args.size, args.size)
    config = IocConfig(shape=shape, drift_preset=args.drift)
    print(f"tomolock demo: simulated beamline ({args.drift} stage, {shape[0]}x{shape[1]} frames)")
    with SimBeamline(config=config) as beamline:
        # libca reads its environment once per process: set it before any CA client import.
        os.environ.update(beamline.client_env())
        from bluesky import RunEngine

        from tomolock.devices import TomolockService
        from tomolock.plans import ProgressPrinter
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
        # The service runs on the RunEngine's event loop (a background thread), beside the
        # ophyd-async devices the plans drive.
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(ProgressPrinter())

        def call(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, RE.loop).result(timeout)

        context = running_service(settings)
        running = call(context.__aenter__())
        service = TomolockService(running.url, token=token, name="service")

        async def teardown() -> None:
            import aioca

            await service.close()
            await context.__aexit__(None, None, None)
            # Close our CA channels before the IOC goes away (else libca prints a
            # "Virtual circuit disconnect" warning for each of them).
            aioca.purge_channel_caches()

        try:
            _session(args, RE, call, running, service, p, pixel, token)
        finally:
            call(teardown())
    return 0


def _session(args: argparse.Namespace, RE: Any, call: Any, running: Any, service: Any,
             p: Any, pixel: float, token: str) -> None:
    """Run the plans, print the summary and serve the dashboard (service running)."""
    from tomolock.devices import (
        DetectorStream,
        LaserInterferometer,
        SampleStage,
        VisibleLightMicroscope,
    )
    from tomolock.devices.sim.drift import DriftParams
    from tomolock.plans import drift_check, reference_scan, runout_calibration, tomo_scan

    # Plans log their waits (the drift model settling, the drift-check result): show them.
    plan_log = logging.getLogger("tomolock.plans")
    if not plan_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        plan_log.addHandler(handler)
        plan_log.setLevel(logging.INFO)
        plan_log.propagate = False  # not twice when the service's logging is set up too
    events: dict[str, list[dict[str, Any]]] = {}
    collector = call(_start(_collect(running.service, events)))
    stage = SampleStage(p.stage, name="stage")
    ifm = LaserInterferometer(p.interferometer, name="ifm")
    vlm = VisibleLightMicroscope(p.microscope, name="vlm")
    det = DetectorStream(p.detector, name="det")
    try:
        print(f"  service API and dashboard: {running.url}/dashboard")

        async def connect() -> None:
            await asyncio.gather(*(d.connect(timeout=10) for d in (stage, ifm, vlm, det)))
            await service.connect()

        call(connect())
        print("  RE(runout_calibration(...)): stepping 360 deg, reading the interferometer")
        model = RE(runout_calibration(stage, ifm, service, microscope=vlm, n_points=37,
                                      n_harmonics=3)).plan_result
        amp = np.hypot(*np.asarray(model.harmonic_coefficients)[0, :2])
        print(f"    fitted {model.n_harmonics} harmonics; first x harmonic {amp:.3f} um "
              "(stored in the service)")
        angles = np.linspace(0.0, 180.0, args.projections)
        print("  RE(reference_scan(...)): waits for the drift model to settle, then "
              "records the references")
        RE(reference_scan(stage, det, angles=angles, service=service,
                          scan_id="demo-reference"))
        print("  RE(tomo_scan(..., correction='service')): the service moves the piezo")
        RE(tomo_scan(stage, det, service, angles=angles, correction="service",
                     scan_id="demo-scan"))
        print("  RE(drift_check(...)): 0/180 pair")
        check = RE(drift_check(stage, det, service, scan_id="demo-check")).plan_result
    finally:

        async def stop_collecting() -> None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector

        call(stop_collecting())
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
    # The check holds the piezo where the scan left it: the pair shows the runout too.
    print(f"  drift check (piezo held): rotation axis at column {check['axis_column_px']:.2f} "
          f"(centre offset {check['centre_offset_px']:+.2f} px), 0/180 dy "
          f"{check['dy_px']:+.2f} px, confidence {check['confidence']:.2f}")
    if check.get("reference_dx_px") is not None:
        print(f"    0 deg vs its reference: dx {check['reference_dx_px']:+.2f} px, "
              f"dy {check['reference_dy_px']:+.2f} px")
    logs = sorted(Path(args.record_dir).glob("*demo-scan*"))
    if logs:
        print(f"  drift log: {logs[-1]}")
    print(f"  control token for this run: {token}")
    if args.serve:

        def interrupt(*_: Any) -> None:
            raise KeyboardInterrupt

        # SIGTERM (systemd, kill) ends the demo as cleanly as Ctrl-C: IOC stopped too.
        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                # Printed inside: a Ctrl-C right after the prompt still ends cleanly (exit 0).
                print(f"\n  dashboard: {running.url}/dashboard  (Ctrl-C to stop)", flush=True)
                threading.Event().wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    if args.projections < 3:
        print("tomolock demo: --projections must be >= 3", file=sys.stderr)
        return 2
    if args.serve is None:
        args.serve = sys.stdin.isatty()
    try:
        return _demo(args)
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
