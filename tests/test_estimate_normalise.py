"""Flat/dark correction, beam-intensity normalisation, absorption, frame validation."""

from __future__ import annotations

import numpy as np
import pytest

from tomolock.service.estimate import (
    FlatDarkNormaliser,
    InvalidFrameError,
    beam_intensity_factor,
    normalise_beam_intensity,
    to_absorption,
    validate_frame,
)

SHAPE = (64, 80)


def detector(seed: int = 0):
    """Dark offset, open-beam flat and a sample transmission with known values."""
    rng = np.random.default_rng(seed)
    dark = np.round(100.0 + rng.uniform(-5, 5, SHAPE))
    gain = 2000.0 * (1.0 + 0.2 * np.sin(np.arange(SHAPE[1]) / 7.0))[None, :] * np.ones(SHAPE)
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    transmission = np.exp(-0.8 * np.exp(-((rows - 30) ** 2 + (cols - 40) ** 2) / 200.0))
    return dark, dark + gain, transmission


def test_flat_dark_normalisation_recovers_transmission():
    dark, flat, transmission = detector()
    norm = FlatDarkNormaliser()
    norm.add_dark(dark.astype(np.uint16))  # integer frames are accepted
    norm.add_flat(flat)
    raw = dark + transmission * (flat - dark)
    result = norm.normalise(raw)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, transmission, rtol=1e-5, atol=1e-4)


def test_running_means_of_darks_and_flats():
    dark, flat, _ = detector()
    norm = FlatDarkNormaliser(SHAPE)
    for delta in (-3.0, 0.0, 3.0):
        norm.add_dark(dark + delta)
    for delta in (-50.0, 10.0, 40.0, 0.0):
        norm.add_flat(flat + delta)
    assert (norm.n_darks, norm.n_flats) == (3, 4)
    np.testing.assert_allclose(norm.dark, dark, atol=1e-9)
    np.testing.assert_allclose(norm.flat, flat, atol=1e-9)
    norm.reset()
    assert norm.n_flats == 0
    with pytest.raises(InvalidFrameError, match="no flat field yet"):
        norm.normalise(flat)


def test_normaliser_without_dark_uses_zero_and_writes_into_out():
    _, flat, transmission = detector()
    norm = FlatDarkNormaliser()
    norm.add_flat(flat)
    out = np.empty(SHAPE, np.float32)
    result = norm.normalise(flat * transmission, out=out)
    assert result is out
    np.testing.assert_allclose(out, transmission, rtol=1e-5)


def test_normaliser_errors():
    dark, flat, _ = detector()
    norm = FlatDarkNormaliser()
    with pytest.raises(InvalidFrameError, match="no flat field yet"):
        norm.normalise(flat)
    norm.add_dark(dark)
    with pytest.raises(InvalidFrameError, match="does not match"):
        norm.add_flat(flat[:, :-1])
    broken = flat.copy()
    broken[3, 4] = dark[3, 4] - 1.0
    norm.add_flat(broken)
    with pytest.raises(InvalidFrameError, match=r"flat <= dark at 1 pixel"):
        norm.normalise(flat)
    norm.reset()
    norm.add_flat(flat)
    with pytest.raises(InvalidFrameError, match="does not match"):
        norm.normalise(flat[:10])
    with pytest.raises(InvalidFrameError, match="NaN"):
        norm.add_dark(np.full(SHAPE, np.nan))
    with pytest.raises(InvalidFrameError, match="saturated"):
        norm.normalise(np.full(SHAPE, 65535, np.uint16) - np.eye(*SHAPE, dtype=np.uint16))


def test_beam_intensity_factor_from_bright_fraction_and_background():
    _, _, transmission = detector()
    brighter = 1.3 * transmission
    assert beam_intensity_factor(brighter, subsample=1) == pytest.approx(1.3, rel=2e-3)
    background = np.zeros(SHAPE, bool)
    background[:, :5] = True
    assert beam_intensity_factor(brighter, background=background) == pytest.approx(1.3, rel=2e-3)
    scaled, factor = normalise_beam_intensity(brighter, subsample=1)
    assert factor == pytest.approx(1.3, rel=2e-3)
    np.testing.assert_allclose(scaled, transmission, rtol=3e-3)
    with pytest.raises(ValueError, match="selects no pixel"):
        beam_intensity_factor(brighter, background=np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="bright_fraction"):
        beam_intensity_factor(brighter, bright_fraction=0.0)
    with pytest.raises(InvalidFrameError, match="expected > 0"):
        beam_intensity_factor(-brighter)


def test_to_absorption_is_minus_log_and_clips():
    transmission = np.array([[1.0, np.exp(-2.0)], [0.0, -0.1]], np.float32)
    absorption = to_absorption(transmission, floor=1e-4)
    assert absorption.dtype == np.float32
    np.testing.assert_allclose(absorption[0], [0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(absorption[1], -np.log(1e-4), rtol=1e-6)
    with pytest.raises(InvalidFrameError, match="NaN"):
        to_absorption(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="floor"):
        to_absorption(transmission, floor=0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32, np.float64])
def test_validate_frame_accepts_supported_dtypes_and_returns_float32(dtype):
    frame = (np.arange(48).reshape(6, 8) % 7).astype(dtype)
    out = validate_frame(frame, expected_shape=(6, 8))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, frame.astype(np.float32))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.arange(10.0), "must be 2-D"),
        (np.zeros((0, 5)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "1 NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "1 infinite"),
        (np.ones((4, 4), np.float32), "constant"),
        (np.ones((4, 4), np.bool_), "unsupported dtype"),
        ([[1.0, 2.0]], "numpy array"),
    ],
)
def test_validate_frame_rejects_bad_frames(frame, message):
    with pytest.raises(InvalidFrameError, match=message):
        validate_frame(frame)


def test_validate_frame_shape_and_saturation():
    frame = np.arange(100, dtype=np.uint8).reshape(10, 10)
    with pytest.raises(InvalidFrameError, match=r"shape \(10, 10\) does not match .*\(10, 12\)"):
        validate_frame(frame, expected_shape=(10, 12))
    saturated = frame.copy()
    saturated[:2] = 255
    with pytest.raises(InvalidFrameError, match=r"saturated: 20\.0%"):
        validate_frame(saturated)
    assert validate_frame(saturated, max_saturated_fraction=0.25).shape == (10, 10)
    with pytest.raises(InvalidFrameError, match="saturated"):
        validate_frame(frame.astype(np.float32), saturation_value=50)
    assert validate_frame(frame.astype(np.float32)).max() == 99  # floats: no default limit
