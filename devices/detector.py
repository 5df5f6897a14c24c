"""Detector whose frames travel on a ZMQ stream; its control PVs (ophyd-async)."""

from __future__ import annotations

from ophyd_async.core import AsyncStatus, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw

from tomolock.service.wire import SCAN_ROLES

__all__ = ["DetectorStream"]


class DetectorStream(StandardReadable):
    """Control of a streaming detector; the pixels themselves arrive on ZMQ, not over CA.

    PVs (``prefix`` e.g. ``"SIM:DET:"``):

    ========================  ==========================================================
    ``ZMQ_ADDR`` (str, RO)    address to connect to, e.g. ``tcp://127.0.0.1:40123``
    ``FORMAT`` (str, RO)      message format, ``tomolock-frame-1`` (see ``service.wire``)
    ``SOCKET`` (str, RO)      ``PUSH`` (connect a PULL) or ``PUB`` (connect a SUB)
    ``EXPOSURE`` (s)          exposure time
    ``ACQUIRE_PERIOD`` (s)    free-running frame period
    ``NUM_IMAGES``            free-running frame count, 0 = until stopped
    ``ACQUIRE``               1 starts free running (put returns at once), 0 stops
    ``TRIGGER``               put 1: one frame; the put completes when it has been sent
    ``FRAME_COUNTER`` (RO)    projections sent
    ``DROPPED`` (RO)          frames dropped by the sender (no consumer / queue full)
    ``SCAN_ID`` (str)         id used by the next ``SCAN_START``
    ``NUM_PROJ``              projections announced in ``scan_start``
    ``SCAN_ROLE`` (str)       ``measurement``, ``reference`` or ``check`` (in ``scan_start``)
    ``ANGLE_START`` (deg)     planned first angle; with ``ANGLE_STEP`` != 0 the planned
    ``ANGLE_STEP`` (deg)      angles are announced (the service pre-positions the stage)
    ``SCAN_START``            put 1: ``scan_start``, darks, flats, ``dark_flat_done``
    ``SCAN_END``              put 1: ``scan_end``
    ``ROWS``/``COLS`` (RO)    frame shape; ``PIXEL_SIZE`` (RO) in micrometres
    ========================  ==========================================================

    Parameters
    ----------
    prefix : str
        PV prefix.
    name : str
        Device name.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.zmq_address = epics_signal_r(str, prefix + "ZMQ_ADDR")
            self.data_format = epics_signal_r(str, prefix + "FORMAT")
            self.socket_type = epics_signal_r(str, prefix + "SOCKET")
            self.exposure_time = epics_signal_rw(float, prefix + "EXPOSURE")
            self.acquire_period = epics_signal_rw(float, prefix + "ACQUIRE_PERIOD")
            self.rows = epics_signal_r(int, prefix + "ROWS")
            self.cols = epics_signal_r(int, prefix + "COLS")
            self.pixel_size_um = epics_signal_r(float, prefix + "PIXEL_SIZE")
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.frame_counter = epics_signal_r(int, prefix + "FRAME_COUNTER")
        with self.add_children_as_readables():
            self.dropped = epics_signal_r(int, prefix + "DROPPED")
        self.num_images = epics_signal_rw(int, prefix + "NUM_IMAGES")
        self.acquire = epics_signal_rw(int, prefix + "ACQUIRE", wait=False)
        self.trigger_frame = epics_signal_rw(int, prefix + "TRIGGER")
        self.scan_id = epics_signal_rw(str, prefix + "SCAN_ID")
        self.num_projections = epics_signal_rw(int, prefix + "NUM_PROJ")
        self.scan_role = epics_signal_rw(str, prefix + "SCAN_ROLE")
        self.angle_start = epics_signal_rw(float, prefix + "ANGLE_START")
        self.angle_step = epics_signal_rw(float, prefix + "ANGLE_STEP")
        self.scan_start = epics_signal_rw(int, prefix + "SCAN_START")
        self.scan_end = epics_signal_rw(int, prefix + "SCAN_END")
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Acquire one frame; done when the frame has been sent on the stream."""
        await self.trigger_frame.set(1)

    async def begin_scan(
        self,
        scan_id: str,
        num_projections: int = 0,
        *,
        role: str = "measurement",
        angle_start: float = 0.0,
        angle_step: float = 0.0,
    ) -> None:
        """Announce a scan: sends ``scan_start``, the darks and flats; returns after them.

        ``role="reference"`` makes the service store the scan's projections as references,
        ``role="check"`` makes it measure without moving the stage (``drift_check`` plan);
        a non-zero ``angle_step`` announces the planned angles.
        """
        if not scan_id or len(scan_id) > 39:
            raise ValueError(f"scan_id must have 1..39 characters, got {scan_id!r}")
        if num_projections < 0:
            raise ValueError(f"num_projections must be >= 0, got {num_projections}")
        if role not in SCAN_ROLES:
            raise ValueError(f"role must be one of {SCAN_ROLES}, got {role!r}")
        await self.scan_id.set(scan_id)
        await self.num_projections.set(num_projections)
        await self.scan_role.set(role)
        await self.angle_start.set(float(angle_start))
        await self.angle_step.set(float(angle_step))
        await self.scan_start.set(1)

    async def finish_scan(self) -> None:
        """Send ``scan_end``."""
        await self.scan_end.set(1)
