"""Sample stage: rotation and fine piezo x/y/z, EPICS motor records (ophyd-async)."""

from __future__ import annotations

from ophyd_async.core import StandardReadable
from ophyd_async.epics.motor import Motor

__all__ = ["SampleStage"]


class SampleStage(StandardReadable):
    """Rotation stage with a fine piezo stage below it.

    PVs are motor records ``<prefix><suffix>`` (fields ``.VAL``, ``.RBV``, ``.DMOV``, ...), by
    default ``<prefix>ROT``, ``<prefix>X``, ``<prefix>Y``, ``<prefix>Z``. The simulation serves
    them at ``SIM:STAGE:ROT`` etc.

    Units and frames: ``rotation`` in degrees about the vertical z axis; ``x`` (horizontal,
    perpendicular to the beam), ``y`` (along the beam), ``z`` (vertical) in micrometres, lab
    frame. The piezo sits *below* the rotation stage: moving it by +m um moves the sample by
    +m um, whatever the angle. A drift correction is therefore ``offset = -(predicted drift)``.

    Parameters
    ----------
    prefix : str
        Common PV prefix, e.g. ``"SIM:STAGE:"`` or ``"32idc:"``.
    rotation_suffix, x_suffix, y_suffix, z_suffix : str
        Record names after ``prefix``.
    name : str
        Device name.
    """

    def __init__(
        self,
        prefix: str,
        *,
        rotation_suffix: str = "ROT",
        x_suffix: str = "X",
        y_suffix: str = "Y",
        z_suffix: str = "Z",
        name: str = "",
    ) -> None:
        for label, suffix in (("rotation", rotation_suffix), ("x", x_suffix),
                              ("y", y_suffix), ("z", z_suffix)):
            if not suffix or not isinstance(suffix, str):
                raise ValueError(f"{label}_suffix must be a non-empty string, got {suffix!r}")
        with self.add_children_as_readables():
            self.rotation = Motor(prefix + rotation_suffix)
            self.x = Motor(prefix + x_suffix)
            self.y = Motor(prefix + y_suffix)
            self.z = Motor(prefix + z_suffix)
        super().__init__(name=name)

    @property
    def piezo(self) -> dict[str, Motor]:
        """The fine axes by lab name: ``{"x": ..., "y": ..., "z": ...}`` (micrometres)."""
        return {"x": self.x, "y": self.y, "z": self.z}
