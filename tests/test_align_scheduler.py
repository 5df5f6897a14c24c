"""``tomolock align --scheduler``: a running Dask cluster (scheduler + workers started apart).

The scheduler and a two-process worker pool are started with Dask's own command line on
127.0.0.1, as ``deploy/README.md`` tells a beamline to start them, and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from test_align_cli import scan_files  # noqa: F401  (the shared simulated scan)

from tomolock.service.align.cli import main

pytestmark = pytest.mark.timeout(300)


def _start(args: list[str], log, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Yield the address of a scheduler with two single-thread worker processes."""
    from dask.distributed import Client

    tmp = tmp_path_factory.mktemp("cluster")
    file = tmp / "scheduler.json"
    log = open(tmp / "cluster.log", "w")  # noqa: SIM115  (closed below)
    procs = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(file)], log)]
    # The worker settings deploy/README.md documents for a running cluster.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "33554432",
           "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
    try:
        deadline, address = time.monotonic() + 60, None
        while address is None:
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start:\n{(tmp / 'cluster.log').read_text()}")
            time.sleep(0.1)
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                address = json.loads(file.read_text())["address"]  # once written whole
        procs.append(_start(["worker", "--scheduler-file", str(file), "--nworkers", "2",
                             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                             "--memory-limit", "1GiB"], log, env))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)
        log.close()


def _shifts(path) -> np.ndarray:
    with h5py.File(path) as f:
        return np.column_stack([f["exchange/shift_dy_px"][()], f["exchange/shift_dx_px"][()]])


def test_cli_on_a_running_cluster_matches_the_serial_loop(scan_files, scheduler,  # noqa: F811
                                                          tmp_path, capsys):
    _, data, log, _, _, _ = scan_files
    common = [str(log), "--projections", str(data), "--levels", "2,1", "--min-size", "16",
              "--max-iterations", "2", "--mode", "raw"]
    assert main([*common, "--out", str(tmp_path / "serial.h5"), "--serial"]) == 0
    capsys.readouterr()

    assert main([*common, "--out", str(tmp_path / "cluster.h5"), "--scheduler", scheduler]) == 0
    err = capsys.readouterr().err
    assert scheduler in err
    # auto: the memory limit is 80 % of the workers' limits (2 x 1 GiB), not this machine's.
    assert "executor dask (memory limit 1.6 GiB)" in err, err
    assert "level 2x iter 1" in err and "level 1x iter 2" in err

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert main([*common, "--out", str(tmp_path / "stream.h5"), "--scheduler", scheduler,
                 "--executor", "stream", "--scratch-dir", str(scratch)]) == 0
    assert f"scratch in {scratch}" in capsys.readouterr().err
    assert list(scratch.iterdir()) == []  # the workers' scratch files are removed

    serial = _shifts(tmp_path / "serial.h5")
    np.testing.assert_allclose(_shifts(tmp_path / "cluster.h5"), serial, atol=1e-9)
    np.testing.assert_allclose(_shifts(tmp_path / "stream.h5"), serial, atol=1e-9)


def test_cli_reports_a_bad_scheduler_address(scan_files, capsys):  # noqa: F811
    _, data, _, _, _, _ = scan_files
    assert main(["--projections", str(data), "--scheduler", "nonsense::address",
                 "--levels", "1", "--min-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at nonsense::address" in err
    assert "Traceback" not in err
