"""Scenario run by test_pipeline_ioc_restart.py in its own process (libca reads the CA port once).

The IOC (with the detector streamer inside it) dies during a session and comes back on the same
CA and ZMQ ports: the service must hold (interferometer lost, nothing moved), keep running,
reconnect by itself, and correct again afterwards. Prints one JSON line of observations.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time

import numpy as np


async def _run_scan(stage, det, service, scan_id: str, angles: np.ndarray, role: str) -> None:
    """Step scan straight over EPICS: announce, then rotate, expose, wait for the service."""
    await det.begin_scan(scan_id, len(angles), role=role, angle_start=float(angles[0]),
                         angle_step=float(angles[1] - angles[0]))
    for i, angle in enumerate(angles):
        await stage.rotation.set(float(angle))
        await det.trigger()
        deadline = time.monotonic() + 30
        while (service.scan is None or service.scan.scan_id != scan_id
               or service.scan.processed < i + 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not process frame {i} of {scan_id}")
            await asyncio.sleep(0.002)
    await det.finish_scan()


async def _quiet(service, still_s: float = 1.0, limit_s: float = 15.0) -> None:
    """Wait until the service's correction counters have not changed for ``still_s``."""
    def steps() -> int:
        return sum(service.counters[k] for k in ("moves", "holds", "refusals"))

    t_end = time.monotonic() + limit_s
    last, since = steps(), time.monotonic()
    while time.monotonic() < t_end and time.monotonic() - since < still_s:
        await asyncio.sleep(0.05)
        if (now := steps()) != last:
            last, since = now, time.monotonic()


async def _dump_tasks_after(seconds: float) -> None:
    """Print every asyncio task's stack before the test's timeout: a hang explains itself
    (faulthandler's SIGABRT dump shows only the event loop waiting in select)."""
    await asyncio.sleep(seconds)
    print(f"scenario still running after {seconds} s; asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def main() -> dict:
    watchdog = asyncio.create_task(_dump_tasks_after(200.0))
    try:
        return await _main()
    finally:
        watchdog.cancel()


async def _main() -> dict:
    from tomolock.devices.sim.beamline import SimBeamline, free_tcp_port
    from tomolock.devices.sim.ioc import IocConfig

    zmq = f"tcp://127.0.0.1:{free_tcp_port()}"
    beamline = SimBeamline(config=IocConfig(shape=(96, 96), zmq_address=zmq)).start()
    os.environ.update(beamline.client_env())
    from tomolock.devices import DetectorStream, SampleStage
    from tomolock.service.config import TomolockSettings
    from tomolock.service.serve import running_service

    p = beamline.prefixes
    obs: dict = {}
    settings = TomolockSettings(
        ingest={"frames_address": zmq},
        epics={"stage_prefix": p.stage, "interferometer_prefix": p.interferometer,
               "microscope_prefix": p.microscope, "detector_prefix": p.detector},
        feedback={"mode": "apply", "publish_address": "tcp://127.0.0.1:0",
                  "interlocks": {"max_step_um": 1.5, "min_confidence": 0.2}},
        record={"directory": tempfile.mkdtemp()},
        api={"port": 0},
    )
    angles = np.linspace(0.0, 180.0, 13)
    try:
        async with running_service(settings) as running:
            service = running.service
            stage = SampleStage(p.stage, name="stage")
            det = DetectorStream(p.detector, name="det")
            await asyncio.gather(stage.connect(timeout=10), det.connect(timeout=10))
            await stage.rotation.set(360.0, timeout=30)
            await stage.rotation.set(0.0, timeout=30)
            await _run_scan(stage, det, service, "ref", angles, "reference")
            await _run_scan(stage, det, service, "before", angles, "measurement")
            # The last frame's correction may still be moving the stage: count it as before
            # the outage, not as a move "while down".
            await _quiet(service)
            obs["moves_before"] = service.counters["moves"]

            beamline.stop()  # the IOC and its detector stream die
            t0 = time.monotonic()
            while service.interferometer_ok and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            obs["interferometer_lost_seen"] = not service.interferometer_ok
            obs["service_receiving_while_down"] = service.receiving
            obs["moves_while_down"] = service.counters["moves"] - obs["moves_before"]

            # Back at once: libca re-searches lost channels with exponential backoff and these
            # loopback IOCs sink their beacons (no CA repeater to announce the restart), so
            # the reconnect time grows with the outage. A beamline's repeater avoids this.
            beamline.start()  # same CA port and ZMQ address
            t0 = time.monotonic()
            while not service.interferometer_ok and time.monotonic() - t0 < 90:
                await asyncio.sleep(0.05)
            obs["interferometer_back"] = service.interferometer_ok
            obs["reconnect_s"] = round(time.monotonic() - t0, 2)
            if not obs["interferometer_back"]:
                return obs  # report at once: CA puts to a still-unconnected IOC would hang
            await stage.rotation.set(0.0, timeout=30)
            await asyncio.wait_for(
                _run_scan(stage, det, service, "after", angles, "measurement"), 90)
            obs["moves_after"] = service.counters["moves"] - obs["moves_before"]
            obs["processed_after"] = service.scan.processed if service.scan else 0
    finally:
        import aioca

        aioca.purge_channel_caches()
        beamline.stop()
    return obs


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())), flush=True)
    sys.exit(0)
