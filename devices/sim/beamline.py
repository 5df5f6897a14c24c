"""Start and stop the whole simulated beamline on free loopback ports.

The beamline is the IOC subprocess (with the detector streamer inside it) and, optionally, a
bluesky 0MQ proxy.

Typical use::

    with SimBeamline(prefix="SIM:") as bl:
        os.environ.update(bl.client_env())   # before importing ophyd / aioca / pyepics!
        ...  # connect tomolock.devices with bl.prefixes, PULL frames from bl.zmq_address

The client environment must be in place before the first CA client library is loaded in the
process (libca reads it once). :func:`reserve_ca_port` lets a test session choose the port and
set the environment first, then start the beamline on that port.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tomolock.devices.sim.ioc import IGNORE_SIGINT_ENV, READY_MARKER, IocConfig

__all__ = ["SimBeamline", "ca_client_env", "free_tcp_port", "reserve_ca_port"]

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def reserve_ca_port(attempts: int = 50) -> int:
    """Return a port free for both TCP and UDP on 127.0.0.1 (CA search is UDP, circuits TCP).

    Raises
    ------
    RuntimeError
        If no such port is found in ``attempts`` tries.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((_HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((_HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free on both TCP and UDP after {attempts} attempts")


def ca_client_env(port: int) -> dict[str, str]:
    """EPICS CA client environment that finds only the IOC on 127.0.0.1:``port``."""
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return {
        "EPICS_CA_ADDR_LIST": _HOST,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
    }


@dataclass(frozen=True)
class Prefixes:
    """Full PV prefixes of the simulated devices (to construct ``tomolock.devices``)."""

    stage: str
    interferometer: str
    microscope: str
    detector: str
    control: str


@dataclass
class SimBeamline:
    """The simulated beamline as one object; also a context manager.

    Parameters
    ----------
    config : IocConfig, optional
        IOC settings (prefix, rates, detector shape, drift seed, ZMQ socket type, ...).
    port : int, optional
        CA server port; default: a free one (:func:`reserve_ca_port`).
    with_proxy : bool
        Also start a bluesky 0MQ ``Proxy`` on loopback (:attr:`proxy_in`/:attr:`proxy_out`).
    startup_timeout_s : float
        How long to wait for the IOC's ready line.
    python : str
        Interpreter for the subprocesses.

    Attributes
    ----------
    port : int
        CA server port.
    zmq_address : str
        Detector stream address (connect a PULL, or a SUB for ``zmq_mode="pub"``).
    proxy_in, proxy_out : str
        ``host:port`` of the proxy's input (Publisher) and output (RemoteDispatcher) sides.
    """

    config: IocConfig = field(default_factory=IocConfig)
    port: int | None = None
    with_proxy: bool = False
    startup_timeout_s: float = 30.0
    python: str = sys.executable
    zmq_address: str = ""
    proxy_in: str = ""
    proxy_out: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ioc: subprocess.Popen[str] | None = None
        self._proxy: subprocess.Popen[str] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._drainers: list[threading.Thread] = []

    # ------------------------------------------------------------------ info
    @property
    def prefixes(self) -> Prefixes:
        """Full PV prefixes of every simulated device."""
        c = self.config
        return Prefixes(stage=c.prefix + c.stage_prefix, interferometer=c.prefix + c.ifm_prefix,
                        microscope=c.prefix + c.vlm_prefix, detector=c.prefix + c.det_prefix,
                        control=c.prefix + c.ctrl_prefix)

    def client_env(self) -> dict[str, str]:
        """CA client environment for this beamline (apply before importing CA clients)."""
        if self.port is None:
            raise RuntimeError("beamline not started: no port yet")
        return ca_client_env(self.port)

    @property
    def running(self) -> bool:
        """Whether the IOC subprocess is alive."""
        return self._ioc is not None and self._ioc.poll() is None

    def output_tail(self) -> str:
        """Last lines the subprocesses printed (for error messages)."""
        return "\n".join(self._output)

    # ------------------------------------------------------------------ lifecycle
    def _ioc_command(self) -> list[str]:
        c = self.config
        return [
            self.python, "-m", "tomolock.devices.sim.ioc", "--port", str(self.port),
            "--prefix", c.prefix,
            # "=" form: a negative low limit would otherwise look like an option
            f"--rot-limits={c.rot_limits_deg[0]},{c.rot_limits_deg[1]}",
            f"--piezo-limits={c.piezo_limits_um[0]},{c.piezo_limits_um[1]}",
            "--rot-velocity", repr(c.rot_velocity_deg_s),
            "--piezo-velocity", repr(c.piezo_velocity_um_s),
            "--ifm-rate", repr(c.ifm_rate_hz), "--vlm-rate", repr(c.vlm_rate_hz),
            "--ifm-noise-nm", repr(c.ifm_noise_nm), "--vlm-noise-um", repr(c.vlm_noise_um),
            "--seed", str(c.drift_seed), "--drift", c.drift_preset,
            "--shape", f"{c.shape[0]}x{c.shape[1]}", "--counts", repr(c.counts),
            "--darks", str(c.n_darks), "--flats", str(c.n_flats), "--noise", c.noise_model,
            "--zmq-mode", c.zmq_mode, "--zmq-address", c.zmq_address,
            "--exposure", repr(c.exposure_s),
        ]

    def _drain(self, proc: subprocess.Popen[str], label: str) -> None:
        # Keep reading: a full pipe would block the IOC.
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(READY_MARKER):
                self.info = json.loads(line[len(READY_MARKER):])
                self._ready.set()
            else:
                self._output.append(f"[{label}] {line}")
                log.debug("[%s] %s", label, line)

    def _spawn(self, cmd: list[str], label: str) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.setdefault("CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC", "0.001")
        env["PYTHONUNBUFFERED"] = "1"
        env[IGNORE_SIGINT_ENV] = "1"  # Ctrl-C reaches us; stop() ends the children in order
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env)
        t = threading.Thread(target=self._drain, args=(proc, label), daemon=True,
                             name=f"sim-{label}-drain")
        t.start()
        self._drainers.append(t)
        return proc

    def start(self) -> SimBeamline:
        """Start the IOC (and proxy); return when the IOC serves. Idempotent while running.

        Raises
        ------
        RuntimeError
            If the IOC exits or does not report ready within ``startup_timeout_s``.
        """
        if self.running:
            return self
        if self.port is None:
            self.port = reserve_ca_port()
        self._ready.clear()
        self._ioc = self._spawn(self._ioc_command(), "ioc")
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready.wait(0.05):
            if self._ioc.poll() is not None or time.monotonic() > deadline:
                rc = self._ioc.poll()
                self.stop()
                what = f"exited with {rc}" if rc is not None else "timed out"
                raise RuntimeError(f"simulated IOC {what} before ready; output:\n"
                                   f"{self.output_tail()}")
        self.zmq_address = str(self.info.get("zmq_address", ""))
        if self.with_proxy:
            self._start_proxy()
        return self

    def _start_proxy(self) -> None:
        self.proxy_in = f"{_HOST}:{free_tcp_port()}"
        self.proxy_out = f"{_HOST}:{free_tcp_port()}"
        cmd = [self.python, "-m", "tomolock.devices.sim.beamline", "proxy",
               self.proxy_in, self.proxy_out]
        self._proxy = self._spawn(cmd, "proxy")
        deadline = time.monotonic() + self.startup_timeout_s
        port = int(self.proxy_out.rsplit(":", 1)[1])
        while True:  # ready when the output side accepts connections
            try:
                with socket.create_connection((_HOST, port), timeout=0.2):
                    return
            except OSError:
                if self._proxy.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("bluesky 0MQ proxy did not start; output:\n"
                                       + self.output_tail()) from None
                time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the subprocesses (SIGTERM, then SIGKILL) and wait for them."""
        for proc in (self._proxy, self._ioc):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        # The drain threads end at EOF, once the processes have exited.
        for t in self._drainers:
            t.join(timeout_s)
        self._drainers.clear()
        for proc in (self._proxy, self._ioc):
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
        self._proxy = None
        self._ioc = None

    def __enter__(self) -> SimBeamline:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _proxy_main(in_address: str, out_address: str) -> None:
    """Run a bluesky 0MQ proxy bound to the two loopback addresses until killed."""
    from bluesky.callbacks.zmq import Proxy

    for addr in (in_address, out_address):
        if not addr.startswith(f"{_HOST}:"):
            raise ValueError(f"proxy addresses must be on {_HOST}, got {addr!r}")
    Proxy(in_address, out_address).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the helper processes: ``python -m tomolock.devices.sim.beamline proxy IN OUT``."""
    parser = argparse.ArgumentParser(prog="python -m tomolock.devices.sim.beamline")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("proxy", help="bluesky 0MQ proxy on loopback")
    p.add_argument("in_address", help="127.0.0.1:PORT for Publishers")
    p.add_argument("out_address", help="127.0.0.1:PORT for RemoteDispatchers")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        _proxy_main(args.in_address, args.out_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
