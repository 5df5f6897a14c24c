"""Correction setpoints: from a predicted drift to fine-stage targets.

Conventions (shared by all of tomolock):

* Lab frame: ``x`` horizontal across the beam (detector columns), ``y`` along the beam,
  ``z`` vertical (detector rows); micrometres.
* The fine piezo stage sits *below* the rotation stage in the lab frame, so moving it by
  ``+m`` um moves the sample by ``+m`` um. The detector sees ``residual = drift + offset``,
  hence the correction is ``offset = -predicted_drift`` and the stage target is
  ``nominal + offset``.
* Image shift ``(dy, dx)`` px means the content moved by ``+dy`` rows and ``+dx`` columns.
  With :class:`DetectorMapping` ``dx_px = sign_x * x_um / pixel_size_um`` and
  ``dy_px = sign_z * z_um / pixel_size_um``; ``y`` (along the beam) is invisible in a
  projection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Lab-frame axes the fine stage may correct.
AXES: tuple[str, ...] = ("x", "y", "z")
#: Axes corrected unless configured otherwise (``y`` only matters for magnification).
DEFAULT_AXES: tuple[str, ...] = ("x", "z")
DEFAULT_PIXEL_SIZE_UM = 0.03


def validate_axes(axes: Iterable[str]) -> tuple[str, ...]:
    """Return ``axes`` as a tuple after checking each is one of :data:`AXES`, without repeats.

    Parameters
    ----------
    axes : iterable of str
        Axis names.

    Returns
    -------
    tuple of str
        The axes, in the given order.

    Raises
    ------
    ValueError
        On an unknown, repeated or empty axis list.
    """
    out = tuple(axes)
    if not out:
        raise ValueError("at least one axis is required")
    unknown = [a for a in out if a not in AXES]
    if unknown:
        raise ValueError(f"unknown axes {unknown}; allowed axes are {list(AXES)}")
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axes in {list(out)}")
    return out


@dataclass(frozen=True)
class DetectorMapping:
    """Mapping between detector pixel shifts and lab-frame displacements.

    Parameters
    ----------
    pixel_size_um : float
        Effective pixel size at the sample, micrometres (default 0.03 um = 30 nm).
    sign_x : {+1, -1}
        ``dx_px = sign_x * x_um / pixel_size_um`` (detector column direction vs lab ``x``).
    sign_z : {+1, -1}
        ``dy_px = sign_z * z_um / pixel_size_um`` (detector row direction vs lab ``z``).
    """

    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
    sign_x: int = 1
    sign_z: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pixel_size_um) and self.pixel_size_um > 0):
            raise ValueError(f"pixel_size_um must be finite and > 0, got {self.pixel_size_um!r}")
        for name in ("sign_x", "sign_z"):
            if getattr(self, name) not in (1, -1):
                raise ValueError(f"{name} must be +1 or -1, got {getattr(self, name)!r}")

    def px_to_um(self, dy_px: float, dx_px: float) -> dict[str, float]:
        """Convert an image shift to a lab displacement.

        Parameters
        ----------
        dy_px, dx_px : float
            Image shift, rows and columns (content moved by ``+dy``, ``+dx``).

        Returns
        -------
        dict
            ``{"x": um, "z": um}``.
        """
        return {
            "x": self.sign_x * dx_px * self.pixel_size_um,
            "z": self.sign_z * dy_px * self.pixel_size_um,
        }

    def um_to_px(self, x_um: float, z_um: float) -> tuple[float, float]:
        """Convert a lab displacement to an image shift.

        Parameters
        ----------
        x_um, z_um : float
            Lab-frame displacement, micrometres.

        Returns
        -------
        tuple of float
            ``(dy_px, dx_px)``.
        """
        return (
            self.sign_z * z_um / self.pixel_size_um,
            self.sign_x * x_um / self.pixel_size_um,
        )


@dataclass(frozen=True)
class Setpoint:
    """A stage correction for one upcoming exposure, before the interlocks.

    Non-finite numbers are kept as they are (not raised on) so that the interlocks can refuse
    them with the ``"non_finite"`` reason and the refusal is recorded.

    Attributes
    ----------
    scan_id : str
        Scan identifier.
    frame : int
        Frame number the correction is meant for.
    t_created : float
        When the setpoint was computed, seconds (same clock as the interlocks' ``now``).
    t_valid : float
        Exposure time the prediction targets, seconds.
    angle_deg : float
        Rotation angle of that exposure, degrees.
    targets_um : dict
        Absolute stage targets per corrected axis, ``nominal + offset``, micrometres.
    offsets_um : dict
        Correction offsets per axis, ``-predicted drift``, micrometres.
    nominal_um : dict
        Stage position per axis that means "no correction", micrometres.
    predicted_drift_um : dict
        Predicted sample drift per axis, micrometres.
    std_um : dict
        One-sigma uncertainty of the prediction per axis, micrometres.
    confidence : float
        Confidence of the source estimate/model in ``[0, 1]``.
    """

    scan_id: str
    frame: int
    t_created: float
    t_valid: float
    angle_deg: float
    targets_um: dict[str, float]
    offsets_um: dict[str, float]
    nominal_um: dict[str, float]
    predicted_drift_um: dict[str, float]
    std_um: dict[str, float]
    confidence: float
    axes: tuple[str, ...] = field(default=DEFAULT_AXES)

    def is_finite(self) -> bool:
        """Return True when every number that drives a move is finite."""
        values = [self.t_created, self.t_valid, self.angle_deg, self.confidence]
        for mapping in (self.targets_um, self.std_um, self.nominal_um):
            values.extend(mapping[a] for a in self.axes)
        return all(math.isfinite(float(v)) for v in values)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain-dict copy (JSON-ready apart from non-finite floats)."""
        out = asdict(self)
        out["axes"] = list(self.axes)
        return out


def make_setpoint(
    *,
    scan_id: str,
    frame: int,
    predicted_drift_um: Mapping[str, float],
    std_um: Mapping[str, float],
    t_valid: float,
    angle_deg: float,
    confidence: float,
    axes: Iterable[str] = DEFAULT_AXES,
    nominal_um: Mapping[str, float] | None = None,
    t_created: float | None = None,
) -> Setpoint:
    """Build the setpoint ``target = nominal - predicted drift`` for the configured axes.

    Parameters
    ----------
    scan_id : str
        Scan identifier.
    frame : int
        Frame the correction targets (>= 0).
    predicted_drift_um, std_um : mapping of str to float
        Predicted drift and its one-sigma uncertainty per axis, micrometres; must hold every
        corrected axis (extra axes are ignored).
    t_valid : float
        Exposure time the prediction is for, seconds.
    angle_deg : float
        Rotation angle of that exposure, degrees.
    confidence : float
        Source confidence in ``[0, 1]`` (NaN is passed through for the interlocks to refuse).
    axes : iterable of str, optional
        Axes to correct, default ``("x", "z")``.
    nominal_um : mapping of str to float, optional
        Stage position meaning "no correction" per axis, default 0 for each axis.
    t_created : float, optional
        Creation time, default ``time.time()``.

    Returns
    -------
    Setpoint

    Raises
    ------
    ValueError
        On unknown axes, a missing axis in the inputs, a negative frame, an empty scan id or
        a confidence outside ``[0, 1]``.
    """
    ax = validate_axes(axes)
    if not scan_id:
        raise ValueError("scan_id must be a non-empty string")
    if int(frame) != frame or frame < 0:
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    if math.isfinite(confidence) and not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must be within [0, 1], got {confidence!r}")
    nominal = dict.fromkeys(ax, 0.0) if nominal_um is None else dict(nominal_um)
    for label, mapping in (
        ("predicted_drift_um", predicted_drift_um),
        ("std_um", std_um),
        ("nominal_um", nominal),
    ):
        missing = [a for a in ax if a not in mapping]
        if missing:
            raise ValueError(f"{label} lacks axes {missing} (corrected axes: {list(ax)})")
    drift = {a: float(predicted_drift_um[a]) for a in ax}
    offsets = {a: -drift[a] for a in ax}
    return Setpoint(
        scan_id=str(scan_id),
        frame=int(frame),
        t_created=time.time() if t_created is None else float(t_created),
        t_valid=float(t_valid),
        angle_deg=float(angle_deg),
        targets_um={a: float(nominal[a]) + offsets[a] for a in ax},
        offsets_um=offsets,
        nominal_um={a: float(nominal[a]) for a in ax},
        predicted_drift_um=drift,
        std_um={a: float(std_um[a]) for a in ax},
        confidence=float(confidence),
        axes=ax,
    )
