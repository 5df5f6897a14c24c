"""Estimator benchmark (issue 2): tomolock phase correlation vs scikit-image, same frames.

Speed: ms/frame on the same absorption frames for tomolock's ``PhaseCorrelator`` (full
resolution, 2x2 binning, and single-threaded for a like-for-like ratio) and for
``skimage.registration.phase_cross_correlation(upsample_factor=100)`` with the reference FFT
cached (``space="fourier"``, only the moving frame's FFT is paid per call).

Accuracy: pairs of simulated projections (reference at shift 0, frame at a random subpixel shift
of up to 10 % of the frame) rendered analytically from the phantom at the shifted coordinates, which
is exactly a crop of a larger field: content enters and leaves the frame. Both frames carry
independent Poisson noise at 100, 1000 and 10000 mean flat counts/px and are flat/dark normalised
with the noise-free flat field. Errors are compared with the Poisson Cramer-Rao bound computed
from the noise-free expected counts of both frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft
from skimage.registration import phase_cross_correlation

from benchmarks.common import progress, summarise_ms, time_per_call
from tomolock.devices.sim.scan import ScanConfig, ScanSimulator
from tomolock.service.estimate import PhaseCorrelator, to_absorption

UPSAMPLE = 100


def _absorption(sim: ScanSimulator, raw: np.ndarray) -> np.ndarray:
    """Flat/dark-normalised absorption image with the simulator's noise-free flat and dark."""
    dark = np.float32(sim.config.dark_level)
    return to_absorption((raw.astype(np.float32) - dark) / sim.flat_field)


def _skimage_estimator(reference: np.ndarray):
    ref_f = scipy.fft.fft2(reference)

    def estimate(frame: np.ndarray) -> tuple[float, float]:
        shift, _, _ = phase_cross_correlation(
            ref_f, scipy.fft.fft2(frame), space="fourier", upsample_factor=UPSAMPLE
        )
        # skimage returns the shift that registers the frame; tomolock reports content motion.
        return -float(shift[0]), -float(shift[1])

    return estimate


def _speed(size: int, n_frames: int, seed: int) -> dict[str, Any]:
    sim = ScanSimulator(ScanConfig(shape=(size, size), counts=1000.0, seed=seed))
    rng = np.random.default_rng(seed)
    angle = 37.0
    reference = _absorption(sim, sim.render(angle, (0.0, 0.0), rng=rng))
    shifts = rng.uniform(-0.05 * size, 0.05 * size, size=(n_frames, 2))
    frames = [_absorption(sim, sim.render(angle, tuple(s), rng=rng)) for s in shifts]
    variants = {
        "tomolock_full": PhaseCorrelator(reference, upsample=UPSAMPLE),
        "tomolock_full_1thread": PhaseCorrelator(reference, upsample=UPSAMPLE, workers=1),
        "tomolock_bin2": PhaseCorrelator(reference, upsample=UPSAMPLE, binning=2),
    }
    out: dict[str, Any] = {}
    for name, pc in variants.items():
        out[name] = summarise_ms(time_per_call(pc.estimate, frames))
    out["skimage_upsample100_cached_ref"] = summarise_ms(
        time_per_call(_skimage_estimator(reference), frames)
    )
    base = out["skimage_upsample100_cached_ref"]["ms_median"]
    out["speedup_vs_skimage"] = {
        name: round(base / out[name]["ms_median"], 2) for name in variants
    }
    return out


def _accuracy(size: int, counts: float, n_trials: int, seed: int) -> dict[str, Any]:
    sim = ScanSimulator(ScanConfig(shape=(size, size), counts=counts, seed=seed))
    rng = np.random.default_rng(seed + 1)
    angles = np.linspace(0.0, 170.0, n_trials)
    err_t, err_s, crlb_var = [], [], []
    for angle in angles:
        truth = rng.uniform(-0.1 * size, 0.1 * size, size=2)
        ref = _absorption(sim, sim.render(angle, (0.0, 0.0), rng=rng))
        frame = _absorption(sim, sim.render(angle, tuple(truth), rng=rng))
        est = PhaseCorrelator(ref, upsample=UPSAMPLE).estimate(frame)
        err_t.append((est.dy - truth[0], est.dx - truth[1]))
        err_s.append(np.subtract(_skimage_estimator(ref)(frame), truth))
        sy, sx = sim.crlb_shift(angle, (0.0, 0.0), both_noisy=True)
        crlb_var.append((sy**2 + sx**2) / 2)
    crlb = float(np.sqrt(np.mean(crlb_var)))

    def stats(errors: list) -> dict[str, float]:
        e = np.asarray(errors, dtype=float)
        rms = float(np.sqrt(np.mean(e**2)))  # per-axis RMS over both axes
        return {"rms_px": round(rms, 5), "max_abs_px": round(float(np.abs(e).max()), 4),
                "rms_over_crlb": round(rms / crlb, 2)}

    return {"crlb_px": round(crlb, 5), "n_trials": n_trials,
            "tomolock": stats(err_t), "skimage": stats(err_s)}


def run(*, quick: bool = False) -> dict[str, Any]:
    """Run speed and accuracy comparisons; returns a JSON-serialisable dict."""
    sizes = (512, 1024) if quick else (512, 1024, 2048)
    speed_frames = {512: 30, 1024: 16, 2048: 10}
    trials = {512: 12, 1024: 8, 2048: 6} if not quick else {512: 4, 1024: 3}
    result: dict[str, Any] = {"upsample": UPSAMPLE, "speed": {}, "accuracy": {}}
    for size in sizes:
        progress(f"estimator speed {size}x{size} ({speed_frames[size]} frames)")
        result["speed"][f"{size}"] = _speed(size, speed_frames[size] // (3 if quick else 1), seed=1)
    for size in sizes:
        for counts in (100.0, 1000.0, 10000.0):
            progress(f"estimator accuracy {size}x{size} at {counts:g} counts")
            result["accuracy"][f"{size}@{counts:g}"] = _accuracy(size, counts, trials[size], seed=2)
    result["targets"] = {
        "speedup_full_2048": ">= 6", "speedup_bin2_2048": ">= 20",
        "rms_over_crlb_1000counts_1024_2048": "<= 5",
    }
    return result
