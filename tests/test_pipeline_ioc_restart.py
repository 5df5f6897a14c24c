"""Fault: the IOC goes down mid-session and comes back (corrections held, then resumed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIO = Path(__file__).with_name("ioc_restart_scenario.py")


def _run_scenario() -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(SCENARIO)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        start_new_session=True,  # one process group: a timeout kills the IOC child too
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the IOC the aborted process started
        pytest.fail(f"scenario hung:\n{err[-6000:]}")
    assert proc.returncode == 0, err[-6000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(600)  # up to two scenario runs
def test_service_holds_while_ioc_is_down_and_resumes_after() -> None:
    obs = _run_scenario()
    if not obs["interferometer_back"]:
        # Without a CA repeater (the loopback IOC's beacons reach no one) libca finds a
        # restarted IOC only on its search backoff, which grows with the outage; on a loaded
        # 2-core machine the restart itself can take long enough to miss the 90 s window.
        # That is the environment, not the service: run the scenario once more.
        obs = _run_scenario()
    assert obs["moves_before"] > 0
    assert obs["interferometer_lost_seen"], obs  # the feed noticed the outage
    assert obs["service_receiving_while_down"], obs  # and the service kept running
    assert obs["moves_while_down"] == 0, obs  # nothing commanded into a dead IOC
    assert obs["interferometer_back"], obs  # CA reconnected by itself
    assert obs["processed_after"] == 13 and obs["moves_after"] > 0, obs  # corrections resumed
