"""Drift check: rotation-centre offset and drift from a check scan's 0/180-degree pair.

The ``drift_check`` plan streams a short scan announced with ``role="check"`` (projections at
``theta`` and ``theta + 180``); the service estimates and records its frames as usual but
never moves the stage for it. :class:`DriftCheckCollector` takes the scan's normalised
absorption frames (from :class:`~tomolock.service.processor.FrameProcessor`), pairs the first
frames whose angles differ by 180 degrees (mod 360, within ``tolerance_deg``) and computes
:func:`~tomolock.service.estimate.mirror_pair_offset` on them:

* ``centre_offset_px``: rotation-axis column minus the frame centre ``(width - 1) / 2`` (the
  mean horizontal drift of the two exposures is part of it: that is the present state);
* ``dy_px``: vertical shift of the 180-degree frame relative to the first;
* ``reference_d*_px``: drift of the first frame against the reference scan's projection at
  its angle, when the service holds one.

:meth:`DriftCheckCollector.add` runs on the pipeline's numerics worker thread; the result
store behind :meth:`~DriftCheckCollector.latest` and :meth:`~DriftCheckCollector.get` is
locked, so the API reads it from the event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tomolock.service.api.models import DriftCheckResult
from tomolock.service.config import EstimateSettings
from tomolock.service.estimate import InvalidFrameError, mirror_pair_offset
from tomolock.service.processor import FrameResult

__all__ = ["DriftCheckCollector", "DriftCheckResult", "is_mirror_pair"]

log = logging.getLogger(__name__)

#: Pending frames kept per check scan while waiting for a partner 180 degrees away.
_MAX_PENDING = 16


def is_mirror_pair(angle_a: float, angle_b: float, tolerance_deg: float = 0.5) -> bool:
    """Whether two angles (degrees) are 180 degrees apart, modulo 360, within a tolerance."""
    diff = (float(angle_b) - float(angle_a)) % 360.0
    return abs(diff - 180.0) <= tolerance_deg


@dataclass(frozen=True)
class _Pending:
    frame: int
    angle_deg: float
    t: float
    absorption: np.ndarray
    reference: tuple[float, float, float] | None  # (dx, dy, confidence) vs the reference scan


class DriftCheckCollector:
    """Pair a check scan's projections 180 degrees apart and keep the last results.

    Parameters
    ----------
    settings : EstimateSettings, optional
        Estimator options; ``upsample``, ``window``, ``lowpass``, ``periodic_smooth`` and
        ``workers`` are used for the pair's phase correlation (not ``roi`` or ``binning``:
        the mirrored frame would need a mirrored region, and the check wants full
        resolution).
    tolerance_deg : float
        How far from exactly 180 degrees apart (mod 360) two angles may be.
    max_results : int
        Results kept, newest last (one per check scan).
    clock : callable
        Time source of the results' ``time`` (Unix seconds).
    """

    def __init__(
        self,
        settings: EstimateSettings | None = None,
        *,
        tolerance_deg: float = 0.5,
        max_results: int = 32,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(tolerance_deg) and 0 < tolerance_deg < 90):
            raise ValueError(f"tolerance_deg must be in (0, 90), got {tolerance_deg!r}")
        if isinstance(max_results, bool) or int(max_results) != max_results or max_results < 1:
            raise ValueError(f"max_results must be an integer >= 1, got {max_results!r}")
        s = settings or EstimateSettings()
        self.correlator_options: dict[str, Any] = {
            "upsample": s.upsample, "window": s.window, "lowpass": s.lowpass,
            "periodic_smooth": s.periodic_smooth, "workers": s.workers,
        }
        self.tolerance_deg = float(tolerance_deg)
        self.max_results = int(max_results)
        self.clock = clock
        self._scan: str | None = None
        self._pending: deque[_Pending] = deque(maxlen=_MAX_PENDING)
        self._results: OrderedDict[str, DriftCheckResult] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ worker thread
    def add(self, scan_id: str, result: FrameResult) -> DriftCheckResult | None:
        """Take one processed frame of check scan ``scan_id``; return a result once paired.

        Frames without an absorption image or a finite angle are ignored. The first pair of a
        scan gives its result; later frames of that scan are ignored. A frame of another scan
        drops the pending frames of the previous one. A pair that cannot be correlated
        (empty or mismatched frames) is logged and dropped: this never raises for bad frames.
        """
        if scan_id != self._scan:
            self._scan = scan_id
            self._pending.clear()
        if result.absorption is None or not math.isfinite(result.angle_deg):
            return None
        with self._lock:
            if scan_id in self._results:
                return None
        current = _Pending(result.frame, float(result.angle_deg), float(result.t),
                           result.absorption, _reference_shift(result))
        partner = next(
            (p for p in self._pending
             if is_mirror_pair(p.angle_deg, current.angle_deg, self.tolerance_deg)),
            None,
        )
        if partner is None:
            self._pending.append(current)
            return None
        self._pending.clear()
        try:
            checked = self._compute(scan_id, partner, current)
        except InvalidFrameError as exc:
            log.error("drift check %s: frames %d and %d not usable: %s", scan_id,
                      partner.frame, current.frame, exc)
            return None
        with self._lock:
            self._results[scan_id] = checked
            while len(self._results) > self.max_results:
                self._results.popitem(last=False)
        return checked

    def _compute(self, scan_id: str, first: _Pending, second: _Pending) -> DriftCheckResult:
        if first.absorption.shape != second.absorption.shape:
            raise InvalidFrameError(
                f"check pair frames differ in shape: {first.absorption.shape} vs "
                f"{second.absorption.shape}"
            )
        pair = mirror_pair_offset(first.absorption, second.absorption, **self.correlator_options)
        width = int(first.absorption.shape[1])
        ref = first.reference
        return DriftCheckResult(
            scan_id=scan_id,
            angle_deg=first.angle_deg,
            angle_180_deg=second.angle_deg,
            frames=(first.frame, second.frame),
            width_px=width,
            centre_offset_px=pair.centre_offset,
            axis_column_px=(width - 1) / 2.0 + pair.centre_offset,
            dy_px=pair.dy,
            confidence=float(np.clip(pair.confidence, 0.0, 1.0)),
            time=self.clock(),
            exposure_times=(first.t, second.t),
            reference_dx_px=ref[0] if ref else None,
            reference_dy_px=ref[1] if ref else None,
            reference_confidence=ref[2] if ref else None,
        )

    # ------------------------------------------------------------------ any thread
    def latest(self) -> DriftCheckResult | None:
        """Return the newest result, or None before the first check."""
        with self._lock:
            return next(reversed(self._results.values()), None)

    def get(self, scan_id: str) -> DriftCheckResult | None:
        """Return the result of check scan ``scan_id``, or None when there is none (yet)."""
        with self._lock:
            return self._results.get(scan_id)

    def results(self) -> list[DriftCheckResult]:
        """Return the kept results, oldest first."""
        with self._lock:
            return list(self._results.values())


def _reference_shift(result: FrameResult) -> tuple[float, float, float] | None:
    # Only a reference-scan match measures drift since the reference; first_n and the mass
    # profile compare within this scan.
    est = result.estimate
    if result.strategy != "reference_scan" or est is None:
        return None
    return float(est.dx), float(est.dy), float(est.confidence)
