import json
import math
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from tomolock.service.record.drift_log import (
    FLAG_NAMES,
    DriftLog,
    DriftLogReader,
    DriftRow,
    EstimateRecord,
    decode_flags,
    encode_flags,
    scan_filename,
)

EST = ("phase", "mass")


def _row(i, **kw):
    args = dict(
        frame=i,
        angle_deg=0.5 * i,
        t=1000.0 + 0.1 * i,
        estimates={"phase": EstimateRecord(0.1 * i, -0.2 * i, 0.9, 1)},
        residual_dy_px=0.01 * i,
        residual_dx_px=-0.02 * i,
        drift_um={"x": 0.003 * i, "z": -0.001 * i},
        drift_std_um={"x": 0.001, "z": 0.002},
        applied_um={"x": -0.003 * i},
        decision="move",
        flags=["step_clipped"] if i % 2 else 0,
    )
    args.update(kw)
    return DriftRow(**args)


def test_roundtrip_rows_and_attributes(tmp_path):
    path = tmp_path / "s.h5"
    with DriftLog(
        path,
        scan_id="scan-A",
        pixel_size_um=0.03,
        estimators=EST,
        config={"mode": "apply"},
        method_codes={"full": 0, "local": 1},
    ) as log:
        for i in range(5):
            assert log.append(_row(i)) == i
        assert len(log) == 5
    r = DriftLogReader(path)
    assert len(r) == 5 and r.scan_id == "scan-A" and r.pixel_size_um == 0.03
    assert r.attrs["config"] == {"mode": "apply"}
    assert r.attrs["method_codes"] == {"full": 0, "local": 1}
    assert r.attrs["tomolock_version"] and r.attrs["start_time"] <= r.attrs["end_time"]
    assert r.estimators == EST
    np.testing.assert_array_equal(r.rows["frame"], np.arange(5))
    np.testing.assert_allclose(r.rows["angle_deg"], 0.5 * np.arange(5))
    np.testing.assert_allclose(r.rows["drift_um"][:, 0], 0.003 * np.arange(5))
    assert np.isnan(r.rows["drift_um"][:, 1]).all()  # y not given
    assert np.isnan(r.rows["applied_um"][:, 2]).all()
    ph = r.estimates("phase")
    np.testing.assert_allclose(ph["dx_px"], -0.2 * np.arange(5))
    assert (ph["method"] == 1).all()
    mass = r.estimates("mass")
    assert np.isnan(mass["dy_px"]).all() and (mass["method"] == -1).all()
    assert r.decisions() == ["move"] * 5
    assert r.flags()[1] == ["step_clipped"] and r.flags()[0] == []
    with pytest.raises(KeyError):
        r.estimates("nope")
    with h5py.File(path) as f:
        ds = f["drift"]
        assert ds.chunks is not None and ds.maxshape == (None,)


def test_reopen_same_scan_appends_and_other_scan_refused(tmp_path):
    path = tmp_path / scan_filename("scan/B 1")
    assert path.name == "scan_B_1.drift.h5"
    with DriftLog.for_scan(tmp_path, "scan/B 1", pixel_size_um=0.03, estimators=EST) as log:
        log.append(_row(0))
        log.append(_row(1))
    with DriftLog(path, scan_id="scan/B 1", pixel_size_um=0.03, estimators=EST) as log:
        assert len(log) == 2
        log.append(_row(2))
    r = DriftLogReader(path)
    np.testing.assert_array_equal(r.rows["frame"], [0, 1, 2])
    with pytest.raises(ValueError, match="belongs to scan"):
        DriftLog(path, scan_id="other", pixel_size_um=0.03, estimators=EST)
    with pytest.raises(ValueError, match="estimators"):
        DriftLog(path, scan_id="scan/B 1", pixel_size_um=0.03, estimators=("phase",))
    with pytest.raises(ValueError, match="pixel size"):
        DriftLog(path, scan_id="scan/B 1", pixel_size_um=0.05, estimators=EST)
    assert len(DriftLogReader(path)) == 3  # refused opens changed nothing


def test_bad_rows_write_nothing(tmp_path):
    with DriftLog(tmp_path / "b.h5", scan_id="s", pixel_size_um=0.03, estimators=EST) as log:
        for bad, match in [
            (_row(-1), "frame"),
            (_row(0, decision="maybe"), "decision"),
            (_row(0, estimates={"cnn": (0, 0, 1, 0)}), "unknown estimators"),
            (_row(0, drift_um={"w": 1.0}), "unknown axes"),
            (_row(0, flags=["bogus"]), "unknown flag"),
            (_row(0, flags=1 << 40), "bits"),
        ]:
            with pytest.raises(ValueError, match=match):
                log.append(bad)
        assert len(log) == 0
    with pytest.raises(RuntimeError, match="closed"):
        log.append(_row(0))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scan_id": ""}, "scan_id"),
        ({"pixel_size_um": 0.0}, "pixel_size"),
        ({"estimators": ()}, "estimators"),
        ({"estimators": ("a", "a")}, "estimators"),
    ],
)
def test_bad_log_arguments(tmp_path, kw, match):
    args = dict(scan_id="s", pixel_size_um=0.03, estimators=EST)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        DriftLog(tmp_path / "x.h5", **args)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        DriftLogReader(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = [1, 2]
    with pytest.raises(ValueError, match="not a tomolock drift log"):
        DriftLogReader(tmp_path / "foreign.h5")
    with pytest.raises(ValueError, match="not a tomolock drift log"):
        DriftLog(tmp_path / "foreign.h5", scan_id="s", pixel_size_um=0.03, estimators=EST)


def test_flags_roundtrip():
    names = ["stale", "outlier", "frame_dropped"]
    assert decode_flags(encode_flags(names)) == sorted(names, key=FLAG_NAMES.index)
    assert len(FLAG_NAMES) <= 32


WRITER = textwrap.dedent(
    """
    import sys
    from tomolock.service.record.drift_log import DriftLog, DriftRow, EstimateRecord
    log = DriftLog(sys.argv[1], scan_id="crash", pixel_size_um=0.03, estimators=["phase"])
    i = len(log)
    while True:
        log.append(DriftRow(frame=i, angle_deg=0.1 * i, t=float(i),
                            estimates={"phase": EstimateRecord(i, -i, 1.0, 0)},
                            residual_dy_px=float(i)))
        print(i + 1, flush=True)  # acknowledged: append() returned after flush
        i += 1
    """
)


def test_sigkill_loses_no_acknowledged_row(tmp_path):
    path = tmp_path / "crash.h5"
    for round_, target in enumerate((40, 95)):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        acked = 0
        while acked < target:
            line = proc.stdout.readline()
            assert line, "writer died early"
            acked = int(line)
        proc.send_signal(signal.SIGKILL)  # mid-stream: it keeps writing until the signal lands
        proc.wait(10)
        proc.stdout.close()
        r = DriftLogReader(path)
        assert len(r) >= acked, f"round {round_}: {len(r)} rows on disk, {acked} acknowledged"
        np.testing.assert_array_equal(r.rows["frame"], np.arange(len(r)))
        np.testing.assert_allclose(r.rows["est_dx_px"][:, 0], -np.arange(len(r)))
        assert math.isnan(r.attrs["end_time"])  # never closed cleanly
        assert json.loads(json.dumps(r.attrs["estimators"])) == ["phase"]
    # The second round reopened the crashed file and appended after the first round's rows.
    assert len(r) >= 95
