"""Data Exchange input/output, drift-log matching and shift tables of the fine alignment."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import ndimage

from tomolock.service.align import (
    ProjectionFile,
    estimate_bytes,
    initial_shifts_from_log,
    write_data_exchange,
    write_raw_data_exchange,
    write_shifts,
)
from tomolock.service.align.io import data_chunks, read_absorption
from tomolock.service.record import DriftLog, DriftRow

SHAPE = (40, 48)


def _blob(shift=(0.0, 0.0)):
    r, c = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return 0.8 * np.exp(-((r - 20.0 - shift[0]) ** 2 + (c - 23.0 - shift[1]) ** 2) / 40.0)


def _raw_file(path, shifts, theta=None):
    white = np.full((3, *SHAPE), 1100.0)
    dark = np.full((2, *SHAPE), 100.0)
    data = np.stack([1000.0 * np.exp(-_blob(s)) + 100.0 for s in shifts]).astype(np.float32)
    theta = np.linspace(0, 180, len(shifts)) if theta is None else theta
    return write_raw_data_exchange(path, data, white, dark, theta)


def test_projection_file_roundtrip_and_absorption(tmp_path):
    path = _raw_file(tmp_path / "raw.h5", [(0, 0), (1, 2), (2, -1)])
    src = ProjectionFile.open(path)
    assert src.shape == (3, *SHAPE)
    np.testing.assert_allclose(src.theta_deg, [0, 90, 180])
    np.testing.assert_allclose(src.absorption(1, 2)[0], _blob((1, 2)), atol=1e-5)
    lazy = src.absorption_dask(2)
    assert lazy.chunks[0] == (2, 1)
    np.testing.assert_allclose(lazy.compute(), src.absorption(0, 3))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.__delitem__("exchange/theta"), "missing /exchange/theta"),
        (lambda f: f.__delitem__("exchange/data_white"), "missing /exchange/data_white"),
        (lambda f: (f.__delitem__("exchange/theta"),
                    f.create_dataset("exchange/theta", data=[0.0, 1.0])), "2 values for 3"),
        (lambda f: (f.__delitem__("exchange/data_dark"),
                    f.create_dataset("exchange/data_dark", data=np.full((1, *SHAPE), 5000.0))),
         "flat field not above the dark"),
        (lambda f: (f.__delitem__("exchange/data_dark"),
                    f.create_dataset("exchange/data_dark", data=np.zeros((1, 4, 4)))),
         "data_dark must be"),
    ],
)
def test_bad_projection_files_are_refused(tmp_path, mutate, message):
    path = _raw_file(tmp_path / "raw.h5", [(0, 0)] * 3)
    with h5py.File(path, "r+") as f:
        mutate(f)
    with pytest.raises(ValueError, match=message):
        ProjectionFile.open(path)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ProjectionFile.open(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        ProjectionFile.open(tmp_path / "text.h5")


def test_theta_in_radians_is_converted(tmp_path):
    path = _raw_file(tmp_path / "raw.h5", [(0, 0)] * 3)
    with h5py.File(path, "r+") as f:
        del f["exchange/theta"]
        f.create_dataset("exchange/theta", data=np.radians([0.0, 90.0, 180.0]))
        f["exchange/theta"].attrs["units"] = "rad"
    np.testing.assert_allclose(ProjectionFile.open(path).theta_deg, [0, 90, 180])


def test_initial_shifts_match_the_drift_log_by_angle(tmp_path):
    log_path = tmp_path / "scan.drift.h5"
    with DriftLog(log_path, scan_id="s1", pixel_size_um=0.03, estimators=("phase",)) as log:
        # Logged out of order, one frame without an estimate, one extra angle.
        for frame, angle, dy, dx in [(2, 2.0, 0.2, -0.2), (0, 0.0, 1.0, 2.0),
                                     (1, 1.0, float("nan"), float("nan")), (3, 7.0, 5.0, 5.0)]:
            log.append(DriftRow(frame=frame, angle_deg=angle, t=float(frame),
                                residual_dy_px=dy, residual_dx_px=dx))
    shifts, matched = initial_shifts_from_log(log_path, np.array([0.0, 1.0, 2.01]))
    np.testing.assert_allclose(shifts, [[1.0, 2.0], [0.0, 0.0], [0.2, -0.2]])
    assert matched.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="is it this scan's log"):
        initial_shifts_from_log(log_path, np.array([40.0, 50.0, 60.0]))


def test_shift_tables(tmp_path):
    theta = np.array([0.0, 90.0])
    shifts, initial = np.array([[0.5, -1.0], [0.25, 2.0]]), np.zeros((2, 2))
    np.testing.assert_allclose(np.load(write_shifts(tmp_path / "s.npy", theta, shifts,
                                                    initial))["dx_px"], [-1.0, 2.0])
    csv = np.loadtxt(write_shifts(tmp_path / "s.csv", theta, shifts, initial), delimiter=",")
    np.testing.assert_allclose(csv[:, 2:4], shifts)
    with h5py.File(write_shifts(tmp_path / "s.h5", theta, shifts, initial)) as f:
        np.testing.assert_allclose(f["dy_px"][()], [0.5, 0.25])
        assert "sx=dy_px" in f.attrs["convention"]
    with pytest.raises(ValueError, match="unsupported"):
        write_shifts(tmp_path / "s.txt", theta, shifts, initial)


def test_data_exchange_output_undoes_the_shifts(tmp_path):
    truth = np.array([[0.0, 0.0], [1.5, -2.25], [-1.0, 3.0], [2.0, 1.0]])
    src = ProjectionFile.open(_raw_file(tmp_path / "raw.h5", [tuple(s) for s in truth]))
    out = write_data_exchange(tmp_path / "aligned.h5", src, truth, initial=np.zeros((4, 2)),
                              reports=[{"level": 1}], options={"levels": [1]})
    inner = (slice(8, -8), slice(8, -8))
    with h5py.File(out) as f:
        # What dxchange.read_aps_32id reads: data, data_white, data_dark, theta (degrees).
        data, white, dark = (f[f"exchange/{n}"][()] for n in ("data", "data_white",
                                                               "data_dark"))
        theta = f["exchange/theta"][()]
        np.testing.assert_allclose(theta * np.pi / 180.0, f["exchange/theta_rad"][()])
        np.testing.assert_allclose(f["exchange/shift_dx_px"][()], truth[:, 1])
        assert f["process/tomolock_align"].attrs["mode"] == "shifted"
    assert data.dtype == np.float32 and white.shape == dark.shape == (1, *SHAPE)
    absorption = -np.log((data - dark) / (white - dark))  # tomopy.normalize + minus_log
    for k in range(4):
        assert np.abs(absorption[k] - _blob())[inner].max() < 0.01
    # The opposite sign would not line them up.
    wrong = ndimage.shift(src.absorption(1, 2)[0], tuple(truth[1]), order=3)
    assert np.abs(wrong - _blob())[inner].max() > 0.1


def test_data_exchange_raw_mode_copies_input(tmp_path):
    src = ProjectionFile.open(_raw_file(tmp_path / "raw.h5", [(0, 0), (1, 1)]))
    out = write_data_exchange(tmp_path / "raw_out.h5", src, np.ones((2, 2)),
                              initial=np.zeros((2, 2)), mode="raw")
    with h5py.File(out) as f, h5py.File(src.path) as g:
        np.testing.assert_array_equal(f["exchange/data"][()], g["exchange/data"][()])
        assert f["exchange/data_white"].shape == (3, *SHAPE)
    with pytest.raises(ValueError, match="mode"):
        write_data_exchange(tmp_path / "x.h5", src, np.ones((2, 2)), initial=np.zeros((2, 2)),
                            mode="cooked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shifts must be \(2, 2\)"):
        write_data_exchange(tmp_path / "x.h5", src, np.ones((3, 2)), initial=np.zeros((2, 2)))


def test_memory_model_numbers():
    full = estimate_bytes(2048, 2048, 2048, 1)
    assert full.stack_bytes == 32 * 2**30
    assert estimate_bytes(2048, 2048, 2048, 4).stack_bytes == 2 * 2**30
    assert full.peak_p2p_bytes < full.peak_in_memory_bytes
    with pytest.raises(ValueError):
        estimate_bytes(0, 10, 10)


def test_projection_files_are_chunked_in_row_bands(tmp_path):
    src = ProjectionFile.open(_raw_file(tmp_path / "raw.h5", [(0, 0), (1, 2), (2, -1)]))
    assert src.chunks == (1, 32, SHAPE[1]) == data_chunks((3, *SHAPE))
    assert data_chunks((5, 10, 7)) == (1, 10, 7)
    out = write_data_exchange(tmp_path / "aligned.h5", src, np.zeros((3, 2)),
                              initial=np.zeros((3, 2)))
    with h5py.File(out) as f:
        assert f["exchange/data"].chunks == (1, 32, SHAPE[1])
    # A box (projections x rows) reads the same numbers as whole projections.
    box = read_absorption(src.path, src.white, src.dark, (1, 3), (5, 37))
    np.testing.assert_array_equal(box, src.absorption(1, 3)[:, 5:37])
    rows = read_absorption(src.path, src.white[5:37], src.dark[5:37], (1, 3), (5, 37))
    np.testing.assert_array_equal(rows, box)
    with pytest.raises(ValueError, match="has no box"):
        read_absorption(src.path, src.white, src.dark, (2, 5))
    with pytest.raises(ValueError, match="missing /exchange/nope"):
        read_absorption(src.path, src.white, src.dark, (0, 1), dataset="exchange/nope")
    with pytest.raises(FileNotFoundError):
        read_absorption(tmp_path / "gone.h5", src.white, src.dark, (0, 1))
