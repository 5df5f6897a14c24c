"""caproto PV groups of the simulated beamline: sensors, detector control, simulation control.

Units: interferometer in nanometres, microscope in micrometres, times in seconds. The groups
hold PVs only; :class:`~tomolock.devices.sim.ioc.SimBeamlineIOC` drives them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from tomolock.devices.sim.streamer import DetectorStreamer
from tomolock.service.wire import SCAN_ROLES

__all__ = ["ControlGroup", "DetectorGroup", "InterferometerGroup", "MicroscopeGroup", "preset"]

log = logging.getLogger(__name__)


def preset(prop: Any, value: Any, **metadata: Any) -> None:
    """Set a field's value and metadata before the server runs."""
    prop._data["value"] = value
    prop._data.update(metadata)


def _ro(name: str, value: Any, doc: str, **kwargs: Any) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, doc=doc, **kwargs)


class InterferometerGroup(PVGroup):
    """Laser interferometer readbacks (nm) of the sample-holder runout."""

    x = _ro("X_NM", 0.0, "x runout [nm]", units="nm", precision=2)
    y = _ro("Y_NM", 0.0, "y runout [nm]", units="nm", precision=2)
    z = _ro("Z_NM", 0.0, "z runout [nm]", units="nm", precision=2)
    signal = _ro("SIGNAL", 0.0, "signal strength [%]", units="%", precision=1)
    valid = _ro("VALID", 0, "1 when the readings are valid")
    rate = _ro("RATE_HZ", 0.0, "update rate [Hz]", units="Hz", precision=1)


class MicroscopeGroup(PVGroup):
    """Visible-light microscope tracking of the sample position (um)."""

    x = _ro("X_UM", 0.0, "tracked x [um]", units="um", precision=4)
    y = _ro("Y_UM", 0.0, "tracked y [um]", units="um", precision=4)
    z = _ro("Z_UM", 0.0, "tracked z [um]", units="um", precision=4)
    quality = _ro("QUALITY", 0.0, "tracking quality [0..1]", precision=3)
    valid = _ro("VALID", 0, "1 when the tracking is valid")
    rate = _ro("RATE_HZ", 0.0, "update rate [Hz]", units="Hz", precision=1)


class ControlGroup(PVGroup):
    """Simulation controls: drift on/off, time zero, interferometer beam block, beam status."""

    drift_enable = pvproperty(name="DRIFT_ENABLE", value=1, doc="1: drift on, 0: sample at rest")
    t0 = pvproperty(name="T0", value=0.0, doc="drift time zero [Unix s]", units="s", precision=3)
    reset_t0 = pvproperty(name="RESET_T0", value=0, doc="put 1: time zero = now")
    sim_time = _ro("SIM_TIME", 0.0, "simulation time [s]", units="s", precision=3)
    ifm_block = pvproperty(name="IFM_BLOCK", value=0, doc="1: interferometer beam blocked")
    # A beamline's "beam available" summary (ring current and shutters): scans suspend on 0.
    beam = pvproperty(name="BEAM", value=1, doc="1: X-ray beam available, 0: beam lost")

    @beam.putter
    async def beam(self, instance: Any, value: int) -> int:
        """Accept 0 or 1 only."""
        if value not in (0, 1):
            raise ValueError(f"BEAM must be 0 or 1, got {value}")
        return value

    @reset_t0.putter
    async def reset_t0(self, instance: Any, value: int) -> int:
        """Set time zero to now."""
        if value:
            await self.t0.write(time.time())
        return 0

    @drift_enable.putter
    async def drift_enable(self, instance: Any, value: int) -> int:
        """Accept 0 or 1 only."""
        if value not in (0, 1):
            raise ValueError(f"DRIFT_ENABLE must be 0 or 1, got {value}")
        return value


class DetectorGroup(PVGroup):
    """Detector stream control; frames go out on ZMQ (see :mod:`.streamer`)."""

    zmq_addr = _ro("ZMQ_ADDR", "", "ZMQ address of the frame stream", dtype=ChannelType.STRING)
    fmt = _ro("FORMAT", "tomolock-frame-1", "stream format (wire htype)", dtype=ChannelType.STRING)
    socket_type = _ro("SOCKET", "PUSH", "ZMQ socket type (PUSH or PUB)", dtype=ChannelType.STRING)
    exposure = pvproperty(name="EXPOSURE", value=0.01, doc="exposure time [s]", units="s",
                          precision=4)
    period = pvproperty(name="ACQUIRE_PERIOD", value=0.05, doc="free-run period [s]", units="s",
                        precision=4)
    num_images = pvproperty(name="NUM_IMAGES", value=0, doc="free-run frames, 0 = until stopped")
    acquire = pvproperty(name="ACQUIRE", value=0, doc="1: free run (put returns at once)")
    trigger = pvproperty(name="TRIGGER", value=0, doc="put 1: one frame, completes when sent")
    counter = _ro("FRAME_COUNTER", 0, "projections sent since start")
    dropped = _ro("DROPPED", 0, "frames dropped (send queue full / no consumer)")
    scan_id = pvproperty(name="SCAN_ID", value="scan", dtype=ChannelType.STRING,
                         doc="scan id of next scan")
    num_proj = pvproperty(name="NUM_PROJ", value=0, doc="announced projections (scan_start)")
    scan_role = pvproperty(name="SCAN_ROLE", value="measurement", dtype=ChannelType.STRING,
                           doc="role of the next scan: measurement, reference or check")
    angle_start = pvproperty(name="ANGLE_START", value=0.0, units="deg", precision=4,
                             doc="planned first angle (scan_start payload)")
    angle_step = pvproperty(name="ANGLE_STEP", value=0.0, units="deg", precision=6,
                            doc="planned angle step, 0 = angles not announced")
    scan_start = pvproperty(name="SCAN_START", value=0, doc="put 1: scan_start, darks, flats")
    scan_end = pvproperty(name="SCAN_END", value=0, doc="put 1: scan_end")
    rows = _ro("ROWS", 0, "frame rows")
    cols = _ro("COLS", 0, "frame columns")
    pixel_size = _ro("PIXEL_SIZE", 0.0, "pixel size [um]", units="um", precision=4)

    streamer: DetectorStreamer | None = None
    _free_run: asyncio.Task[None] | None = None

    def _require_streamer(self) -> DetectorStreamer:
        if self.streamer is None:
            raise RuntimeError("detector streamer not started")
        return self.streamer

    async def _publish_counters(self) -> None:
        s = self._require_streamer()
        await self.counter.write(s.sent_projections)
        await self.dropped.write(s.dropped)

    async def acquire_one(self) -> None:
        """Expose and send one projection, then update the counters."""
        await self._require_streamer().acquire(float(self.exposure.value))
        await self._publish_counters()

    @exposure.putter
    async def exposure(self, instance: Any, value: float) -> float:
        """Accept exposures in [0, 60] s."""
        if not 0 <= value <= 60:
            raise ValueError(f"EXPOSURE must be in [0, 60] s, got {value}")
        return value

    @period.putter
    async def period(self, instance: Any, value: float) -> float:
        """Accept periods in [0, 3600] s."""
        if not 0 <= value <= 3600:
            raise ValueError(f"ACQUIRE_PERIOD must be in [0, 3600] s, got {value}")
        return value

    @trigger.putter
    async def trigger(self, instance: Any, value: int) -> int:
        """Acquire one frame; the put completes after it is sent."""
        if value:
            await self.acquire_one()
        return 0

    @acquire.putter
    async def acquire(self, instance: Any, value: int) -> int:
        """Start (1) or stop (0) free-running acquisition."""
        if value and (self._free_run is None or self._free_run.done()):
            self._free_run = asyncio.create_task(self._run_free())
        elif not value and self._free_run is not None:
            self._free_run.cancel()
        return 1 if value else 0

    async def _run_free(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        try:
            while self.num_images.value == 0 or n < self.num_images.value:
                start = loop.time()
                await self.acquire_one()
                n += 1
                await asyncio.sleep(max(0.0, float(self.period.value) - (loop.time() - start)))
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("free-running acquisition failed")
        finally:
            await self.acquire.write(0, verify_value=False)

    @scan_role.putter
    async def scan_role(self, instance: Any, value: str) -> str:
        """Accept the roles the service knows."""
        if value not in SCAN_ROLES:
            raise ValueError(f"SCAN_ROLE must be one of {SCAN_ROLES}, got {value!r}")
        return value

    @scan_start.putter
    async def scan_start(self, instance: Any, value: int) -> int:
        """Send scan_start, darks, flats, dark_flat_done; completes after them."""
        if value:
            n = int(self.num_proj.value)
            payload: dict[str, Any] = {"num_projections": n, "role": str(self.scan_role.value)}
            step = float(self.angle_step.value)
            if n > 0 and step != 0.0:
                # Planned angles let the service pre-position for the first exposure.
                start = float(self.angle_start.value)
                payload["angles_deg"] = [start + i * step for i in range(n)]
            await self._require_streamer().start_scan(str(self.scan_id.value), payload)
            await self._publish_counters()
        return 0

    @scan_end.putter
    async def scan_end(self, instance: Any, value: int) -> int:
        """Send scan_end."""
        if value:
            await self._require_streamer().end_scan()
        return 0
