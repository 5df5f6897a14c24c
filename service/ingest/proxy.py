"""bluesky's 0MQ document proxy in a child process, bound on loopback by default.

:class:`bluesky.callbacks.zmq.Proxy` blocks in ``zmq.device`` forever and cannot be stopped
cleanly from another thread (terminating its context from outside deadlocks in its own
cleanup), so it runs in a child process that is simply terminated. The child prints one JSON
line with its endpoints once bound.

Run by hand::

    python -m tomolock.service.ingest.proxy --host 127.0.0.1 --in-port 5577 --out-port 5578
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import time
from types import TracebackType
from typing import Self


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {port}")
    return port


class ProxyProcess:
    """Start and stop a bluesky 0MQ Proxy child process.

    Parameters
    ----------
    host : str
        Interface to bind both ports on (never a wildcard by default).
    in_port, out_port : int
        Ports for Publishers (in) and subscribers (out); 0 picks free ports.
    startup_timeout_s : float
        How long to wait for the child to report its endpoints.

    Attributes
    ----------
    in_address, out_address : str
        ``tcp://host:port`` endpoints, set by :meth:`start`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        in_port: int = 0,
        out_port: int = 0,
        *,
        startup_timeout_s: float = 20.0,
    ) -> None:
        if not isinstance(host, str) or not host or host in ("*", "0.0.0.0"):
            raise ValueError(f"host must be an explicit interface address, got {host!r}")
        for p in (in_port, out_port):
            if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= 65535:
                raise ValueError(f"ports must be ints in 0..65535, got {p!r}")
        self.host = host
        self.in_port = in_port
        self.out_port = out_port
        self.startup_timeout_s = startup_timeout_s
        self.in_address: str | None = None
        self.out_address: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Launch the child and wait until it has bound both ports.

        Raises
        ------
        RuntimeError
            If the child exits or stays silent beyond ``startup_timeout_s``.
        """
        if self._proc is not None:
            raise RuntimeError("proxy already started")
        cmd = [
            sys.executable, "-m", "tomolock.service.ingest.proxy",
            "--host", self.host, "--in-port", str(self.in_port), "--out-port", str(self.out_port),
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._proc.poll() is not None:
                self.close()
                raise RuntimeError("bluesky 0MQ proxy did not start (see its stderr; port in use?)")
            ready, _, _ = select.select([self._proc.stdout], [], [], min(remaining, 0.2))
            if ready:
                chunk = self._proc.stdout.readline()
                if not chunk:
                    continue
                line += chunk
        info = json.loads(line)
        self.in_address, self.out_address = info["in"], info["out"]
        return self

    def close(self) -> None:
        """Terminate the child (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    """Bind a bluesky Proxy, print ``{"in": ..., "out": ...}`` as one line, then forward."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--in-port", type=_port, default=0)
    parser.add_argument("--out-port", type=_port, default=0)
    args = parser.parse_args(argv)
    from bluesky.callbacks.zmq import Proxy  # heavy import, only in the child

    def addr(port: int) -> str:
        # bluesky picks a free port for a tcp address without a port.
        return f"tcp://{args.host}" if port == 0 else f"tcp://{args.host}:{port}"

    proxy = Proxy(addr(args.in_port), addr(args.out_port))
    print(json.dumps({"in": str(proxy.in_port), "out": str(proxy.out_port)}), flush=True)
    proxy.start()


if __name__ == "__main__":
    main()
