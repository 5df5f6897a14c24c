"""Plans end to end: RunEngine + simulated IOC + live service (EPICS feeds, HTTP API)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

pytest_plugins = ["sim_fixtures"]
pytestmark = pytest.mark.timeout(120)

TOKEN = "plans-test-token-0123456789"


@dataclass
class Rig:
    """A RunEngine whose loop runs the service and owns every device."""

    RE: Any
    beamline: Any
    running: Any
    stage: Any
    ifm: Any
    det: Any
    service: Any
    beam: Any
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    docs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the RunEngine's loop from the test thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.RE.loop).result(timeout)

    def do(self, make: Any, timeout: float = 30.0) -> Any:
        """Await ``make()`` on the RunEngine's loop (statuses need a running loop to exist)."""

        async def inner() -> Any:
            return await make()

        return self.call(inner(), timeout)

    def run(self, plan: Any) -> Any:
        """Run a plan, recording its documents; return the plan's return value."""
        self.docs.clear()
        token = self.RE.subscribe(lambda n, d: self.docs.append((n, d)))
        try:
            return self.RE(plan).plan_result
        finally:
            self.RE.unsubscribe(token)

    def stream(self, name: str) -> list[dict[str, Any]]:
        """Events of the last run's stream ``name``."""
        uids = {d["uid"] for n, d in self.docs if n == "descriptor" and d["name"] == name}
        return [d for n, d in self.docs if n == "event" and d["descriptor"] in uids]

    def stop_doc(self) -> dict[str, Any]:
        return next(d for n, d in self.docs if n == "stop")


@pytest.fixture(scope="module")
def rig(sim_beamline: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from bluesky import RunEngine
    from ophyd_async.epics.core import epics_signal_rw

    from tomolock.devices import DetectorStream, LaserInterferometer, SampleStage, TomolockService
    from tomolock.devices.sim.drift import DriftParams
    from tomolock.service.config import TomolockSettings
    from tomolock.service.serve import running_service

    RE = RunEngine({}, context_managers=[], call_returns_result=True)
    p = sim_beamline.prefixes
    settings = TomolockSettings(
        ingest={"frames_address": sim_beamline.zmq_address},
        epics={"stage_prefix": p.stage, "interferometer_prefix": p.interferometer,
               "microscope_prefix": p.microscope, "detector_prefix": p.detector},
        feedback={"mode": "apply", "pixel_size_um": DriftParams().pixel_size_um,
                  "publish_address": "tcp://127.0.0.1:0",
                  "interlocks": {"max_step_um": 1.5, "min_confidence": 0.2}},
        record={"directory": tmp_path_factory.mktemp("drift-logs")},
        api={"host": "127.0.0.1", "port": 0, "token": TOKEN},
    )
    context = running_service(settings)

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, RE.loop).result(30)

    running = call(context.__aenter__())
    stage = SampleStage(p.stage, name="stage")
    ifm = LaserInterferometer(p.interferometer, name="ifm")
    det = DetectorStream(p.detector, name="det")
    beam = epics_signal_rw(int, p.control + "BEAM", name="beam")
    service = TomolockService(running.url, token=TOKEN, name="service")

    async def connect() -> None:
        await asyncio.gather(*(d.connect(timeout=10) for d in (stage, ifm, det, beam)))
        await service.connect()
        await beam.set(1)
        await asyncio.gather(stage.rotation.set(0.0), stage.x.set(0.0), stage.z.set(0.0))

    call(connect())
    r = Rig(RE, sim_beamline, running, stage, ifm, det, service, beam)

    async def collect() -> None:
        async for event in running.service.subscribe():
            if event.get("type") == "estimate":
                r.events[event["scan_id"]].append(event)

    task = call(_start(collect()))
    try:
        yield r
    finally:
        RE.loop.call_soon_threadsafe(task.cancel)

        async def park() -> None:
            for motor in (stage.rotation, stage.x, stage.y, stage.z):
                await motor.stop()
            # Leave the shared session IOC as found: corrections moved the piezo.
            await asyncio.gather(stage.rotation.set(0.0), stage.x.set(0.0), stage.y.set(0.0),
                                 stage.z.set(0.0))

        async def teardown() -> list[str]:
            import aioca

            problems = []
            try:
                await asyncio.wait_for(park(), 15)
            except Exception as exc:
                problems.append(f"parking the stage: {exc!r}")
            finally:
                # Always stop the service: a left-over one would keep pulling frames from the
                # shared IOC's PUSH stream and starve the next module's service.
                await service.close()
                try:
                    await asyncio.wait_for(context.__aexit__(None, None, None), 20)
                except Exception as exc:
                    problems.append(f"stopping the service: {exc!r}")
                aioca.purge_channel_caches()
            return problems

        problems = asyncio.run_coroutine_threadsafe(teardown(), RE.loop).result(60)
        assert not problems, problems


async def _start(coro: Any) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def _true_harmonics(beamline: Any, n: int) -> np.ndarray:
    """(3, 2n) cos/sin coefficients of the IOC's simulated runout: A cos(k t + p)."""
    from tomolock.devices.sim.drift import DriftParams

    params = getattr(DriftParams, beamline.config.drift_preset)()
    out = np.zeros((3, 2 * n))
    for axis, harmonics in enumerate((params.runout_x_um, params.runout_y_um,
                                      params.runout_z_um)):
        for k, (amp, phase) in enumerate(harmonics[:n]):
            out[axis, 2 * k] = amp * np.cos(phase)
            out[axis, 2 * k + 1] = -amp * np.sin(phase)
    return out


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _residual_px(rig: Rig, scan_id: str, skip: int) -> np.ndarray:
    events = sorted(rig.events[scan_id], key=lambda e: e["frame"])
    return np.array([[e["truth_dy_px"], e["truth_dx_px"]] for e in events])[skip:]


# ----------------------------------------------------------------------------- calibration


def test_without_a_runout_model_the_reference_scan_refuses_to_start(rig: Rig) -> None:
    from tomolock.plans import ModelNotSettledError, ModelSettle, reference_scan

    assert rig.running.service.runout is None  # first test of the module: not calibrated
    # Without runout harmonics the prediction over a turn stays uncertain by micrometres.
    model = rig.call(rig.service.model.read())
    assert model["service-model-turn_std_x_um"]["value"] > 0.1
    quick = ModelSettle(timeout_s=2.0, window_s=1.0, poll_s=0.1)
    with pytest.raises(ModelNotSettledError, match="run runout_calibration first"):
        rig.run(reference_scan(rig.stage, rig.det, angles=ANGLES[:3], service=rig.service,
                               scan_id="ref-uncal", model_settle=quick))
    assert rig.stream("primary") == []
    assert len(rig.running.service.processor.references) == 0


def test_runout_calibration_fits_the_true_harmonics_and_stores_them(rig: Rig) -> None:
    from tomolock.plans import runout_calibration
    from tomolock.service.model import RunoutModel

    model = rig.run(runout_calibration(rig.stage, rig.ifm, rig.service, n_points=37,
                                       n_harmonics=3, settle_s=0.03))
    assert isinstance(model, RunoutModel) and model.n_harmonics == 3
    truth = _true_harmonics(rig.beamline, 3)
    # 2 nm interferometer noise over 37 points: ~0.7 nm per coefficient.
    np.testing.assert_allclose(model.harmonic_coefficients, truth, atol=0.006)
    primary = rig.stream("primary")
    assert len(primary) == 37
    assert "ifm-x_nm" in primary[0]["data"] and "stage-rotation" in primary[0]["data"]
    (doc,) = rig.stream("runout_model")
    stored = RunoutModel.from_dict(json.loads(doc["data"]["runout_model_json"]))
    np.testing.assert_allclose(stored.coefficients, model.coefficients)
    np.testing.assert_allclose(np.asarray(doc["data"]["runout_model_coefficients"]),
                               model.coefficients)
    assert rig.stop_doc()["exit_status"] == "success"
    # The service installed it as its drift model's prior.
    assert rig.running.service.runout is not None
    assert rig.running.service.runout.n_harmonics == 3
    assert rig.call(rig.service.runout_model.n_harmonics.get_value()) == 3
    rig.do(lambda: rig.stage.rotation.set(0.0))


# ----------------------------------------------------------------------------- scans

ANGLES = np.linspace(0.0, 180.0, 19)


def test_corrected_scans_beat_the_uncorrected_one_and_record_the_corrections(rig: Rig) -> None:
    from tomolock.plans import ModelSettle, reference_scan, tomo_scan

    # The default 6 nm std criterion sits close to where this rig settles (4.8-5.6 nm
    # measured); once in CI the model hovered at 6.5 nm for the whole 60 s. This test is
    # about the workflow, so it allows 8 nm (test_demo runs the default criterion).
    settle = ModelSettle(max_std_um=0.008)
    ref = rig.run(reference_scan(rig.stage, rig.det, angles=ANGLES, service=rig.service,
                                 model_settle=settle))
    assert rig.stop_doc()["exit_status"] == "success"
    assert len(rig.stream("primary")) == len(ANGLES)
    # It first waited for the drift model to settle and recorded the state it settled in.
    (model,) = rig.stream("tomolock_model")
    assert model["data"]["service-model-fitted"] is True
    assert 0 < model["data"]["service-model-std_x_um"] <= settle.max_std_um
    assert len(rig.running.service.processor.references) == len(ANGLES)
    assert ref.startswith("ref-")

    rig.do(lambda: asyncio.gather(rig.stage.x.set(0.0), rig.stage.z.set(0.0)))
    off = rig.run(tomo_scan(rig.stage, rig.det, rig.service, angles=ANGLES, correction="off"))
    off_events = rig.stream("primary")
    assert all(abs(e["data"]["stage-x"]) < 1e-3 for e in off_events)  # the piezo stayed put

    corrected = {}
    for mode in ("service", "plan"):
        sid = rig.run(tomo_scan(rig.stage, rig.det, rig.service, angles=ANGLES,
                                correction=mode, md={"purpose": "test"}))
        assert rig.stop_doc()["exit_status"] == "success"
        events = rig.stream("primary")
        assert len(events) == len(ANGLES)
        start = next(d for n, d in rig.docs if n == "start")
        assert start["tomolock_correction"] == mode and start["purpose"] == "test"
        # Documents carry the correction: the setpoint before each exposure and the piezo
        # readback during it, which follows the setpoint once the loop runs.
        sp = np.array([e["data"]["service-setpoint_x_um"] for e in events])
        rb = np.array([e["data"]["stage-x"] for e in events])
        np.testing.assert_allclose(rb[3:], sp[3:], atol=0.01)
        assert np.ptp(rb) > 0.3  # it really moved with the runout
        corrected[mode] = sid
    # Mode restored after the scans (the service was in apply mode).
    assert rig.running.service.controller.mode == "apply"

    unc = _rms(_residual_px(rig, off, skip=3))
    assert unc > 5.0  # the typical stage's runout shows
    for mode, sid in corrected.items():
        res = _rms(_residual_px(rig, sid, skip=3))
        # Measured 0.25 px against 8.5 px (the typical stage's 0.17 px white jitter is the
        # floor). Without the reference scan's wait for the model it was 0.8-1.3 px: the
        # references inherited the still-converging model's offset.
        assert res * 10 <= unc, f"{mode}: residual {res:.3f} px vs uncorrected {unc:.3f} px"


def test_fly_scans_expose_on_the_fly_and_correct(rig: Rig) -> None:
    from tomolock.devices.sim.drift import DriftParams
    from tomolock.plans import tomo_scan

    assert len(rig.running.service.processor.references) == len(ANGLES)  # from the test above
    for mode in ("service", "plan"):
        t0 = time.monotonic()
        sid = rig.run(tomo_scan(rig.stage, rig.det, rig.service, angles=ANGLES, correction=mode,
                                motion="fly", fly_period_s=0.2))
        took = time.monotonic() - t0
        assert rig.stop_doc()["exit_status"] == "success"
        start = next(d for n, d in rig.docs if n == "start")
        assert start["tomolock_motion"] == "fly" and start["fly_velocity_deg_s"] == 50.0
        events = rig.stream("primary")
        rot = np.array([e["data"]["stage-rotation"] for e in events])
        # Exposed as the readback passed each angle: never early; late by the polling (2 ms),
        # the stage read and, in plan mode, a service slower than the period on a loaded
        # machine (measured: median 0.4 deg, worst 3.8 deg at 50 deg/s); never stopping.
        late = rot - ANGLES
        assert np.all(late >= -1e-6) and np.median(late) < 1.5, late
        assert took < 0.2 * len(ANGLES) + 6.0
        # The velocity was restored.
        assert rig.call(rig.stage.rotation.velocity.get_value()) == 360.0
        truth = _residual_px(rig, sid, skip=3)
        events_sorted = sorted(rig.events[sid], key=lambda e: e["frame"])
        pixel = DriftParams().pixel_size_um
        applied = np.array([[e["truth"]["stage_z_um"], e["truth"]["stage_x_um"]]
                            for e in events_sorted])[3:] / pixel
        res, unc = _rms(truth), _rms(truth - applied)
        assert unc > 5.0
        assert res * 10 <= unc, f"fly {mode}: residual {res:.3f} px vs uncorrected {unc:.3f} px"


def test_fly_scan_refuses_uneven_angles_and_beam_suspension(rig: Rig) -> None:
    from tomolock.plans import tomo_scan

    with pytest.raises(ValueError, match="equally spaced"):
        list(tomo_scan(rig.stage, rig.det, rig.service, angles=[0, 1, 3], motion="fly"))
    with pytest.raises(ValueError, match="beam suspension"):
        list(tomo_scan(rig.stage, rig.det, rig.service, angles=ANGLES, motion="fly",
                       beam=rig.beam))
    with pytest.raises(ValueError, match="fly_period_s"):
        list(tomo_scan(rig.stage, rig.det, rig.service, angles=ANGLES, motion="fly",
                       fly_period_s=0))


def test_wait_for_model_gives_up_with_a_clear_error_and_exposes_nothing(rig: Rig) -> None:
    from tomolock.plans import ModelNotSettledError, ModelSettle, reference_scan

    impossible = ModelSettle(max_std_um=1e-6, window_s=0.5, poll_s=0.1, timeout_s=1.0)
    before = rig.running.service.processor.references.source_scan
    with pytest.raises(ModelNotSettledError, match="did not settle within 1 s"):
        rig.run(reference_scan(rig.stage, rig.det, angles=ANGLES[:3], service=rig.service,
                               scan_id="ref-never", model_settle=impossible))
    assert rig.stop_doc()["exit_status"] == "fail"
    assert rig.stream("primary") == []
    # The references of the earlier reference scan are untouched; no scan was announced.
    assert rig.running.service.processor.references.source_scan == before
    assert rig.running.service.scan is None or rig.running.service.scan.scan_id != "ref-never"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_change_um": 0}, "max_change_um"), ({"timeout_s": float("nan")}, "timeout_s"),
     ({"poll_s": 5.0, "window_s": 1.0}, "poll_s"), ({"axes": ("y",)}, "axes")],
)
def test_model_settle_refuses_bad_criteria(kwargs: dict[str, Any], message: str) -> None:
    from tomolock.plans import ModelSettle

    with pytest.raises(ValueError, match=message):
        ModelSettle(**kwargs)


def test_beam_loss_suspends_and_resumes_the_scan_consistently(rig: Rig) -> None:
    from tomolock.plans import tomo_scan

    angles = np.linspace(0.0, 90.0, 10)
    tripped = threading.Event()

    async def lose_beam() -> None:
        svc = rig.running.service
        while svc.scan is None or not svc.scan.scan_id.startswith("beam") or (
                svc.scan.processed < 3):
            await asyncio.sleep(0.005)
        await rig.beam.set(0)
        tripped.set()
        await asyncio.sleep(0.4)
        await rig.beam.set(1)

    watcher = rig.call(_start(lose_beam()))
    sid = rig.run(tomo_scan(rig.stage, rig.det, rig.service, angles=angles,
                            beam=rig.beam, beam_resume_delay_s=0.1, scan_id="beam-1"))
    rig.do(lambda: asyncio.wait_for(watcher, 5))
    assert tripped.is_set() and sid == "beam-1"
    assert rig.stop_doc()["exit_status"] == "success"
    # Every angle exactly once in the documents, in order (the interrupted one repeated).
    events = rig.stream("primary")
    assert [round(e["data"]["stage-rotation"], 3) for e in events] == list(np.round(angles, 3))
    _assert_consistent(rig, "beam-1")


def test_abort_ends_the_service_scan_and_leaves_the_stage_at_rest(rig: Rig) -> None:
    from bluesky.utils import RunEngineInterrupted

    from tomolock.plans import tomo_scan

    angles = np.linspace(0.0, 180.0, 30)

    async def pause_soon() -> None:
        svc = rig.running.service
        while svc.scan is None or svc.scan.scan_id != "abort-1" or svc.scan.processed < 2:
            await asyncio.sleep(0.005)
        # request_pause waits on the RunEngine's loop: call it from another thread.
        await asyncio.to_thread(rig.RE.request_pause, False)

    rig.call(_start(pause_soon()))
    rig.docs.clear()
    token = rig.RE.subscribe(lambda n, d: rig.docs.append((n, d)))
    try:
        with pytest.raises(RunEngineInterrupted):
            rig.RE(tomo_scan(rig.stage, rig.det, rig.service, angles=angles,
                             correction="plan", scan_id="abort-1"))
        assert rig.RE.state == "paused"
        rig.RE.abort("test abort")
    finally:
        rig.RE.unsubscribe(token)
    assert rig.stop_doc()["exit_status"] == "abort"
    assert len(rig.stream("primary")) < len(angles)
    _assert_consistent(rig, "abort-1")
    # The finaliser restored the service's mode (plan mode switched it to publish-only).
    assert rig.running.service.controller.mode == "apply"


def _assert_consistent(rig: Rig, scan_id: str) -> None:
    """Service scan ended, no motor moving, piezo within its limits."""
    svc = rig.running.service
    deadline = time.monotonic() + 5
    while not (svc.scan is not None and svc.scan.scan_id == scan_id and svc.scan.ended):
        assert time.monotonic() < deadline, "service scan not ended"
        time.sleep(0.01)

    async def motors() -> list[tuple[bool, float]]:
        out = []
        for m in (rig.stage.rotation, rig.stage.x, rig.stage.z):
            out.append((bool(await m.motor_done_move.get_value()),
                        float(await m.user_readback.get_value())))
        return out

    states = rig.call(motors())
    assert all(done for done, _ in states), states
    lo, hi = rig.beamline.config.piezo_limits_um
    assert all(lo <= pos <= hi for _, pos in states[1:])


# ----------------------------------------------------------------------------- device


def test_service_device_control_and_errors(rig: Rig) -> None:
    import bluesky.plan_stubs as bps

    from tomolock.devices import TomolockService
    from tomolock.devices.service import (
        ServiceAuthError,
        ServiceRejectedError,
        ServiceUnavailableError,
    )

    def disable() -> Any:
        yield from bps.mv(rig.service.control_reason, "alignment by hand")
        yield from bps.mv(rig.service.enabled, False)
        return (yield from bps.read(rig.service))

    reading = rig.run(disable())
    assert reading["service-enabled"]["value"] is False
    loop = rig.do(lambda: rig.service.request("GET", "/status"))["loop"]
    assert not loop["enabled"] and loop["disabled_reason"] == "alignment by hand"
    rig.run(bps.mv(rig.service.enabled, True))
    assert rig.do(lambda: rig.service.request("GET", "/status"))["loop"]["enabled"]

    anonymous = TomolockService(rig.running.url, name="anon")
    wrong = TomolockService(rig.running.url, token="not-the-token", name="wrong")
    rig.do(lambda: asyncio.gather(anonymous.connect(), wrong.connect()))
    with pytest.raises(ServiceAuthError, match="token"):
        rig.do(lambda: anonymous.enabled.set(False))
    with pytest.raises(ServiceAuthError, match="401"):
        rig.do(lambda: wrong.enabled.set(False))
    with pytest.raises(ServiceRejectedError, match="422"):
        rig.do(lambda: rig.service.runout_model.set({"format": "nonsense"}))
    with pytest.raises(TypeError, match="RunoutModel"):
        rig.do(lambda: rig.service.runout_model.set(42))
    with pytest.raises(ValueError, match="mode"):
        rig.do(lambda: rig.service.mode.set("sideways"))
    # Nothing changed by the failures.
    assert rig.do(lambda: rig.service.request("GET", "/status"))["loop"]["enabled"]

    dead = TomolockService("http://127.0.0.1:9", name="dead", timeout_s=0.5)
    with pytest.raises(ServiceUnavailableError, match="cannot reach"):
        rig.call(dead.connect())
    for c in (anonymous, wrong, dead):
        rig.call(c.close())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "http"),
        ({"url": "http://127.0.0.1:1", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://127.0.0.1:1", "token": " "}, "token"),
    ],
)
def test_service_device_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    from tomolock.devices import TomolockService

    with pytest.raises(ValueError, match=message):
        TomolockService(**kwargs)
