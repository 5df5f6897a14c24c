"""``tomolock demo`` end to end: IOC subprocess, service, EPICS feeds, API, corrected scan."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_corrects_the_simulated_scan_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-X", "faulthandler", "-m", "tomolock.service.cli", "demo",
        "--size", "96", "--projections", "25", "--port", "0", "--serve",
        "--record-dir", str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True)  # a timeout kills the IOC child too
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stopped = False
    try:
        if serving.wait(180):
            # A terminal's Ctrl-C reaches the whole process group, the IOC child included.
            os.killpg(proc.pid, signal.SIGINT)
        else:
            # SIGABRT makes faulthandler print every thread's stack: a hang explains itself.
            proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=60)
            stopped = True
        except subprocess.TimeoutExpired:
            # Still running (or the IOC child holds the pipes): stacks, then kill the group.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left (the IOC of a hung demo)
    reader.join(10)
    out = "".join(lines)
    if not serving.is_set() or not stopped:
        what = "did not stop within 60 s of Ctrl-C" if serving.is_set() else "hung"
        pytest.fail(f"demo {what}; stacks:\n{err[-6000:]}\nstdout:\n{out[-2000:]}")
    text = out + err
    assert proc.returncode == 0, text
    unc = float(re.search(r"without correction\s+([\d.]+) px RMS", out).group(1))
    res = float(re.search(r"residual with correction\s+([\d.]+) px RMS", out).group(1))
    assert unc > 5.0  # the typical stage's runout really shows
    # Measured 17-19x (128^2, 31 projections); 10x leaves room for a random 3 px stage jump.
    assert res < unc / 10, text
    # The scans ran as bluesky plans on a RunEngine, the reference after the model settled.
    for plan in ("runout_calibration", "reference_scan", "tomo_scan", "drift_check"):
        assert re.search(rf"{plan}\s+\[#+\]", out), f"no finished {plan} progress bar:\n{out}"
    assert "drift model settled after" in out
    centre = re.search(r"rotation axis at column ([\d.]+).*confidence ([\d.]+)", out)
    assert centre is not None and float(centre.group(2)) > 0.3, out
    assert (tmp_path / "demo-scan.drift.h5").is_file()
    assert "Virtual circuit disconnect" not in text
