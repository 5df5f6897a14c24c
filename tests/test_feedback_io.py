"""Publisher (ZMQ on loopback), actuators (ophyd-async mock mode) and the controller."""

import asyncio
import json
import logging
import math
from types import SimpleNamespace

import pytest
import zmq
import zmq.asyncio
from ophyd_async.core import set_mock_put_proceeds, set_mock_value
from ophyd_async.epics.motor import Motor

from tomolock.service.feedback.actuator import (
    ActuatorError,
    MoveTimeoutError,
    OphydAsyncActuator,
    PublishOnlyActuator,
    StageActuator,
)
from tomolock.service.feedback.interlocks import AxisLimits, InterlockConfig, Interlocks
from tomolock.service.feedback.loop import FeedbackController
from tomolock.service.feedback.publisher import (
    DECISION_TOPIC,
    SETPOINT_TOPIC,
    SetpointPublisher,
)
from tomolock.service.feedback.setpoint import make_setpoint


def _sp(drift=0.3, conf=0.9, t_created=100.0):
    return make_setpoint(
        scan_id="scan-1",
        frame=7,
        predicted_drift_um={"x": drift, "z": -drift},
        std_um={"x": 0.01, "z": 0.01},
        t_valid=t_created + 0.2,
        angle_deg=33.0,
        confidence=conf,
        t_created=t_created,
    )


def _il(**kw):
    cfg = dict(max_step_um=1.0, dead_band_um=0.005, staleness_timeout_s=1.0)
    cfg.update(kw)
    return Interlocks(InterlockConfig(**cfg))


async def _sub(endpoint):
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"tomolock.")
    sub.connect(endpoint)
    return sub


async def _recv_after_join(pub, sub, send):
    """PUB/SUB joins asynchronously: resend until the subscriber hears something."""
    for _ in range(200):
        await send()
        if await sub.poll(20):
            return await sub.recv_multipart()
    raise AssertionError("subscriber never received a message")


async def test_publisher_topics_and_json_schema():
    il = _il()
    async with SetpointPublisher(port=0) as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
        sub = await _sub(pub.endpoint)
        try:
            sp = _sp()
            d = il.evaluate(sp, {"x": 0.0, "z": 0.0}, 100.1, interferometer_ok=True)
            topic, body = await _recv_after_join(pub, sub, lambda: pub.publish(sp, d, "apply"))
            assert topic == SETPOINT_TOPIC
            msg = json.loads(body)
            assert msg["schema"] == "tomolock-setpoint-1"
            assert msg["action"] == "move" and msg["mode"] == "apply"
            assert msg["commanded_um"] == pytest.approx({"x": -0.3, "z": 0.3})
            assert msg["predicted_drift_um"] == pytest.approx({"x": 0.3, "z": -0.3})
            assert msg["frame"] == 7 and msg["scan_id"] == "scan-1" and msg["angle_deg"] == 33.0

            bad = _sp(drift=math.nan)
            d2 = il.evaluate(bad, {"x": 0.0, "z": 0.0}, 100.1, interferometer_ok=True)
            await pub.publish(bad, d2)
            topic, body = await sub.recv_multipart()
            assert topic == DECISION_TOPIC
            msg = json.loads(body)  # strict JSON: NaN went out as null
            assert msg["schema"] == "tomolock-decision-1"
            assert msg["action"] == "refuse" and msg["reasons"] == ["non_finite"]
            assert msg["targets_um"]["x"] is None and msg["commanded_um"] == {}
            assert pub.sent["decision"] == 1 and pub.sent["setpoint"] >= 1
        finally:
            sub.close()
    with pytest.raises(RuntimeError, match="not started"):
        await pub.publish(sp, d)


def test_publisher_argument_checks():
    with pytest.raises(ValueError, match="host"):
        SetpointPublisher(host="*")
    with pytest.raises(ValueError, match="port"):
        SetpointPublisher(port=70000)


async def test_publisher_port_in_use_raises():
    async with SetpointPublisher(port=0) as first:
        port = int(first.endpoint.rsplit(":", 1)[1])
        with pytest.raises(zmq.ZMQError):
            SetpointPublisher(port=port).start()


async def _motors(names=("x", "z")):
    motors = {n: Motor(f"SIM:{n.upper()}", name=f"piezo_{n}") for n in names}
    # Mock mode: no IOC; the default InstantMotorMock moves readback to setpoint on put.
    await asyncio.gather(*(m.connect(mock=True) for m in motors.values()))
    return motors


async def test_ophyd_async_actuator_moves_axes_concurrently():
    motors = await _motors()
    act = OphydAsyncActuator(motors)
    assert isinstance(act, StageActuator)
    assert await act.positions() == {"x": 0.0, "z": 0.0}
    await act.move({"x": 1.25, "z": -0.5}, timeout=2.0)
    assert await act.positions() == {"x": 1.25, "z": -0.5}
    await act.move({}, timeout=1.0)  # nothing to do


async def test_ophyd_async_actuator_names_the_failing_axis():
    motors = await _motors()
    # Motor-record soft limits on z only (dial limits non-zero activate the check).
    for sig, v in (("low_limit_travel", -1.0), ("high_limit_travel", 1.0)):
        set_mock_value(getattr(motors["z"], sig), v)
    for sig, v in (("dial_low_limit_travel", -1.0), ("dial_high_limit_travel", 1.0)):
        set_mock_value(getattr(motors["z"], sig), v)
    act = OphydAsyncActuator(motors)
    with pytest.raises(ActuatorError, match="z: MotorLimitsError") as info:
        await act.move({"x": 0.5, "z": 5.0}, timeout=2.0)
    assert set(info.value.failures) == {"z"}
    assert not isinstance(info.value, MoveTimeoutError)


async def test_ophyd_async_actuator_timeout_stops_and_reports():
    motors = await _motors()
    set_mock_put_proceeds(motors["x"].user_setpoint, False)  # x never completes
    act = OphydAsyncActuator(motors)
    # The timeout is generous so that z finishes even on a loaded CI runner (0.2 s did not).
    with pytest.raises(MoveTimeoutError, match="x") as info:
        await act.move({"x": 0.5, "z": 0.25}, timeout=2.0)
    assert set(info.value.failures) == {"x"}
    assert (await act.positions())["z"] == 0.25


class _VanishedIocMotor:
    """A motor whose IOC is gone: puts never complete and ignore cancellation, stop hangs."""

    def __init__(self) -> None:
        self.user_readback = SimpleNamespace(get_value=self._readback)
        self.stop_calls = 0
        self.release = asyncio.Event()

    async def _readback(self) -> float:
        return 0.0

    async def _stubborn(self) -> None:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:  # a CA put's cleanup that itself waits
                continue

    def set(self, value: float, timeout: float):
        return self._stubborn()

    async def stop(self, success: bool = False) -> None:
        self.stop_calls += 1
        await self._stubborn()


@pytest.mark.timeout(30)
async def test_actuator_move_returns_when_a_vanished_ioc_never_answers(monkeypatch, caplog):
    import tomolock.service.feedback.actuator as A

    monkeypatch.setattr(A, "WIND_DOWN_S", 0.1)
    motor = _VanishedIocMotor()
    act = OphydAsyncActuator({"z": motor})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.WARNING), pytest.raises(MoveTimeoutError, match="z"):
        await act.move({"z": 0.5}, timeout=0.2)
    # timeout + wind-down of the cancelled move + wind-down of the stop, not forever.
    assert loop.time() - t0 < 5.0
    assert motor.stop_calls == 1
    assert "still pending" in caplog.text
    motor.release.set()  # let the stuck tasks end before the loop closes
    await asyncio.sleep(0.01)


async def test_actuator_input_validation():
    motors = await _motors()
    act = OphydAsyncActuator(motors)
    with pytest.raises(ValueError, match="unknown axes"):
        await act.move({"y": 1.0}, timeout=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        await act.move({"x": math.nan}, timeout=1.0)
    with pytest.raises(ValueError, match="timeout"):
        await act.move({"x": 1.0}, timeout=0)
    with pytest.raises(TypeError, match="set"):
        OphydAsyncActuator({"x": object()})
    with pytest.raises(ValueError, match="at least one"):
        OphydAsyncActuator({})


async def test_publish_only_actuator_never_moves():
    act = PublishOnlyActuator({"x": 1.0, "z": 2.0})
    await act.move({"x": 5.0}, timeout=1.0)
    assert await act.positions() == {"x": 1.0, "z": 2.0}
    assert act.ignored == [{"x": 5.0}]

    async def reader():
        return {"x": 3.0, "z": 4.0}

    assert await PublishOnlyActuator(reader=reader).positions() == {"x": 3.0, "z": 4.0}


def _prediction(x, z, t=100.2, std=0.01):
    return SimpleNamespace(
        mean_um={"x": x, "z": z}, std_um={"x": std, "z": std}, t=t, angle_deg=10.0
    )


class _Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


async def test_controller_apply_mode_moves_stage():
    motors = await _motors()
    act = OphydAsyncActuator(motors)
    ctl = FeedbackController(_il(), act, mode="apply", clock=_Clock())
    res = await ctl.step(_prediction(0.4, -0.2), scan_id="s", frame=0)
    assert res.decision.action == "move" and res.error == ""
    assert res.applied_um == pytest.approx({"x": -0.4, "z": 0.2})
    assert await act.positions() == pytest.approx({"x": -0.4, "z": 0.2})
    # A large jump is limited to one max_step per update from the current position.
    res = await ctl.step(_prediction(5.0, 0.2), scan_id="s", frame=1)
    assert res.applied_um == pytest.approx({"x": -1.4, "z": -0.2})
    assert "step_clipped" in res.decision.reasons


async def test_controller_publish_only_never_moves_and_publishes(caplog):
    motors = await _motors()
    act = OphydAsyncActuator(motors)
    async with SetpointPublisher(port=0) as pub:
        sub = await _sub(pub.endpoint)
        try:
            ctl = FeedbackController(_il(), act, pub, mode="publish-only", clock=_Clock())
            topic, body = await _recv_after_join(
                pub, sub, lambda: ctl.step(_prediction(0.4, -0.2), scan_id="s", frame=3)
            )
            assert topic == SETPOINT_TOPIC and json.loads(body)["mode"] == "publish-only"
            assert await act.positions() == {"x": 0.0, "z": 0.0}
            with caplog.at_level(logging.WARNING, logger="tomolock.service.feedback.loop"):
                res = await ctl.step(_prediction(0.4, -0.2, std=5.0), scan_id="s", frame=4)
            assert res.decision.action == "refuse" and res.published
            assert "uncertain" in caplog.text and "frame 4" in caplog.text
            topic, body = await sub.recv_multipart()
            while topic != DECISION_TOPIC:
                topic, body = await sub.recv_multipart()
            assert json.loads(body)["reasons"] == ["uncertain"]
        finally:
            sub.close()


async def test_controller_refusals_and_actuator_failure_disable():
    motors = await _motors()
    set_mock_put_proceeds(motors["z"].user_setpoint, False)
    il = _il()
    ctl = FeedbackController(
        il, OphydAsyncActuator(motors), mode="apply", clock=_Clock(), move_timeout_s=0.2
    )
    stale = await ctl.step(_prediction(0.4, 0.4), scan_id="s", frame=0, t_created=90.0)
    assert stale.decision.action == "refuse" and stale.decision.reasons == ("stale",)
    low = await ctl.step(_prediction(0.4, 0.4), scan_id="s", frame=0, confidence=0.1)
    assert low.decision.reasons == ("low_confidence",)
    lost = await ctl.step(_prediction(0.4, 0.4), scan_id="s", frame=0, interferometer_ok=False)
    assert lost.decision.action == "hold" and lost.applied_um == {}
    failed = await ctl.step(_prediction(0.4, 0.4), scan_id="s", frame=1)
    assert failed.decision.action == "move" and failed.applied_um == {}
    assert "timed out" in failed.error
    assert not il.enabled and "actuator error" in il.disable_reason
    after = await ctl.step(_prediction(0.4, 0.4), scan_id="s", frame=2)
    assert after.decision.reasons == ("disabled",)


async def test_controller_argument_checks():
    act = PublishOnlyActuator()
    with pytest.raises(ValueError, match="mode"):
        FeedbackController(_il(), act, mode="yolo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nominal_um"):
        FeedbackController(_il(), act, nominal_um={"x": 0.0})
    ctl = FeedbackController(_il(), act)
    with pytest.raises(ValueError, match="angle"):
        await ctl.step(SimpleNamespace(mean_um={}, std_um={}, t=0.0), scan_id="s", frame=0)


async def test_soft_limits_hold_in_apply_mode_over_many_steps():
    """Drive a runaway drift: the stage walks by max_step and stops at the soft limit."""
    motors = await _motors()
    act = OphydAsyncActuator(motors)
    il = _il(soft_limits={"x": AxisLimits(low=-3, high=3), "z": AxisLimits(low=-3, high=3)})
    ctl = FeedbackController(il, act, mode="apply", clock=_Clock())
    for frame in range(8):
        await ctl.step(_prediction(-50.0, 50.0), scan_id="s", frame=frame)
    assert await act.positions() == pytest.approx({"x": 3.0, "z": -3.0})
    await asyncio.sleep(0)
