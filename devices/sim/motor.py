"""Simulated EPICS motor record served by caproto, faithful enough for ophyd-async's ``Motor``.

caproto's bundled fake motor completes a put at once and leaves the control limits at zero;
ophyd-async's :class:`~ophyd_async.epics.motor.Motor` then reports a finished move before it
started and skips its limit check. :class:`SimMotor` behaves like the real record:

* a put to ``.VAL`` (or the bare record name) publishes the new target at once and completes
  (put callback) only when the move has ended, also when it ended by ``.STOP``;
* ``.RBV`` steps towards the target at ``.VELO`` (EGU/s) at ``tick_hz``, constant velocity
  (``.ACCL`` is published for clients' timeout arithmetic but not simulated);
* ``.DMOV``/``.MOVN`` are 1/0 at rest and 0/1 while moving;
* a target outside ``[.LLM, .HLM]`` is refused: ``.LVIO`` becomes 1, ``.VAL`` snaps back to the
  previous target and nothing moves (dial limits both 0 mean "no limits", as in EPICS);
* ``.STOP`` = 1 ends a move where it is and sets ``.VAL`` to the position reached;
* units (``.EGU``), precision and control limits are published as CA metadata of ``.VAL``
  and ``.RBV``;
* user = dial + ``.OFF`` (``.DIR`` is always "Pos"); ``.SET`` = "Set" redefines the position
  without moving (``.FOFF`` "Variable" changes ``.OFF``, "Frozen" changes the dial position).

Not simulated: acceleration profile, backlash, hardware limit switches (``.HLS``/``.LLS`` stay
0), ``.SPMG``, tweak fields, encoder.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty
from caproto.server.server import PvpropertyDouble

__all__ = ["SimMotor"]


class _MotorTargetField(PvpropertyDouble):
    """``.VAL``-like field: limit handling by the motor, put completes when the move ends."""

    async def verify_value(self, value: Any) -> Any:
        # Bypass caproto's own control-limit check (it would reject the put with an error):
        # the motor record reports a limit violation through .LVIO instead.
        return await self.putter(self, value)

    async def write(self, value: Any, **kwargs: Any) -> None:
        await super().write(value, **kwargs)
        # Only client puts wait; internal writes pass verify_value=False and never move.
        if kwargs.get("verify_value", True):
            await self.group.wait_until_done()


def _preset(prop: Any, value: Any, **metadata: Any) -> None:
    """Set a field's value and metadata before the server runs (no subscribers yet)."""
    prop._data["value"] = value
    prop._data.update(metadata)


class SimMotor(PVGroup):
    """One simulated motor record, PV names ``<prefix>.VAL``, ``<prefix>.RBV``, ...

    Parameters
    ----------
    prefix : str
        Record name, e.g. ``"SIM:STAGE:ROT"``.
    egu : str
        Engineering units (``"deg"``, ``"um"``).
    low_limit, high_limit : float
        Soft travel limits in user units (``.LLM``/``.HLM``).
    velocity : float
        ``.VELO`` in EGU/s (also the default ``.VMAX`` times 0.5).
    precision : int
        Display precision (``.PREC``).
    resolution : float
        ``.MRES`` in EGU/step; only published.
    tick_hz : float
        Readback update rate while moving.
    description : str
        ``.DESC``.
    initial : float
        Initial user position.
    **kwargs
        Passed to :class:`caproto.server.PVGroup`.
    """

    val = pvproperty(name=".VAL", value=0.0, dtype=_MotorTargetField, doc="Target (user EGU)")
    base = pvproperty(name="", value=0.0, dtype=_MotorTargetField, doc="Record value = .VAL")
    rbv = pvproperty(name=".RBV", value=0.0, read_only=True, doc="User readback")
    drbv = pvproperty(name=".DRBV", value=0.0, read_only=True, doc="Dial readback")
    dmov = pvproperty(name=".DMOV", value=1, read_only=True, doc="Done moving")
    movn = pvproperty(name=".MOVN", value=0, read_only=True, doc="Moving")
    stop = pvproperty(name=".STOP", value=0, doc="Write 1 to stop")
    lvio = pvproperty(name=".LVIO", value=0, read_only=True, doc="Limit violation")
    hls = pvproperty(name=".HLS", value=0, read_only=True, doc="High limit switch")
    lls = pvproperty(name=".LLS", value=0, read_only=True, doc="Low limit switch")
    velo = pvproperty(name=".VELO", value=1.0, doc="Velocity (EGU/s)")
    vmax = pvproperty(name=".VMAX", value=2.0, doc="Max velocity (EGU/s)")
    vbas = pvproperty(name=".VBAS", value=0.0, doc="Base velocity (EGU/s)")
    accl = pvproperty(name=".ACCL", value=0.1, doc="Seconds to velocity")
    hlm = pvproperty(name=".HLM", value=0.0, doc="User high limit")
    llm = pvproperty(name=".LLM", value=0.0, doc="User low limit")
    dhlm = pvproperty(name=".DHLM", value=0.0, doc="Dial high limit")
    dllm = pvproperty(name=".DLLM", value=0.0, doc="Dial low limit")
    off = pvproperty(name=".OFF", value=0.0, doc="User offset (EGU)")
    foff = pvproperty(
        name=".FOFF", value="Variable", dtype=ChannelType.ENUM,
        enum_strings=("Variable", "Frozen"), doc="Offset-freeze switch",
    )
    set_mode = pvproperty(
        name=".SET", value="Use", dtype=ChannelType.ENUM,
        enum_strings=("Use", "Set"), doc="Set/Use switch",
    )
    egu = pvproperty(name=".EGU", value="", dtype=ChannelType.STRING, doc="Engineering units")
    prec = pvproperty(name=".PREC", value=3, doc="Display precision")
    mres = pvproperty(name=".MRES", value=1e-4, doc="Motor step size (EGU)")
    eres = pvproperty(name=".ERES", value=1e-4, doc="Encoder step size (EGU)")
    srev = pvproperty(name=".SREV", value=200, doc="Steps per revolution")
    urev = pvproperty(name=".UREV", value=0.02, doc="EGU per revolution")
    rdbd = pvproperty(name=".RDBD", value=1e-4, doc="Retry deadband (EGU)")
    out = pvproperty(name=".OUT", value="sim", dtype=ChannelType.STRING, read_only=True,
                     doc="Output link")
    desc = pvproperty(name=".DESC", value="", dtype=ChannelType.STRING, doc="Description")

    def __init__(
        self,
        prefix: str,
        *,
        egu: str,
        low_limit: float,
        high_limit: float,
        velocity: float,
        precision: int = 4,
        resolution: float = 1e-4,
        tick_hz: float = 100.0,
        description: str = "",
        initial: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        if not math.isfinite(velocity) or velocity <= 0:
            raise ValueError(f"velocity must be a positive number, got {velocity!r}")
        if not low_limit <= initial <= high_limit:
            raise ValueError(f"initial {initial} outside limits [{low_limit}, {high_limit}]")
        if tick_hz <= 0:
            raise ValueError(f"tick_hz must be positive, got {tick_hz!r}")
        self._tick_s = 1.0 / tick_hz
        self._dial = float(initial)  # true position, dial coordinates
        self._target_dial = self._dial
        self._offset = 0.0
        self._stop_requested = False
        self._motion: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None  # created lazily inside the server's loop

        limits = {"lower_ctrl_limit": low_limit, "upper_ctrl_limit": high_limit,
                  "lower_disp_limit": low_limit, "upper_disp_limit": high_limit}
        for prop in (self.val, self.base):
            _preset(prop, initial, units=egu, precision=precision, **limits)
        for prop in (self.rbv, self.drbv):
            _preset(prop, initial, units=egu, precision=precision,
                    lower_disp_limit=low_limit, upper_disp_limit=high_limit)
        _preset(self.egu, egu)
        _preset(self.prec, precision)
        _preset(self.velo, velocity, units=f"{egu}/s")
        _preset(self.vmax, 2.0 * velocity, units=f"{egu}/s")
        _preset(self.hlm, high_limit, units=egu)
        _preset(self.llm, low_limit, units=egu)
        _preset(self.dhlm, high_limit, units=egu)
        _preset(self.dllm, low_limit, units=egu)
        _preset(self.mres, resolution)
        _preset(self.eres, resolution)
        _preset(self.rdbd, resolution)
        _preset(self.desc, description[:39])

    # ----------------------------------------------------------------- state for the IOC
    @property
    def position(self) -> float:
        """Current true user position (EGU), exact, between readback ticks too."""
        return self._dial + self._offset

    @property
    def moving(self) -> bool:
        """Whether a move is in progress."""
        return self._motion is not None and not self._motion.done()

    def _idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    async def wait_until_done(self) -> None:
        """Return when no move is in progress (put completion of ``.VAL``)."""
        await self._idle_event().wait()

    # ----------------------------------------------------------------------- moves
    def _limits_active(self) -> bool:
        return not (self.dllm.value == 0 and self.dhlm.value == 0)

    async def _request(self, target: float, source: Any) -> float:
        """Handle a put of ``target`` (user units) to ``source``; returns the value it keeps."""
        target = float(target)
        previous = self._target_dial + self._offset
        if not math.isfinite(target):
            raise ValueError(f"target must be finite, got {target!r}")
        if self.set_mode.value == "Set":
            if self.foff.value == "Variable":
                await self._set_offset(target - self._dial)
            else:
                self._dial = self._target_dial = target - self._offset
                await self._publish_position()
            await self._mirror_target(target, skip=source)
            return target
        if self._limits_active() and not self.llm.value <= target <= self.hlm.value:
            await self.lvio.write(1)
            await self._mirror_target(previous, skip=source)
            return previous
        if self.lvio.value:
            await self.lvio.write(0)
        self._target_dial = target - self._offset
        await self._mirror_target(target, skip=source)
        if not self.moving and self._target_dial != self._dial:
            self._stop_requested = False
            self._idle_event().clear()
            await self.movn.write(1)
            await self.dmov.write(0)
            self._motion = asyncio.create_task(self._move())
        return target

    async def _mirror_target(self, target: float, skip: Any = None) -> None:
        # .VAL and the bare record name are the same field of a real record; the field being
        # written (``skip``) gets its value from caproto when the putter returns.
        for prop in (self.val, self.base):
            if prop is not skip and prop.value != target:
                await prop.write(target, verify_value=False)

    async def _move(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while not self._stop_requested:
                # short moves (feedback corrections) end as soon as they physically would,
                # not at the next readback tick
                velo = max(float(self.velo.value), 1e-12)
                await asyncio.sleep(min(self._tick_s, abs(self._target_dial - self._dial) / velo))
                now = loop.time()
                step = max(float(self.velo.value), 1e-12) * (now - last)
                last = now
                diff = self._target_dial - self._dial
                if abs(diff) <= step:
                    self._dial = self._target_dial
                    break
                self._dial += math.copysign(step, diff)
                await self._publish_position()
        finally:
            if self._stop_requested:
                self._target_dial = self._dial
                self._stop_requested = False
            await self._publish_position()
            await self._mirror_target(self._target_dial + self._offset)
            await self.movn.write(0)
            await self.dmov.write(1)
            self._idle_event().set()

    async def _publish_position(self) -> None:
        await self.rbv.write(self._dial + self._offset, verify_value=False)
        await self.drbv.write(self._dial, verify_value=False)

    async def _set_offset(self, offset: float) -> None:
        """Change ``.OFF`` keeping dial limits, as the record does."""
        self._offset = float(offset)
        await self.off.write(self._offset, verify_value=False)
        await self._user_limits_from_dial()
        await self._publish_position()

    async def _user_limits_from_dial(self) -> None:
        lo, hi = self.dllm.value + self._offset, self.dhlm.value + self._offset
        await self.llm.write(lo, verify_value=False)
        await self.hlm.write(hi, verify_value=False)
        await self._publish_limits(lo, hi)

    async def _publish_limits(self, lo: float, hi: float) -> None:
        for prop in (self.val, self.base):
            await prop.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi,
                                      lower_disp_limit=lo, upper_disp_limit=hi)

    # -------------------------------------------------------------------- putters
    @val.putter
    async def val(self, instance: Any, value: float) -> float:
        """Move to a new target (put completes when the move ends)."""
        return await self._request(value, instance)

    @base.putter
    async def base(self, instance: Any, value: float) -> float:
        """Move like a put to ``.VAL``."""
        return await self._request(value, instance)

    @stop.putter
    async def stop(self, instance: Any, value: int) -> int:
        """Stop a move where it is."""
        if value and self.moving:
            self._stop_requested = True
        return 0  # the record clears .STOP after acting on it

    @velo.putter
    async def velo(self, instance: Any, value: float) -> float:
        """Set the velocity, within (0, VMAX]."""
        if not math.isfinite(value) or value <= 0 or value > self.vmax.value:
            raise ValueError(f"VELO must be in (0, VMAX={self.vmax.value}], got {value}")
        return value

    @off.putter
    async def off(self, instance: Any, value: float) -> float:
        """Change the user offset; user readback and limits follow."""
        self._offset = float(value)
        await self._user_limits_from_dial()
        await self._publish_position()
        await self._mirror_target(self._target_dial + self._offset)
        return value

    @hlm.putter
    async def hlm(self, instance: Any, value: float) -> float:
        """Set the user high limit (dial limit follows)."""
        await self.dhlm.write(value - self._offset, verify_value=False)
        await self._publish_limits(self.llm.value, value)
        return value

    @llm.putter
    async def llm(self, instance: Any, value: float) -> float:
        """Set the user low limit (dial limit follows)."""
        await self.dllm.write(value - self._offset, verify_value=False)
        await self._publish_limits(value, self.hlm.value)
        return value

    @dhlm.putter
    async def dhlm(self, instance: Any, value: float) -> float:
        """Set the dial high limit (user limit follows)."""
        await self.hlm.write(value + self._offset, verify_value=False)
        await self._publish_limits(self.llm.value, value + self._offset)
        return value

    @dllm.putter
    async def dllm(self, instance: Any, value: float) -> float:
        """Set the dial low limit (user limit follows)."""
        await self.llm.write(value + self._offset, verify_value=False)
        await self._publish_limits(value + self._offset, self.hlm.value)
        return value
