"""Simulated detector stream: renders projections with the true drift and sends them on ZMQ.

The streamer asks a *state provider* for the beamline state at the exposure midpoint (rotation
angle, simulation time, fine-stage offset), renders the phantom with the shift
``SimulatedDrift.detector_shift_px(angle, t, stage_offset_um=offset)`` and sends it as a
:mod:`tomolock.service.wire` frame whose header ``truth`` carries that shift. A correction move of
the piezo therefore really changes what the next frame shows.

Message sequence of a scan (all on one socket, in order)::

    control scan_start  -> darks (kind "dark") -> flats (kind "flat") -> control dark_flat_done
    -> projections (one per trigger) -> control scan_end

Drop policy (documented in ``wire``): control messages are sent blocking (lossless) up to
``control_timeout_s``; frames are sent without blocking and dropped, counted in
:attr:`DetectorStreamer.dropped`, when the socket's send queue (``sndhwm`` messages) is full or no
consumer is connected (PUSH) -- a detector stream never stalls the beamline.

Frames are sent zero-copy; every image is a fresh array the streamer never touches again.
A DECTRIS Stream v2 (CBOR) encoding is not provided: ``cbor2`` is not a dependency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import zmq
import zmq.asyncio

from tomolock.devices.sim.drift import SimulatedDrift
from tomolock.devices.sim.scan import ScanSimulator
from tomolock.service.wire import ControlMessage, FrameHeader, encode_frame

__all__ = ["BeamState", "DetectorStreamer", "ManualBeamState", "true_shift_px"]

log = logging.getLogger(__name__)

SocketMode = Literal["push", "pub"]


@dataclass(frozen=True)
class BeamState:
    """Beamline state at one instant, as the simulation knows it exactly.

    Attributes
    ----------
    angle_deg : float
        Rotation angle, degrees.
    t_s : float
        Simulation time (seconds since the drift's time zero).
    stage_offset_um : tuple of float
        Fine piezo stage offset (x, y, z), micrometres, lab frame.
    timestamp : float
        Unix time of this state.
    drift_enabled : bool
        False: the sample sits at its nominal position (only the stage offset shows).
    """

    angle_deg: float
    t_s: float
    stage_offset_um: tuple[float, float, float] = (0.0, 0.0, 0.0)
    timestamp: float = 0.0
    drift_enabled: bool = True


def true_shift_px(drift: SimulatedDrift, state: BeamState) -> tuple[float, float]:
    """Shift ``(dy, dx)`` in pixels the detector sees for ``state``.

    With drift disabled only the stage offset's contribution remains (the mapping is linear
    in the offset, so it is the difference of two evaluations).
    """
    shift = np.asarray(
        drift.detector_shift_px(state.angle_deg, state.t_s, stage_offset_um=state.stage_offset_um),
        dtype=float,
    )
    if not state.drift_enabled:
        shift = shift - np.asarray(
            drift.detector_shift_px(state.angle_deg, state.t_s, stage_offset_um=(0.0, 0.0, 0.0)),
            dtype=float,
        )
    return float(shift[0]), float(shift[1])


@dataclass
class ManualBeamState:
    """A state provider without an IOC: angle and offset set by the caller, time from a clock.

    Call the instance to get a :class:`BeamState`.
    """

    angle_deg: float = 0.0
    stage_offset_um: tuple[float, float, float] = (0.0, 0.0, 0.0)
    drift_enabled: bool = True
    t0: float = field(default_factory=time.time)

    def __call__(self) -> BeamState:
        """Return the current state."""
        now = time.time()
        return BeamState(self.angle_deg, now - self.t0, tuple(self.stage_offset_um), now,
                         self.drift_enabled)


class DetectorStreamer:
    """Render and send simulated detector frames on a bound ZMQ socket.

    Parameters
    ----------
    simulator : ScanSimulator
        Renders projections, darks and flats.
    drift : SimulatedDrift
        The drift whose ``detector_shift_px`` gives the true shift (the same instance the
        IOC uses for its sensors).
    state : callable
        Returns the :class:`BeamState` at the moment it is called.
    address : str
        ZMQ bind address, loopback: ``"tcp://127.0.0.1:*"`` picks a free port.
    mode : {"push", "pub"}
        Socket type. PUSH (default) delivers each message to one PULL consumer.
    sndhwm : int
        Send high-water mark in messages; beyond it frames are dropped (counted).
    control_timeout_s : float
        How long a control message may wait for a consumer before it is given up (logged and
        counted in :attr:`control_failures`).
    seed : int
        Seed of the noise generator.
    context : zmq.asyncio.Context, optional
        Shared context; by default the process-wide instance.
    """

    def __init__(
        self,
        simulator: ScanSimulator,
        drift: SimulatedDrift,
        state: Callable[[], BeamState],
        *,
        address: str = "tcp://127.0.0.1:*",
        mode: SocketMode = "push",
        sndhwm: int = 64,
        control_timeout_s: float = 10.0,
        seed: int = 0,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        if mode not in ("push", "pub"):
            raise ValueError(f"mode must be 'push' or 'pub', got {mode!r}")
        if not address.startswith(("tcp://127.0.0.1:", "ipc://", "inproc://")):
            raise ValueError(f"address must be loopback tcp, ipc or inproc, got {address!r}")
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1, got {sndhwm}")
        self.simulator = simulator
        self.drift = drift
        self.state = state
        self.mode: SocketMode = mode
        self.control_timeout_s = float(control_timeout_s)
        self._rng = np.random.default_rng(seed)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH if mode == "push" else zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if address.startswith("tcp://") and address.endswith(":*"):
            port = self._sock.bind_to_random_port(address[:-2])
            self.address = f"{address[:-2]}:{port}"
        else:
            self._sock.bind(address)
            self.address = address
        self._lock = asyncio.Lock()  # one message sequence at a time on the socket
        self.scan_id = "live"
        self._counters = {"projection": 0, "dark": 0, "flat": 0}
        #: Frames sent since creation, frames dropped, control messages not delivered.
        self.sent = 0
        self.sent_projections = 0
        self.dropped = 0
        self.control_failures = 0

    # ------------------------------------------------------------------ sending
    async def _send_control(self, event: str, payload: dict | None = None) -> None:
        msg = ControlMessage(event=event, scan_id=self.scan_id, timestamp=time.time(),
                             payload=payload or {})
        try:
            await asyncio.wait_for(self._sock.send(msg.to_json()), self.control_timeout_s)
        except TimeoutError:
            self.control_failures += 1
            log.error("control message %s not delivered within %.1f s (no consumer?)",
                      event, self.control_timeout_s)

    def _send_frame(self, header: FrameHeader, image: np.ndarray) -> bool:
        # zero copy: `image` is a fresh array that nothing mutates afterwards. The asyncio
        # socket reports a non-blocking failure through the returned future, not by raising.
        fut = self._sock.send_multipart(encode_frame(header, image), flags=zmq.NOBLOCK,
                                        copy=False)
        exc = fut.exception() if fut.done() else None
        if isinstance(exc, zmq.Again):
            self.dropped += 1
            return False
        if exc is not None:
            raise exc
        self.sent += 1
        return True

    def _next_index(self, kind: str) -> int:
        index = self._counters[kind]
        self._counters[kind] = index + 1
        return index

    # ---------------------------------------------------------------- scan flow
    async def start_scan(self, scan_id: str, payload: dict | None = None) -> None:
        """Send ``scan_start``, the darks and flats, then ``dark_flat_done``.

        Parameters
        ----------
        scan_id : str
            Identifier used in every following message.
        payload : dict, optional
            Extra ``scan_start`` payload (e.g. ``num_projections``); shape, pixel size and
            dtype are added.
        """
        if not scan_id or not isinstance(scan_id, str):
            raise ValueError(f"scan_id must be a non-empty string, got {scan_id!r}")
        async with self._lock:
            self.scan_id = scan_id
            self._counters = dict.fromkeys(self._counters, 0)
            info = {
                "shape": list(self.simulator.config.shape),
                "pixel_size_um": float(self.drift.params.pixel_size_um),
                "dtype": "uint16",
                **(payload or {}),
            }
            await self._send_control("scan_start", info)
            for frames in (self.simulator.darks(), self.simulator.flats()):
                await self._send_sim_frames(frames)
            await self._send_control("dark_flat_done")

    async def _send_sim_frames(self, frames: Iterable) -> None:
        iterator = iter(frames)
        while True:
            # darks/flats are rendered lazily by the simulator: off the event loop
            sim = await asyncio.to_thread(next, iterator, None)
            if sim is None:
                return
            image = np.asarray(sim.image)
            header = FrameHeader(
                scan_id=self.scan_id, frame=self._next_index(sim.kind), kind=sim.kind,
                angle_deg=float("nan"), timestamp=time.time(), dtype=image.dtype.name,
                shape=(image.shape[0], image.shape[1]), exposure_s=0.0,
            )
            self._send_frame(header, image)

    async def end_scan(self, payload: dict | None = None) -> None:
        """Send ``scan_end`` (lossless); frames after it belong to scan ``"live"``."""
        async with self._lock:
            sent = {"projections": self._counters["projection"], **(payload or {})}
            await self._send_control("scan_end", sent)
            self.scan_id = "live"
            self._counters = dict.fromkeys(self._counters, 0)

    async def acquire(self, exposure_s: float) -> FrameHeader:
        """Expose one projection and send it.

        The state is sampled at the exposure midpoint; rendering overlaps the second half
        of the exposure. Returns the header that was sent (or dropped, see :attr:`dropped`).
        """
        if not np.isfinite(exposure_s) or exposure_s < 0:
            raise ValueError(f"exposure_s must be >= 0, got {exposure_s!r}")
        async with self._lock:
            await asyncio.sleep(exposure_s / 2)
            state = self.state()
            dy, dx = true_shift_px(self.drift, state)
            # per-frame beam intensity fluctuation, as the scan simulator models it
            beam = max(0.0, 1.0 + self.simulator.config.beam_fluctuation
                       * float(self._rng.standard_normal()))
            render = asyncio.to_thread(
                self.simulator.render, state.angle_deg, (dy, dx), t_s=state.t_s, rng=self._rng,
                beam_factor=beam,
            )
            image, _ = await asyncio.gather(render, asyncio.sleep(exposure_s / 2))
            image = np.asarray(image)
            header = FrameHeader(
                scan_id=self.scan_id, frame=self._next_index("projection"), kind="projection",
                angle_deg=float(state.angle_deg), timestamp=state.timestamp or time.time(),
                dtype=image.dtype.name, shape=(image.shape[0], image.shape[1]),
                exposure_s=float(exposure_s),
                truth={"dy_px": dy, "dx_px": dx,
                       "stage_x_um": float(state.stage_offset_um[0]),
                       "stage_y_um": float(state.stage_offset_um[1]),
                       "stage_z_um": float(state.stage_offset_um[2]),
                       "t_s": float(state.t_s)},
            )
            if self._send_frame(header, image):
                self.sent_projections += 1
            return header

    def close(self) -> None:
        """Close the socket (pending frames are discarded: LINGER 0)."""
        self._sock.close(linger=0)
