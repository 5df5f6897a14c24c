"""Command-line entry point ``tomolock``.

Sub-commands register themselves through small ``add_parser(subparsers)`` functions so that
each area (simulation, service, demo) keeps its own argument handling.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (module, sub-command) pairs; each module provides ``add_parser(subparsers)`` which sets
# ``func`` on its parser. Imported lazily so ``tomolock --help`` stays fast and a broken
# optional area cannot take the whole CLI down.
_SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("tomolock.service.demo", "demo"),
    ("tomolock.devices.sim.cli", "sim"),
    ("tomolock.service.serve", "serve"),
    ("tomolock.service.align.cli", "align"),
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level argument parser with every available sub-command."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("tomolock")
    except PackageNotFoundError:  # running from a source tree without install
        ver = "unknown"
    parser = argparse.ArgumentParser(
        prog="tomolock",
        description="Online drift correction for synchrotron X-ray nano-CT.",
    )
    parser.add_argument("--version", action="version", version=f"tomolock {ver}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, command in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only hide the sub-command if its own module is absent, not a broken import inside it.
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
        assert command in sub.choices, f"{module_name} did not register {command!r}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tomolock`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
