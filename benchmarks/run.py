"""Run tomolock's benchmarks and write JSON to stdout and a file.

Usage: ``python -m benchmarks.run [--only estimator] [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine_info, progress

SUITES = ("estimator", "loop", "online_to_fine")


def main(argv: list[str] | None = None) -> int:
    """Run the selected suites; print and save their JSON results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=SUITES, action="append", help="run only these suites")
    ap.add_argument("--quick", action="store_true", help="fewer frames/sizes (smoke run)")
    ap.add_argument("--out", type=Path, default=Path("bench-results.json"))
    args = ap.parse_args(argv)
    suites = args.only or list(SUITES)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    result = {"machine": machine_info(), "started": started, "suites": {}}
    for name in suites:
        progress(f"suite {name}")
        mod = __import__(f"benchmarks.{name}", fromlist=["run"])
        result["suites"][name] = mod.run(quick=args.quick)
    text = json.dumps(result, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
