"""``tomolock demo`` end to end: IOC subprocess, service, EPICS feeds, API, corrected scan."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_corrects_the_simulated_scan(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-X", "faulthandler", "-m", "tomolock.service.cli", "demo",
        "--size", "96", "--projections", "25", "--port", "0", "--no-serve",
        "--record-dir", str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True)  # a timeout kills the IOC child too
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        # SIGABRT makes faulthandler print every thread's stack: a hang explains itself.
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the IOC the aborted process started
        pytest.fail(f"demo hung; stacks:\n{err[-6000:]}\nstdout:\n{out[-2000:]}")
    text = out + err
    assert proc.returncode == 0, text
    unc = float(re.search(r"without correction\s+([\d.]+) px RMS", out).group(1))
    res = float(re.search(r"residual with correction\s+([\d.]+) px RMS", out).group(1))
    assert unc > 5.0  # the typical stage's runout really shows
    assert res < unc / 5, text  # loose: the typical stage has white jitter and random jumps
    assert (tmp_path / "demo-scan.drift.h5").is_file()
    assert "Virtual circuit disconnect" not in text
