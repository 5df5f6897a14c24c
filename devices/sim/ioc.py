"""One caproto IOC simulating the tomolock beamline on 127.0.0.1.

Run it as a subprocess (see :mod:`tomolock.devices.sim.beamline` for the managed way)::

    python -m tomolock.devices.sim.ioc --prefix SIM: --port 5064

PVs (``P`` = prefix), units in brackets:

* sample stage, motor records (fields of :class:`~tomolock.devices.sim.motor.SimMotor`):
  ``P STAGE:ROT`` rotation [deg], ``P STAGE:X``, ``P STAGE:Y``, ``P STAGE:Z`` fine piezo [um].
  The piezo sits below the rotation stage, in the lab frame: moving it by +m um moves the
  sample by +m um.
* laser interferometer, updated at ``--ifm-rate`` Hz (default 100):
  ``P IFM:X_NM``, ``P IFM:Y_NM``, ``P IFM:Z_NM`` [nm]: ``SimulatedDrift.interferometer_um`` at the
  stage's current angle and time, plus the piezo offset, plus Gaussian noise (``--ifm-noise-nm``,
  default 2 nm); ``P IFM:SIGNAL`` [%], ``P IFM:VALID`` (0/1), ``P IFM:RATE_HZ``.
* visible-light microscope, updated at ``--vlm-rate`` Hz (default 10):
  ``P VLM:X_UM``, ``P VLM:Y_UM``, ``P VLM:Z_UM`` [um] (``SimulatedDrift.microscope_um`` + piezo
  offset + noise, default 20 nm), ``P VLM:QUALITY`` [0..1], ``P VLM:VALID``, ``P VLM:RATE_HZ``.
* detector stream (:class:`~tomolock.devices.sim.streamer.DetectorStreamer` inside this
  process): ``P DET:ZMQ_ADDR``, ``P DET:FORMAT``, ``P DET:SOCKET`` (PUSH/PUB), ``P DET:EXPOSURE``
  [s], ``P DET:ACQUIRE_PERIOD`` [s], ``P DET:NUM_IMAGES`` (0 = until stopped), ``P DET:ACQUIRE``
  (1 = free run, put returns at once), ``P DET:TRIGGER`` (put 1: one projection, the put completes
  when it is sent), ``P DET:FRAME_COUNTER``, ``P DET:DROPPED``, ``P DET:SCAN_ID``,
  ``P DET:NUM_PROJ``, ``P DET:SCAN_START`` (put 1: scan_start + darks + flats, completes after
  them), ``P DET:SCAN_END`` (put 1: scan_end), ``P DET:ROWS``, ``P DET:COLS``,
  ``P DET:PIXEL_SIZE`` [um].
* simulation control: ``P CTRL:DRIFT_ENABLE`` (0/1), ``P CTRL:T0`` [Unix s, drift time zero],
  ``P CTRL:RESET_T0`` (put 1: time zero = now), ``P CTRL:SIM_TIME`` [s], ``P CTRL:IFM_BLOCK``
  (1: beam blocked, interferometer invalid), ``P CTRL:BEAM`` (1: X-ray beam available, 0: beam
  lost; a status only, for scan suspenders: frames are still rendered).

When serving, the IOC prints one line ``TOMOLOCK_SIM_READY {json}`` (ports, ZMQ address) on
stdout. Latency: TCP_NODELAY is set on every client connection and caproto's high-load batching
window is cut to 1 ms (``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC``, default here 0.001).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from caproto.asyncio.server import Context

from tomolock.devices.sim.drift import DriftParams, SimulatedDrift
from tomolock.devices.sim.motor import SimMotor
from tomolock.devices.sim.pvgroups import (
    ControlGroup,
    DetectorGroup,
    InterferometerGroup,
    MicroscopeGroup,
    preset,
)
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.devices.sim.streamer import BeamState, DetectorStreamer

__all__ = ["READY_MARKER", "IocConfig", "SimBeamlineIOC", "loopback_ioc_env", "main", "serve"]

log = logging.getLogger(__name__)

READY_MARKER = "TOMOLOCK_SIM_READY"
#: Environment flag set by the launcher: the IOC ignores SIGINT (the launcher stops it).
IGNORE_SIGINT_ENV = "TOMOLOCK_SIM_IGNORE_SIGINT"


@dataclass
class IocConfig:
    """Settings of the simulated beamline IOC (all have CLI flags, see :func:`build_parser`).

    Attributes
    ----------
    prefix : str
        PV prefix, e.g. ``"SIM:"``.
    stage_prefix, ifm_prefix, vlm_prefix, det_prefix, ctrl_prefix : str
        Group prefixes after ``prefix``.
    rot_suffix, x_suffix, y_suffix, z_suffix : str
        Motor record names after the stage prefix.
    rot_limits_deg, piezo_limits_um : tuple of float
        Soft limits (low, high).
    rot_velocity_deg_s, piezo_velocity_um_s : float
        Motor velocities.
    motor_tick_hz : float
        Readback update rate of moving motors.
    ifm_rate_hz, vlm_rate_hz : float
        Sensor update rates.
    ifm_noise_nm, vlm_noise_um : float
        Gaussian noise of the sensor readings (per axis, 1 sigma).
    drift_seed : int
        Seed of the drift realisation (and of the phantom, sensor and detector noise).
    drift_preset : {"quiet", "typical", "severe"}
        :class:`DriftParams` preset.
    shape : tuple of int
        Detector frame shape (rows, cols).
    counts : float
        Mean flat-field counts per pixel.
    n_darks, n_flats : int
        Dark and flat frames sent after each ``scan_start``.
    noise_model : {"poisson", "gaussian"}
        Detector noise; ``gaussian`` renders large frames ~3x faster.
    zmq_mode : {"push", "pub"}
        Detector stream socket type.
    zmq_address : str
        Bind address; ``tcp://127.0.0.1:*`` picks a free port.
    exposure_s : float
        Initial exposure time.
    """

    prefix: str = "SIM:"
    stage_prefix: str = "STAGE:"
    ifm_prefix: str = "IFM:"
    vlm_prefix: str = "VLM:"
    det_prefix: str = "DET:"
    ctrl_prefix: str = "CTRL:"
    rot_suffix: str = "ROT"
    x_suffix: str = "X"
    y_suffix: str = "Y"
    z_suffix: str = "Z"
    rot_limits_deg: tuple[float, float] = (-400.0, 400.0)
    piezo_limits_um: tuple[float, float] = (-50.0, 50.0)
    rot_velocity_deg_s: float = 90.0
    piezo_velocity_um_s: float = 100.0
    motor_tick_hz: float = 100.0
    ifm_rate_hz: float = 100.0
    vlm_rate_hz: float = 10.0
    ifm_noise_nm: float = 2.0
    vlm_noise_um: float = 0.02
    drift_seed: int = 0
    drift_preset: str = "typical"
    shape: tuple[int, int] = (256, 256)
    counts: float = 1000.0
    n_darks: int = 10
    n_flats: int = 10
    noise_model: str = "poisson"
    zmq_mode: str = "push"
    zmq_address: str = "tcp://127.0.0.1:*"
    exposure_s: float = 0.01

    def __post_init__(self) -> None:
        for name in ("ifm_rate_hz", "vlm_rate_hz", "motor_tick_hz", "rot_velocity_deg_s",
                     "piezo_velocity_um_s", "counts"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("ifm_noise_nm", "vlm_noise_um", "exposure_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("rot_limits_deg", "piezo_limits_um"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)}")
        if self.noise_model not in ("poisson", "gaussian"):
            raise ValueError(f"noise_model must be poisson or gaussian, got {self.noise_model!r}")
        if self.n_darks < 0 or self.n_flats < 0:
            raise ValueError(f"n_darks/n_flats must be >= 0, got {self.n_darks}/{self.n_flats}")
        if self.zmq_mode not in ("push", "pub"):
            raise ValueError(f"zmq_mode must be 'push' or 'pub', got {self.zmq_mode!r}")
        if self.drift_preset not in ("quiet", "typical", "severe"):
            raise ValueError(f"drift_preset must be quiet, typical or severe, got "
                             f"{self.drift_preset!r}")
        if len(self.shape) != 2 or min(self.shape) < 8:
            raise ValueError(f"shape must be (rows, cols) of at least 8, got {self.shape!r}")


class SimBeamlineIOC:
    """All PV groups of the simulated beamline plus the tasks that drive the sensors.

    Parameters
    ----------
    config : IocConfig
        Settings.
    """

    def __init__(self, config: IocConfig) -> None:
        self.config = c = config
        stage = c.prefix + c.stage_prefix
        lo, hi = c.piezo_limits_um
        common = {"tick_hz": c.motor_tick_hz}
        self.rot = SimMotor(stage + c.rot_suffix, egu="deg", low_limit=c.rot_limits_deg[0],
                            high_limit=c.rot_limits_deg[1], velocity=c.rot_velocity_deg_s,
                            precision=4, description="sample rotation", **common)
        self.piezo = [
            SimMotor(stage + suffix, egu="um", low_limit=lo, high_limit=hi,
                     velocity=c.piezo_velocity_um_s, precision=4, resolution=1e-4,
                     description=f"fine piezo {axis}", **common)
            for axis, suffix in zip("xyz", (c.x_suffix, c.y_suffix, c.z_suffix), strict=True)
        ]
        self.ifm = InterferometerGroup(c.prefix + c.ifm_prefix)
        self.vlm = MicroscopeGroup(c.prefix + c.vlm_prefix)
        self.det = DetectorGroup(c.prefix + c.det_prefix)
        self.ctrl = ControlGroup(c.prefix + c.ctrl_prefix)

        params = getattr(DriftParams, c.drift_preset)()
        self.simulator = ScanSimulator(
            ScanConfig(shape=(int(c.shape[0]), int(c.shape[1])), counts=c.counts,
                       seed=c.drift_seed, drift=params, n_darks=c.n_darks, n_flats=c.n_flats,
                       noise_model=c.noise_model)  # type: ignore[arg-type]
        )
        # One drift instance for sensors and detector: they must agree exactly.
        self.drift: SimulatedDrift = self.simulator.drift
        self._rng = np.random.default_rng(c.drift_seed + 1)
        now = time.time()
        preset(self.ctrl.t0, now)
        preset(self.det.exposure, c.exposure_s)
        preset(self.det.rows, int(c.shape[0]))
        preset(self.det.cols, int(c.shape[1]))
        preset(self.det.pixel_size, float(self.drift.params.pixel_size_um))
        preset(self.det.socket_type, c.zmq_mode.upper())
        preset(self.ifm.rate, c.ifm_rate_hz)
        preset(self.vlm.rate, c.vlm_rate_hz)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pvdb(self) -> dict[str, Any]:
        """Every PV of every group."""
        db: dict[str, Any] = {}
        for group in (self.rot, *self.piezo, self.ifm, self.vlm, self.det, self.ctrl):
            db.update(group.pvdb)
        return db

    # --------------------------------------------------------------- true state
    def stage_offset_um(self) -> tuple[float, float, float]:
        """Return the exact piezo position (x, y, z), um."""
        x, y, z = (m.position for m in self.piezo)
        return (x, y, z)

    def beam_state(self) -> BeamState:
        """Return the exact state now (angle, time, offset, drift switch)."""
        now = time.time()
        return BeamState(
            angle_deg=self.rot.position,
            t_s=now - float(self.ctrl.t0.value),
            stage_offset_um=self.stage_offset_um(),
            timestamp=now,
            drift_enabled=bool(self.ctrl.drift_enable.value),
        )

    def sensor_truth_um(self, kind: str, state: BeamState) -> np.ndarray:
        """Noise-free reading (x, y, z) in um of ``"interferometer"`` or ``"microscope"``."""
        if state.drift_enabled:
            fn = self.drift.interferometer_um if kind == "interferometer" else (
                self.drift.microscope_um)
            base = np.asarray(fn(state.angle_deg, state.t_s), dtype=float).reshape(3)
        else:
            base = np.zeros(3)
        return base + np.asarray(state.stage_offset_um)

    # -------------------------------------------------------------------- tasks
    async def _ifm_loop(self) -> None:
        period = 1.0 / self.config.ifm_rate_hz
        sigma = self.config.ifm_noise_nm
        while True:
            state = self.beam_state()
            blocked = bool(self.ctrl.ifm_block.value)
            # status first: a client completing a sample on the last axis sees current flags
            strength = 0.0 if blocked else float(np.clip(92 + self._rng.normal(0, 1), 0, 100))
            await self.ifm.signal.write(strength, timestamp=state.timestamp)
            valid = int(strength > 20)
            if self.ifm.valid.value != valid:
                await self.ifm.valid.write(valid, timestamp=state.timestamp)
            if not blocked:  # a blocked beam freezes the readbacks
                nm = self.sensor_truth_um("interferometer", state) * 1e3
                nm = nm + self._rng.normal(0.0, sigma, 3)
                for prop, v in zip((self.ifm.x, self.ifm.y, self.ifm.z), nm, strict=True):
                    await prop.write(float(v), timestamp=state.timestamp)
            await self.ctrl.sim_time.write(state.t_s, timestamp=state.timestamp)
            await asyncio.sleep(period)

    async def _vlm_loop(self) -> None:
        period = 1.0 / self.config.vlm_rate_hz
        sigma = self.config.vlm_noise_um
        while True:
            state = self.beam_state()
            quality = float(np.clip(0.9 + self._rng.normal(0, 0.02), 0, 1))
            await self.vlm.quality.write(quality, timestamp=state.timestamp)
            if self.vlm.valid.value != 1:
                await self.vlm.valid.write(1, timestamp=state.timestamp)
            um = self.sensor_truth_um("microscope", state) + self._rng.normal(0.0, sigma, 3)
            for prop, v in zip((self.vlm.x, self.vlm.y, self.vlm.z), um, strict=True):
                await prop.write(float(v), timestamp=state.timestamp)
            await asyncio.sleep(period)

    async def start(self) -> None:
        """Create the detector streamer and start the sensor loops (inside the server loop)."""
        streamer = DetectorStreamer(
            self.simulator, self.drift, self.beam_state, address=self.config.zmq_address,
            mode=self.config.zmq_mode, seed=self.config.drift_seed + 2,  # type: ignore[arg-type]
            control_timeout_s=3.0,  # a put-callback client (10 s default) must not time out first
        )
        self.det.streamer = streamer
        await self.det.zmq_addr.write(streamer.address)
        for coro in (self._ifm_loop(), self._vlm_loop()):
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        """Cancel the sensor loops and close the stream socket."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.det.streamer is not None:
            self.det.streamer.close()


class _NoDelayContext(Context):
    """caproto server context that disables Nagle on every client connection.

    Without TCP_NODELAY a put->monitor round trip takes ~44 ms on loopback; with it ~2 ms.
    """

    async def tcp_handler(self, client: Any, addr: Any) -> None:
        sock = client.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await super().tcp_handler(client, addr)


def loopback_ioc_env(port: int, beacon_port: int) -> dict[str, str]:
    """EPICS environment for a caproto server confined to 127.0.0.1.

    Parameters
    ----------
    port : int
        CA server port (UDP search and first TCP port).
    beacon_port : int
        UDP port beacons go to (someone should hold it open; the IOC does itself).
    """
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_PORT": str(beacon_port),
    }


async def serve(config: IocConfig, port: int) -> None:
    """Serve the IOC on 127.0.0.1:``port`` until cancelled (or SIGTERM/SIGINT).

    Sets the loopback EPICS environment and the low-latency caproto settings of this process.
    """
    # Beacons go to a UDP port this process holds open, so none leaves loopback and none
    # bounces back as "connection refused".
    beacon_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beacon_sink.bind(("127.0.0.1", 0))
    os.environ.update(loopback_ioc_env(port, beacon_sink.getsockname()[1]))
    import caproto.server.common as caproto_common

    caproto_common.HIGH_LOAD_TIMEOUT = float(
        os.environ.get("CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC", "0.001"))

    ioc = SimBeamlineIOC(config)
    ctx = _NoDelayContext(ioc.pvdb, interfaces=["127.0.0.1"])
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # main() may ignore SIGINT on purpose
            loop.add_signal_handler(sig, stopping.set)

    async def startup(_async_lib: Any) -> None:
        await ioc.start()
        info = {"port": port, "tcp_port": ctx.port, "prefix": config.prefix,
                "zmq_address": ioc.det.streamer.address if ioc.det.streamer else "",
                "pid": os.getpid(), "config": asdict(config)}
        print(f"{READY_MARKER} {json.dumps(info)}", flush=True)

    server = asyncio.create_task(ctx.run(log_pv_names=False, startup_hook=startup))
    waiter = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.cancel()
        waiter.cancel()
        await asyncio.gather(server, waiter, return_exceptions=True)
        await ioc.stop()
        beacon_sink.close()
    if server.done() and not server.cancelled() and server.exception() is not None:
        raise server.exception()  # type: ignore[misc]


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return float(parts[0]), float(parts[1])


def _shape(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, got {text!r}")
    return int(parts[0]), int(parts[1])


def add_ioc_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the IOC settings as command-line options (shared with ``tomolock sim``)."""
    d = IocConfig()
    parser.add_argument("--prefix", default=d.prefix, help="PV prefix (default %(default)s)")
    parser.add_argument("--rot-limits", type=_pair, default=d.rot_limits_deg, metavar="LO,HI",
                        help="rotation soft limits, deg")
    parser.add_argument("--piezo-limits", type=_pair, default=d.piezo_limits_um,
                        metavar="LO,HI", help="piezo soft limits, um")
    parser.add_argument("--rot-velocity", type=float, default=d.rot_velocity_deg_s,
                        help="rotation velocity, deg/s (default %(default)s)")
    parser.add_argument("--piezo-velocity", type=float, default=d.piezo_velocity_um_s,
                        help="piezo velocity, um/s (default %(default)s)")
    parser.add_argument("--ifm-rate", type=float, default=d.ifm_rate_hz,
                        help="interferometer update rate, Hz (default %(default)s)")
    parser.add_argument("--vlm-rate", type=float, default=d.vlm_rate_hz,
                        help="microscope update rate, Hz (default %(default)s)")
    parser.add_argument("--ifm-noise-nm", type=float, default=d.ifm_noise_nm)
    parser.add_argument("--vlm-noise-um", type=float, default=d.vlm_noise_um)
    parser.add_argument("--seed", type=int, default=d.drift_seed, help="drift and noise seed")
    parser.add_argument("--drift", choices=("quiet", "typical", "severe"), default=d.drift_preset,
                        help="drift preset (default %(default)s)")
    parser.add_argument("--shape", type=_shape, default=d.shape, metavar="ROWSxCOLS",
                        help="detector frame shape (default 256x256)")
    parser.add_argument("--counts", type=float, default=d.counts, help="flat-field counts/px")
    parser.add_argument("--noise", choices=("poisson", "gaussian"), default=d.noise_model,
                        help="detector noise model (gaussian: faster large frames)")
    parser.add_argument("--darks", type=int, default=d.n_darks, help="darks per scan")
    parser.add_argument("--flats", type=int, default=d.n_flats, help="flats per scan")
    parser.add_argument("--zmq-mode", choices=("push", "pub"), default=d.zmq_mode)
    parser.add_argument("--zmq-address", default=d.zmq_address,
                        help="frame stream bind address (default %(default)s)")
    parser.add_argument("--exposure", type=float, default=d.exposure_s, help="exposure, s")


def config_from_args(args: argparse.Namespace) -> IocConfig:
    """Build an :class:`IocConfig` from parsed :func:`add_ioc_arguments` options."""
    return IocConfig(
        prefix=args.prefix, rot_limits_deg=args.rot_limits, piezo_limits_um=args.piezo_limits,
        rot_velocity_deg_s=args.rot_velocity, piezo_velocity_um_s=args.piezo_velocity,
        ifm_rate_hz=args.ifm_rate, vlm_rate_hz=args.vlm_rate, ifm_noise_nm=args.ifm_noise_nm,
        vlm_noise_um=args.vlm_noise_um, drift_seed=args.seed, drift_preset=args.drift,
        shape=args.shape, counts=args.counts, n_darks=args.darks, n_flats=args.flats,
        noise_model=args.noise, zmq_mode=args.zmq_mode, zmq_address=args.zmq_address,
        exposure_s=args.exposure,
    )


def build_parser() -> argparse.ArgumentParser:
    """Parser of ``python -m tomolock.devices.sim.ioc``."""
    parser = argparse.ArgumentParser(prog="python -m tomolock.devices.sim.ioc",
                                     description="Simulated tomolock beamline IOC (loopback).")
    parser.add_argument("--port", type=int, required=True, help="CA server port (UDP+TCP)")
    add_ioc_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the IOC until SIGTERM/SIGINT; returns the exit code."""
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"--port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get(IGNORE_SIGINT_ENV) == "1":
        # Started by SimBeamline: Ctrl-C on the terminal reaches the whole process group;
        # the parent then stops this IOC after its own clients (no CA disconnect noise).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve(config_from_args(args), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
