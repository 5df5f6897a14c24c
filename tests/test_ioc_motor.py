"""Simulated motor records driven through ophyd-async's Motor over Channel Access."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aioca
import pytest
from ophyd_async.core import observe_value, wait_for_value
from ophyd_async.epics.motor import MotorLimitsError

if TYPE_CHECKING:
    from sim_fixtures import SimDevices

pytest_plugins = ["sim_fixtures"]


async def test_rotation_and_piezo_move_and_complete_at_target(sim_devices: SimDevices):
    stage = sim_devices.stage
    seen: list[float] = []
    status = stage.rotation.set(30.0)
    status.watch(lambda current, **_: seen.append(current))
    await status
    # put completion means the move has ended: readback at target, done flag set
    assert await stage.rotation.user_readback.get_value() == pytest.approx(30.0, abs=1e-9)
    assert await stage.rotation.motor_done_move.get_value() == 1
    assert any(0.0 < v < 30.0 for v in seen[1:]), f"readback never stepped: {seen}"
    await asyncio.gather(stage.x.set(1.25), stage.z.set(-0.5))
    assert await stage.x.user_readback.get_value() == pytest.approx(1.25, abs=1e-9)
    assert await stage.z.user_readback.get_value() == pytest.approx(-0.5, abs=1e-9)
    await asyncio.gather(stage.rotation.set(0.0), stage.x.set(0.0), stage.z.set(0.0))


async def test_units_limits_and_velocity_are_published(sim_devices: SimDevices):
    stage = sim_devices.stage
    assert await stage.rotation.motor_egu.get_value() == "deg"
    assert await stage.x.motor_egu.get_value() == "um"
    assert await stage.x.high_limit_travel.get_value() == pytest.approx(20.0)
    assert await stage.x.low_limit_travel.get_value() == pytest.approx(-20.0)
    assert await stage.rotation.velocity.get_value() == pytest.approx(360.0)
    prefix = sim_devices.beamline.prefixes.stage
    ctrl = await aioca.caget(prefix + "X.VAL", format=aioca.FORMAT_CTRL)
    assert (ctrl.lower_ctrl_limit, ctrl.upper_ctrl_limit) == (-20.0, 20.0)
    assert ctrl.units == "um"


async def test_ophyd_async_refuses_targets_beyond_soft_limits(sim_devices: SimDevices):
    with pytest.raises(MotorLimitsError):
        await sim_devices.stage.y.set(25.0)


async def test_ioc_refuses_out_of_limit_put_with_lvio(sim_devices: SimDevices):
    stage = sim_devices.stage
    await stage.y.set(0.5)
    prefix = sim_devices.beamline.prefixes.stage
    # a raw put bypasses ophyd-async's client-side check: the record itself must refuse it
    await aioca.caput(prefix + "Y.VAL", 21.0, wait=True, timeout=5)
    assert await aioca.caget(prefix + "Y.LVIO") == 1
    assert await stage.y.user_readback.get_value() == pytest.approx(0.5, abs=1e-9)
    assert await aioca.caget(prefix + "Y.VAL") == pytest.approx(0.5, abs=1e-9)
    # the next valid move clears LVIO
    await stage.y.set(0.0)
    assert await aioca.caget(prefix + "Y.LVIO") == 0


async def test_stop_ends_the_move_where_it_is(sim_devices: SimDevices):
    rot = sim_devices.stage.rotation
    await rot.set(0.0)
    status = rot.set(300.0)  # 0.83 s at 360 deg/s
    async for value in _readbacks(rot):
        if value > 20.0:
            break
    await rot.stop(success=True)
    await asyncio.wait_for(status, 5)
    await wait_for_value(rot.motor_done_move, 1, timeout=5)
    position = await rot.user_readback.get_value()
    assert 20.0 < position < 300.0
    # the record sets VAL to where it stopped, so a later move starts from there
    assert await rot.user_setpoint.get_value() == pytest.approx(position, abs=1e-9)
    await rot.set(0.0)


async def _readbacks(motor):
    async for value in observe_value(motor.user_readback, timeout=5):
        yield value


async def test_set_mode_redefines_position_without_moving(sim_devices: SimDevices):
    z = sim_devices.stage.z
    await z.set(1.0)
    await z.set_use_switch.set("Set")
    try:
        await z.user_setpoint.set(0.0)
        assert await z.user_readback.get_value() == pytest.approx(0.0, abs=1e-9)
        assert await z.offset.get_value() == pytest.approx(-1.0, abs=1e-9)
        await z.user_setpoint.set(1.0)  # back to zero offset
    finally:
        await z.set_use_switch.set("Use")
    assert await z.offset.get_value() == pytest.approx(0.0, abs=1e-9)
    await z.set(0.0)


async def test_bare_record_name_and_retarget_while_moving(sim_devices: SimDevices):
    rot = sim_devices.stage.rotation
    prefix = sim_devices.beamline.prefixes.stage
    await rot.set(0.0)
    first = asyncio.ensure_future(aioca.caput(prefix + "ROT.VAL", 300.0, wait=True, timeout=5))
    await wait_for_value(rot.motor_done_move, 0, timeout=2)
    # a new target on the bare record name redirects the running move; both puts complete
    # when the motor has stopped at the final target
    await aioca.caput(prefix + "ROT", 40.0, wait=True, timeout=5)
    await asyncio.wait_for(first, 5)
    assert await rot.user_readback.get_value() == pytest.approx(40.0, abs=1e-9)
    assert await rot.user_setpoint.get_value() == pytest.approx(40.0, abs=1e-9)
    assert await rot.motor_done_move.get_value() == 1
    await rot.set(0.0)


async def test_invalid_velocity_put_fails_and_keeps_the_old_value(sim_devices: SimDevices):
    x = sim_devices.stage.x
    before = await x.velocity.get_value()
    velo = sim_devices.beamline.prefixes.stage + "X.VELO"
    with pytest.raises(aioca.CANothing, match="write request failed"):
        await aioca.caput(velo, -1.0, wait=True, timeout=3)
    assert await aioca.caget(velo) == before
