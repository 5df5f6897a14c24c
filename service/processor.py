"""Per-frame computation of the live service: normalise, choose a reference, estimate.

Pure computation (no sockets, no asyncio): the pipeline runs :meth:`FrameProcessor.process` in
a worker thread. One processor serves one scan at a time; it is not thread-safe (the
correlators reuse buffers), so the pipeline keeps a single worker.

Strategies, chosen per frame and recorded:

``reference_scan``
    A reference projection within ``reference_angle_tolerance_deg`` exists (from a prior
    reference scan): 2-D phase correlation gives ``dy, dx``.
``first_n``
    No reference-scan projection, but one of this scan's first ``first_n`` projections is at
    this angle (a 360-degree scan coming round, a return-to-start check): phase correlation
    against it.
``mass_profile``
    No reference at this angle: the integrated-mass row profile against the scan's first
    projection gives ``dy`` only (rotation invariant); ``dx`` is not measured online.
``reference_acquired``
    The scan is itself a reference scan: the frame is stored as a reference.

A ``check`` scan (the ``drift_check`` plan) is estimated like a measurement scan; its
absorption frames, returned in :attr:`FrameResult.absorption`, feed the 0/180-degree pair of
:mod:`tomolock.service.drift_check`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tomolock.service.config import EstimateSettings
from tomolock.service.estimate import (
    FlatDarkNormaliser,
    InvalidFrameError,
    ShiftEstimate,
    beam_intensity_factor,
    mass_profile_shift,
    to_absorption,
)
from tomolock.service.references import ReferenceBank
from tomolock.service.wire import SCAN_ROLES

ScanRole = Literal["measurement", "reference", "check"]


@dataclass(frozen=True)
class FrameResult:
    """What the estimators made of one projection.

    Attributes
    ----------
    frame, angle_deg, t : int, float, float
        From the frame header (``t`` = exposure mid-time, s since the epoch).
    strategy : str
        ``"reference_scan"``, ``"mass_profile"``, ``"reference_acquired"`` or ``"rejected"``.
    estimate : ShiftEstimate or None
        The estimate used (``dx`` NaN when only the vertical axis is measured).
    reference_position_um : dict
        Lab position (stage offset + modelled drift, um) the chosen reference carried; the
        frame's drift is ``estimate (um) + reference_position - stage offset now``.
    beam_factor : float
        Relative beam intensity of the frame (open-beam median of the transmission).
    error : str or None
        Why the frame was rejected (invalid frame, no flat yet, ...).
    process_ms : float
        Wall time spent in :meth:`FrameProcessor.process`.
    absorption : numpy.ndarray or None
        The normalised absorption image the estimate used (a fresh array, never reused by the
        processor); None for rejected frames.
    """

    frame: int
    angle_deg: float
    t: float
    strategy: str
    estimate: ShiftEstimate | None = None
    reference_angle_deg: float | None = None
    reference_position_um: dict[str, float] = field(default_factory=dict)
    beam_factor: float = math.nan
    error: str | None = None
    process_ms: float = 0.0
    absorption: np.ndarray | None = field(default=None, repr=False, compare=False)


class FrameProcessor:
    """Normalise projections and estimate their drift for one scan at a time.

    Parameters
    ----------
    settings : EstimateSettings
        Estimator options (upsample, binning, window, reference tolerance, ...).
    """

    def __init__(self, settings: EstimateSettings | None = None) -> None:
        self.settings = settings or EstimateSettings()
        s = self.settings
        self.references = ReferenceBank(
            tolerance_deg=s.reference_angle_tolerance_deg,
            correlator_kwargs={
                "upsample": s.upsample,
                "binning": s.binning,
                "window": s.window,
                "lowpass": s.lowpass,
                "roi": s.roi,
                "periodic_smooth": s.periodic_smooth,
                "workers": s.workers,
            },
        )
        # The first N projections of the current scan, for frames that revisit their angles.
        self.scan_references = ReferenceBank(
            tolerance_deg=s.reference_angle_tolerance_deg,
            correlator_kwargs=self.references.correlator_kwargs,
        )
        self.first_n = s.first_n
        self.normaliser = FlatDarkNormaliser()
        self.role: ScanRole = "measurement"
        self._first: np.ndarray | None = None  # first projection (mass-profile reference)
        self._buf: np.ndarray | None = None

    def begin_scan(self, role: ScanRole, *, keep_dark_flat: bool = False) -> None:
        """Start a scan: references are kept across scans, the first projection is not.

        A reference scan replaces the reference bank.
        """
        if role not in SCAN_ROLES:
            raise ValueError(f"scan role must be one of {SCAN_ROLES}, got {role!r}")
        self.role = role
        self._first = None
        self.scan_references.clear()
        if role == "reference":
            self.references.clear()
        if not keep_dark_flat:
            self.normaliser.reset()
            self._buf = None

    def add_dark(self, image: np.ndarray) -> None:
        """Accumulate a dark frame."""
        self.normaliser.add_dark(image)

    def add_flat(self, image: np.ndarray) -> None:
        """Accumulate a flat (open-beam) frame."""
        self.normaliser.add_flat(image)

    def _absorption(self, raw: np.ndarray) -> tuple[np.ndarray, float]:
        if self._buf is None or self._buf.shape != raw.shape:
            self._buf = np.empty(raw.shape, np.float32)
        trans = self.normaliser.normalise(raw, out=self._buf)
        beam = beam_intensity_factor(trans)
        trans /= np.float32(beam)
        # A fresh array: references and the first projection keep it beyond this call.
        return to_absorption(trans), beam

    def process(
        self,
        frame: int,
        angle_deg: float,
        t: float,
        raw: np.ndarray,
        *,
        position_um: dict[str, float] | None = None,
    ) -> FrameResult:
        """Estimate the drift of one raw projection.

        Parameters
        ----------
        frame, angle_deg, t
            Frame number, rotation angle (deg) and exposure time (s).
        raw : numpy.ndarray
            Raw detector counts.
        position_um : dict, optional
            The lab position the frame carries (stage offset plus the model's drift estimate
            at its exposure), stored with the frame when it becomes a reference (reference
            scans, and the first ``first_n`` projections of a scan).

        Returns
        -------
        FrameResult
            Never raises for a bad frame: the result has ``strategy="rejected"`` and ``error``.
        """
        t0 = time.perf_counter()

        def done(**kw: object) -> FrameResult:
            return FrameResult(
                frame=frame, angle_deg=angle_deg, t=t,
                process_ms=(time.perf_counter() - t0) * 1e3, **kw,  # type: ignore[arg-type]
            )

        try:
            absorption, beam = self._absorption(raw)
        except InvalidFrameError as exc:
            return done(strategy="rejected", error=str(exc))
        if self._first is None:
            self._first = absorption
        if self.role == "reference":
            if not math.isfinite(angle_deg):
                return done(strategy="rejected", error="reference frame without an angle")
            self.references.add(angle_deg, absorption, position_um=position_um or {})
            return done(strategy="reference_acquired", beam_factor=beam, absorption=absorption)
        try:
            for strategy, bank in (
                ("reference_scan", self.references), ("first_n", self.scan_references)
            ):
                match = bank.match(angle_deg)
                if match is not None:
                    est = match.correlator.estimate(absorption)
                    return done(
                        strategy=strategy, estimate=est, beam_factor=beam,
                        reference_angle_deg=match.angle_deg,
                        reference_position_um=dict(match.position_um), absorption=absorption,
                    )
            est = mass_profile_shift(self._first, absorption, upsample=self.settings.upsample)
        except InvalidFrameError as exc:
            return done(strategy="rejected", error=str(exc), beam_factor=beam)
        finally:
            if (
                len(self.scan_references) < self.first_n
                and math.isfinite(angle_deg)
                and position_um is not None
            ):
                self.scan_references.add(angle_deg, absorption, position_um=position_um,
                                         source="first_n")
        return done(strategy="mass_profile", estimate=est, beam_factor=beam,
                    absorption=absorption)
