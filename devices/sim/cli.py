"""``tomolock sim``: run the simulated beamline in the foreground until interrupted.

Also runnable as ``python -m tomolock.devices.sim.cli``. Prints the CA client environment,
PV prefixes and the detector stream address, then waits for Ctrl-C (or ``--duration``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from tomolock.devices.sim.beamline import SimBeamline
from tomolock.devices.sim.ioc import add_ioc_arguments, config_from_args

__all__ = ["add_parser", "main"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=None,
                        help="CA server port (default: a free one)")
    parser.add_argument("--proxy", action="store_true",
                        help="also run a bluesky 0MQ proxy on 127.0.0.1")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--json", action="store_true", help="print the info as one JSON line")
    add_ioc_arguments(parser)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``sim`` sub-command on ``subparsers``; sets ``func`` to :func:`main`."""
    parser = subparsers.add_parser(
        "sim", help="run the simulated beamline (IOC + detector stream)",
        description="Run the simulated tomolock beamline on 127.0.0.1.")
    _configure(parser)
    parser.set_defaults(func=main)
    return parser


def describe(bl: SimBeamline) -> dict[str, Any]:
    """Return what a client needs to connect to the running beamline ``bl``."""
    p = bl.prefixes
    return {
        "ca_env": bl.client_env(),
        "prefixes": {"stage": p.stage, "interferometer": p.interferometer,
                     "microscope": p.microscope, "detector": p.detector, "control": p.control},
        "zmq_address": bl.zmq_address,
        "zmq_socket": bl.config.zmq_mode.upper(),
        "bluesky_proxy": {"in": bl.proxy_in, "out": bl.proxy_out} if bl.with_proxy else None,
    }


def main(args: argparse.Namespace) -> int:
    """Run the beamline described by parsed ``args``; returns an exit code."""
    if args.port is not None and not 0 < args.port < 65536:
        print(f"--port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print(f"--duration must be > 0, got {args.duration}", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    with SimBeamline(config=config, port=args.port, with_proxy=args.proxy) as bl:
        info = describe(bl)
        if args.json:
            print(json.dumps(info), flush=True)
        else:
            print("simulated beamline running; CA client environment:")
            for k, v in info["ca_env"].items():
                print(f"  export {k}={v}")
            for k, v in info["prefixes"].items():
                print(f"  {k:15s} {v}")
            print(f"  detector stream {info['zmq_address']} ({info['zmq_socket']})")
            if info["bluesky_proxy"]:
                print(f"  bluesky proxy   in {bl.proxy_in}  out {bl.proxy_out}")
            print("Ctrl-C to stop.", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while bl.running and (deadline is None or time.monotonic() < deadline):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        if not bl.running:
            print("IOC exited unexpectedly:\n" + bl.output_tail(), file=sys.stderr)
            return 1
    return 0


def _standalone(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tomolock.devices.sim.cli",
                                     description="Run the simulated tomolock beamline.")
    _configure(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_standalone())
