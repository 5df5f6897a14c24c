"""``tomolock align`` end to end: drift log + Data Exchange projections -> aligned output."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_align_engine import simulate

from tomolock.service.align import remove_gauge, write_raw_data_exchange
from tomolock.service.align.cli import main
from tomolock.service.record import DriftLog, DriftRow


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align_cli")
    sim, _, angles, truth, rng = simulate(n=40, size=64, seed=3)
    # Re-render raw counts with the same true shifts (the helper returns absorption).
    offsets = [(s[1] * 0.03, 0.0, s[0] * 0.03) for s in truth]
    disp = sim.drift.sample_displacement_um(angles, sim.times_s())
    raw = np.stack([sim.projection(i, np.array(offsets[i]) - disp[i]).image
                    for i in range(len(angles))])
    white = np.stack([f.image for f in sim.flats()])
    dark = np.stack([f.image for f in sim.darks()])
    data = write_raw_data_exchange(tmp / "scan.h5", raw, white, dark, angles)
    logged = truth + rng.normal(0, 0.8, truth.shape)
    with DriftLog(tmp / "scan.drift.h5", scan_id="cli", pixel_size_um=0.03,
                  estimators=("phase",)) as log:
        for i, a in enumerate(angles):
            log.append(DriftRow(frame=i + 2, angle_deg=float(a), t=float(i),
                                residual_dy_px=logged[i, 0], residual_dx_px=logged[i, 1]))
    return tmp, data, tmp / "scan.drift.h5", angles, truth, logged


def test_cli_serial_end_to_end(scan_files, capsys):
    tmp, data, log, angles, truth, logged = scan_files
    out, table = tmp / "aligned.h5", tmp / "shifts.csv"
    rc = main([str(log), "--projections", str(data), "--out", str(out), "--serial",
               "--levels", "2,1", "--min-size", "16", "--max-iterations", "5",
               "--shifts-out", str(table)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "40/40 projections from" in captured.err
    assert "level 2x iter 1" in captured.err and "level 1x iter" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["iterations"] >= 2
    with h5py.File(out) as f:
        shifts = np.column_stack([f["exchange/shift_dy_px"][()], f["exchange/shift_dx_px"][()]])
        assert f["exchange/data"].shape == (40, 64, 64)
        reports = json.loads(f["process/tomolock_align"].attrs["reports_json"])
        assert reports[0]["level"] == 2
    before = np.sqrt(np.mean(remove_gauge(logged - truth, angles) ** 2))
    after = np.sqrt(np.mean(remove_gauge(shifts - truth, angles) ** 2))
    assert after < before / 2
    np.testing.assert_allclose(np.loadtxt(table, delimiter=",")[:, 2:4], shifts, atol=1e-6)


def test_cli_on_a_local_dask_cluster(scan_files, capsys):
    tmp, data, _, _, _, _ = scan_files
    out = tmp / "dask.h5"
    rc = main(["--projections", str(data), "--out", str(out), "--workers", "2",
               "--levels", "2", "--min-size", "16", "--max-iterations", "1", "--mode", "raw"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "zeros (no drift log given)" in err and "local cluster x2" in err
    with h5py.File(out) as f:
        assert f["exchange/data"].dtype == np.uint16  # raw mode keeps the detector data
        assert f["exchange/shift_dx_px"].shape == (40,)


def test_cli_errors_exit_2(scan_files, tmp_path, capsys):
    _, data, log, _, _, _ = scan_files
    assert main(["--projections", str(tmp_path / "missing.h5")]) == 2
    assert "projection file not found" in capsys.readouterr().err
    other = tmp_path / "other.drift.h5"
    with DriftLog(other, scan_id="x", pixel_size_um=0.03, estimators=("phase",)) as lg:
        lg.append(DriftRow(frame=0, angle_deg=400.0, t=0.0, residual_dy_px=0.0,
                           residual_dx_px=0.0))
    assert main([str(other), "--projections", str(data)]) == 2
    assert "is it this scan's log" in capsys.readouterr().err
    assert main([str(log), "--projections", str(data), "--levels", "8"]) == 2
    assert "too small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--projections", str(data), "--levels", "a,b"])


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "tomolock.service.align.cli", "--help"],
                         check=True, capture_output=True, text=True).stdout
    assert "--projections" in out and "--scheduler" in out


def test_add_parser_registers_align():
    import argparse

    from tomolock.service.align.cli import add_parser, run

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["align", "log.h5", "--projections", "p.h5"])
    assert args.func is run and args.levels == (4, 2, 1)


def test_cli_streams_when_the_memory_limit_is_small(scan_files, tmp_path, capsys):
    _, data, log, _, _, _ = scan_files
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    common = [str(log), "--projections", str(data), "--levels", "2,1", "--min-size", "16",
              "--max-iterations", "2", "--mode", "raw"]
    assert main([*common, "--out", str(tmp_path / "serial.h5"), "--serial"]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "stream.h5"), "--memory-limit", "1MB",
                 "--scratch-dir", str(scratch)]) == 0
    err = capsys.readouterr().err
    assert "executor stream (memory limit 0.0 GiB)" in err and f"scratch in {scratch}" in err
    assert "level 2x iter 1" in err and "level 1x iter 2" in err
    assert list(scratch.iterdir()) == []  # scratch folder removed
    shifts = {}
    for name in ("serial", "stream"):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            shifts[name] = np.column_stack([f["exchange/shift_dy_px"][()],
                                            f["exchange/shift_dx_px"][()]])
    np.testing.assert_allclose(shifts["stream"], shifts["serial"], atol=1e-9)


def test_cli_auto_keeps_small_scans_in_memory_and_checks_scratch(scan_files, tmp_path,
                                                                   capsys):
    _, data, _, _, _, _ = scan_files
    base = ["--projections", str(data), "--out", str(tmp_path / "o.h5"), "--levels", "2",
            "--min-size", "16", "--max-iterations", "1", "--mode", "raw"]
    assert main([*base, "--memory-limit", "8GiB"]) == 0
    assert "executor dask (memory limit 8.0 GiB)" in capsys.readouterr().err
    assert main([*base, "--executor", "stream", "--scratch-dir", str(tmp_path / "no")]) == 2
    assert "scratch directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--memory-limit", "lots"])
