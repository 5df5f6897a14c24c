"""Reference projections for the live estimators, chosen per frame.

Projections of a rotating sample change with angle, so a frame can only be phase-correlated
against a reference taken at (nearly) the same angle: a prior low-dose *reference scan* at the
same angles. Frames without such a reference fall back to the rotation-invariant estimators
(integrated-mass row profile against the first projection of the scan, for the vertical axis).

Memory: references are kept as float32 absorption images (16 MiB each at 2048²); correlators,
which also hold a cached spectrum and work buffers, are built lazily and kept in a small LRU
cache because consecutive frames use neighbouring references.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from tomolock.service.estimate import PhaseCorrelator


@dataclass(frozen=True)
class ReferenceMatch:
    """The reference chosen for a frame."""

    angle_deg: float
    index: int
    correlator: PhaseCorrelator
    position_um: dict[str, float]


class ReferenceBank:
    """Reference projections indexed by rotation angle.

    Parameters
    ----------
    tolerance_deg : float
        Largest angle difference at which a reference is used for a frame.
    correlator_kwargs : dict
        Options passed to :class:`PhaseCorrelator` (upsample, binning, window, ...).
    cache_size : int
        Correlators kept alive (each holds FFT buffers of about 3 frames).
    """

    def __init__(
        self,
        *,
        tolerance_deg: float = 0.25,
        correlator_kwargs: dict[str, Any] | None = None,
        cache_size: int = 4,
    ) -> None:
        if tolerance_deg <= 0:
            raise ValueError(f"tolerance_deg must be > 0, got {tolerance_deg}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.tolerance_deg = float(tolerance_deg)
        self.correlator_kwargs = dict(correlator_kwargs or {})
        self.cache_size = cache_size
        self._angles: list[float] = []  # sorted, reduced to [0, 360)
        self._images: list[np.ndarray] = []
        self._positions: list[dict[str, float]] = []
        self._cache: OrderedDict[int, PhaseCorrelator] = OrderedDict()
        self.shape: tuple[int, int] | None = None
        self.source: str | None = None
        #: Scan the references were taken in (set by the pipeline).
        self.source_scan: str | None = None

    def __len__(self) -> int:
        return len(self._angles)

    def clear(self) -> None:
        """Forget every reference."""
        self._angles.clear()
        self._images.clear()
        self._positions.clear()
        self._cache.clear()
        self.shape = None
        self.source = None
        self.source_scan = None

    def add(
        self,
        angle_deg: float,
        absorption: np.ndarray,
        *,
        position_um: dict[str, float] | None = None,
        source: str = "reference_scan",
    ) -> None:
        """Add (or replace) the reference at ``angle_deg``.

        ``position_um`` is the lab position the reference carries (stage offset plus the
        drift model's estimate at its exposure, per axis): an image shift against this
        reference is relative to that position.

        Raises
        ------
        ValueError
            For a non-finite angle, a non-2-D image, or a shape unlike the other references.
        """
        if not np.isfinite(angle_deg):
            raise ValueError(f"reference angle must be finite, got {angle_deg}")
        img = np.asarray(absorption, dtype=np.float32)
        if img.ndim != 2:
            raise ValueError(f"reference must be a 2-D image, got shape {img.shape}")
        if self.shape is not None and img.shape != self.shape:
            raise ValueError(f"reference shape {img.shape} differs from the bank's {self.shape}")
        self.shape = img.shape
        self.source = source
        a = float(angle_deg) % 360.0
        i = bisect.bisect_left(self._angles, a)
        if i < len(self._angles) and abs(self._angles[i] - a) < 1e-9:
            self._images[i] = img
            self._positions[i] = dict(position_um or {})
            self._cache.pop(i, None)
            return
        self._angles.insert(i, a)
        self._images.insert(i, img)
        self._positions.insert(i, dict(position_um or {}))
        self._cache.clear()  # indices moved

    def image(self, index: int) -> np.ndarray:
        """Return the reference image at ``index`` (as returned in :class:`ReferenceMatch`)."""
        return self._images[index]

    def nearest(self, angle_deg: float) -> tuple[int, float] | None:
        """Index and angular distance of the closest reference, or None if the bank is empty."""
        if not self._angles:
            return None
        a = float(angle_deg) % 360.0
        i = bisect.bisect_left(self._angles, a)
        best: tuple[int, float] | None = None
        for j in (i - 1, i % len(self._angles), 0, len(self._angles) - 1):
            d = abs(self._angles[j] - a)
            d = min(d, 360.0 - d)  # wrap-around at 0/360
            if best is None or d < best[1]:
                best = (j, d)
        return best

    def prefetch(self, angle_deg: float) -> bool:
        """Build (and cache) the correlator for ``angle_deg`` ahead of its frame.

        Building costs about one frame's worth of FFTs; done between exposures it is off the
        frame-to-setpoint path. Returns whether a reference exists there.
        """
        return self.match(angle_deg) is not None

    def match(self, angle_deg: float) -> ReferenceMatch | None:
        """Return the reference for ``angle_deg``, or None when none is within tolerance."""
        if not np.isfinite(angle_deg):
            return None
        found = self.nearest(angle_deg)
        if found is None or found[1] > self.tolerance_deg:
            return None
        i = found[0]
        pc = self._cache.get(i)
        if pc is None:
            pc = PhaseCorrelator(self._images[i], **self.correlator_kwargs)
            self._cache[i] = pc
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return ReferenceMatch(
            angle_deg=self._angles[i], index=i, correlator=pc, position_um=self._positions[i]
        )
