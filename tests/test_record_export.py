import math

import h5py
import numpy as np
import pytest
from scipy import ndimage
from skimage import transform as tf

from tomolock.service.record.drift_log import DriftLog, DriftLogReader, DriftRow, EstimateRecord
from tomolock.service.record.export import EXPORT_DTYPE, export_shifts, residual_shifts


def _blob_image(shape=(64, 64), center=(30.0, 34.0)):
    r, c = np.mgrid[: shape[0], : shape[1]]
    img = np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * 4.0**2))
    img += 0.5 * np.exp(-((r - 20.0) ** 2 + (c - 40.0) ** 2) / (2 * 3.0**2))
    return img


def _write_log(path, residuals, *, dup_frame=None):
    with DriftLog(path, scan_id="exp", pixel_size_um=0.03, estimators=("phase", "mass")) as log:
        for i, (dy, dx) in enumerate(residuals):
            log.append(
                DriftRow(
                    frame=i, angle_deg=2.0 * i, t=float(i), residual_dy_px=dy, residual_dx_px=dx
                )
            )
        if dup_frame is not None:
            log.append(
                DriftRow(
                    frame=dup_frame, angle_deg=99.0, t=99.0, residual_dy_px=7.0, residual_dx_px=8.0
                )
            )


def test_exported_shift_undoes_drift_with_documented_signs(tmp_path):
    """Synthetic projections moved by known (dy, dx); undo them as the docstring says."""
    ref = _blob_image()
    truth = [(2.0, -3.0), (-1.5, 4.25), (0.0, 0.0)]
    # frame(r, c) = ref(r - dy, c - dx): content moved by +dy rows, +dx columns
    frames = [ndimage.shift(ref, (dy, dx), order=3) for dy, dx in truth]
    _write_log(tmp_path / "log.h5", truth)
    out = export_shifts(tmp_path / "log.h5", tmp_path / "shifts.h5")
    with h5py.File(out) as f:
        dy, dx = f["dy_px"][()], f["dx_px"][()]
        assert "shift_images(prj, sx=dy_px" in f.attrs["convention"]
    inner = (slice(12, -12), slice(12, -12))
    for k, frame in enumerate(frames):
        # scipy: shift by the negative
        back = ndimage.shift(frame, (-dy[k], -dx[k]), order=3)
        assert np.abs(back - ref)[inner].max() < 0.02
        # tomopy.prep.alignment.shift_images body (tomopy itself is not a dependency):
        #   tform = SimilarityTransform(translation=(sy, sx)); warp(prj, tform, order=5)
        sx, sy = dy[k], dx[k]
        tomopy_like = tf.warp(frame, tf.SimilarityTransform(translation=(sy, sx)), order=5)
        assert np.abs(tomopy_like - ref)[inner].max() < 0.02
        if abs(dy[k]) + abs(dx[k]) > 0:  # the opposite sign must fail
            wrong = tf.warp(frame, tf.SimilarityTransform(translation=(-sy, -sx)), order=5)
            assert np.abs(wrong - ref)[inner].max() > 0.1


def test_formats_agree_and_duplicates_keep_last(tmp_path):
    truth = [(0.5, -0.25), (1.0, 2.0), (-3.0, 0.125)]
    _write_log(tmp_path / "log.h5", truth, dup_frame=1)
    h5 = export_shifts(tmp_path / "log.h5", tmp_path / "s.h5")
    npy = np.load(export_shifts(tmp_path / "log.h5", tmp_path / "s.npy"))
    csv = np.loadtxt(export_shifts(tmp_path / "log.h5", tmp_path / "s.csv"), delimiter=",")
    assert npy.dtype == EXPORT_DTYPE
    np.testing.assert_array_equal(npy["frame"], [0, 1, 2])
    np.testing.assert_allclose(npy["dy_px"], [0.5, 7.0, -3.0])
    np.testing.assert_allclose(npy["dx_px"], [-0.25, 8.0, 0.125])
    np.testing.assert_allclose(npy["angle_deg"], [0.0, 99.0, 4.0])
    np.testing.assert_allclose(csv[:, 2], npy["dy_px"])
    np.testing.assert_allclose(csv[:, 3], npy["dx_px"])
    with h5py.File(h5) as f:
        np.testing.assert_allclose(f["dx_px"][()], npy["dx_px"])
        assert f.attrs["scan_id"] == "exp"
    with pytest.raises(ValueError, match="unsupported export format"):
        export_shifts(tmp_path / "log.h5", tmp_path / "s.txt")


def test_missing_residual_falls_back_to_most_confident_estimator(tmp_path):
    path = tmp_path / "log.h5"
    with DriftLog(path, scan_id="fb", pixel_size_um=0.03, estimators=("phase", "mass")) as log:
        log.append(
            DriftRow(
                frame=0,
                angle_deg=0,
                t=0,
                residual_dy_px=1.0,
                residual_dx_px=1.0,
                estimates={"phase": EstimateRecord(9, 9, 0.9, 0)},
            )
        )
        log.append(
            DriftRow(
                frame=1,
                angle_deg=1,
                t=1,
                estimates={
                    "phase": EstimateRecord(2.0, 3.0, 0.4, 0),
                    "mass": EstimateRecord(5.0, 6.0, 0.8, 0),
                },
            )
        )
        log.append(
            DriftRow(
                frame=2,
                angle_deg=2,
                t=2,
                estimates={
                    "phase": EstimateRecord(2.0, 3.0, 0.4, 0),
                    "mass": EstimateRecord(math.nan, 6.0, 0.99, 0),
                },
            )
        )
        log.append(DriftRow(frame=3, angle_deg=3, t=3))
    s = residual_shifts(DriftLogReader(path))
    np.testing.assert_array_equal(s["source"], [-1, 1, 0, -2])
    np.testing.assert_allclose(s["dy_px"][:3], [1.0, 5.0, 2.0])
    np.testing.assert_allclose(s["dx_px"][:3], [1.0, 6.0, 3.0])
    assert np.isnan(s["dy_px"][3])
