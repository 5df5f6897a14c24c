"""EPICS sensor feeds of the live service (ophyd-async devices -> the drift model).

:class:`EpicsFeeds` connects the beamline's devices by their configured PV prefixes and streams:

* interferometer samples (CA monitors, e.g. 100 Hz) -> ``feed_interferometer``; no sample
  for ``stale_after_s`` or its valid flag down -> signal lost (interlocks may hold the loop);
* microscope tracking samples -> ``feed_microscope``;
* rotation readback -> the current angle; piezo readbacks -> the stage-position history, so
  every reading and frame is corrected for the offset the stage really had.

It also builds the stage actuator for ``apply`` mode (:class:`OphydAsyncActuator` over the piezo
motors). A device that cannot connect is reported, not fatal, except the stage in ``apply``
mode. Set the EPICS client environment (``EPICS_CA_ADDR_LIST`` ...) before importing this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from tomolock.devices import LaserInterferometer, SampleStage, VisibleLightMicroscope
from tomolock.service.config import EpicsSettings
from tomolock.service.feedback import OphydAsyncActuator
from tomolock.service.tasks import wind_down

log = logging.getLogger(__name__)

#: Seconds :meth:`EpicsFeeds.stop` waits for its cancelled tasks.
STOP_TIMEOUT_S = 5.0


class EpicsFeeds:
    """Devices of one beamline, streaming into a service.

    Parameters
    ----------
    service : DriftCorrectionService
        Receives the readings.
    settings : EpicsSettings
        PV prefixes and connection timeout.
    axes : tuple of str
        Piezo axes the actuator may move.
    stale_after_s : float
        Interferometer silence after which its signal counts as lost.
    """

    def __init__(
        self,
        service: Any,
        settings: EpicsSettings,
        *,
        axes: tuple[str, ...] = ("x", "z"),
        stale_after_s: float = 0.5,
    ) -> None:
        self.service = service
        self.settings = settings
        self.axes = axes
        self.stale_after_s = stale_after_s
        self.stage = SampleStage(settings.stage_prefix, name="stage")
        self.interferometer = LaserInterferometer(settings.interferometer_prefix, name="ifm")
        self.microscope = VisibleLightMicroscope(settings.microscope_prefix, name="vlm")
        self.connected: dict[str, bool] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[tuple[Any, Any]] = []

    async def connect(self) -> dict[str, bool]:
        """Connect every device; returns which ones connected."""
        timeout = self.settings.connect_timeout_s

        async def one(name: str, device: Any) -> None:
            try:
                await device.connect(timeout=timeout)
                self.connected[name] = True
            except Exception as exc:
                log.error("%s (%s) did not connect: %s", name, device.name, exc)
                self.connected[name] = False

        await asyncio.gather(
            one("stage", self.stage),
            one("interferometer", self.interferometer),
            one("microscope", self.microscope),
        )
        return dict(self.connected)

    def actuator(self) -> OphydAsyncActuator:
        """Build the piezo actuator for ``apply`` mode (requires a connected stage)."""
        if not self.connected.get("stage"):
            raise RuntimeError(
                f"stage {self.settings.stage_prefix!r} is not connected: cannot apply corrections"
            )
        piezo = self.stage.piezo
        return OphydAsyncActuator({a: piezo[a] for a in self.axes})

    async def start(self) -> None:
        """Start streaming readings into the service."""
        if self.connected.get("stage"):
            self._subscribe_stage()
        loop = asyncio.get_running_loop()
        if self.connected.get("interferometer"):
            self._tasks.append(loop.create_task(self._interferometer(), name="feed-ifm"))
        if self.connected.get("microscope"):
            self._tasks.append(loop.create_task(self._microscope(), name="feed-vlm"))

    async def stop(self) -> None:
        """Stop streaming (devices stay connected)."""
        for signal, cb in self._subs:
            with contextlib.suppress(Exception):
                signal.clear_sub(cb)
        self._subs.clear()
        for task in self._tasks:
            task.cancel()
        # Bounded: a feed task stuck in a CA call to a vanished IOC must not hold the
        # service's shutdown.
        await wind_down(self._tasks, STOP_TIMEOUT_S, "feed task")
        self._tasks.clear()

    def _subscribe_stage(self) -> None:
        def on_rotation(reading: dict[str, Any]) -> None:
            for r in reading.values():
                self.service.feed_angle(float(r["value"]))

        rot = self.stage.rotation.user_readback
        rot.subscribe_reading(on_rotation)
        self._subs.append((rot, on_rotation))
        for axis, motor in self.stage.piezo.items():

            def on_piezo(reading: dict[str, Any], axis: str = axis) -> None:
                for r in reading.values():
                    self.service.feed_stage(float(r["timestamp"]), {axis: float(r["value"])})

            motor.user_readback.subscribe_reading(on_piezo)
            self._subs.append((motor.user_readback, on_piezo))

    async def _interferometer(self) -> None:
        while True:
            try:
                async for s in self.interferometer.samples(timeout=self.stale_after_s):
                    self.service.feed_interferometer(
                        s.timestamp, (s.x_nm, s.y_nm, s.z_nm), ok=s.valid
                    )
            except TimeoutError:
                log.warning("interferometer silent for %.2f s: signal lost", self.stale_after_s)
                self.service.interferometer_lost("no update")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("interferometer feed failed; retrying")
                self.service.interferometer_lost("feed error")
                await asyncio.sleep(1.0)

    async def _microscope(self) -> None:
        while True:
            try:
                async for s in self.microscope.samples(timeout=None):
                    self.service.feed_microscope(
                        s.timestamp, (s.x_um, s.y_um, s.z_um), quality=s.valid
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("microscope feed failed; retrying")
                await asyncio.sleep(1.0)
