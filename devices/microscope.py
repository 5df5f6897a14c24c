"""Visible-light microscope tracking the sample position (ophyd-async)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ophyd_async.core import StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r

from tomolock.devices.interferometer import monitor_samples

__all__ = ["MicroscopeSample", "VisibleLightMicroscope"]


@dataclass(frozen=True)
class MicroscopeSample:
    """One microscope tracking update.

    Attributes
    ----------
    timestamp : float
        Unix time of the sample.
    x_um, y_um, z_um : float
        Tracked sample position, micrometres, lab frame.
    quality : float or None
        Tracking quality 0..1 (latest known).
    valid : bool
        Whether the tracker flags the position as valid (latest known).
    """

    timestamp: float
    x_um: float
    y_um: float
    z_um: float
    quality: float | None
    valid: bool


class VisibleLightMicroscope(StandardReadable):
    """Visible-light microscope that tracks a fiducial on the sample holder.

    PVs (``prefix`` e.g. ``"SIM:VLM:"``): ``X_UM``, ``Y_UM``, ``Z_UM`` (tracked position,
    **micrometres**, lab frame, including the fine-stage offset), ``QUALITY`` (0..1),
    ``VALID`` (1 = valid), ``RATE_HZ`` (update rate; the simulation: 10 Hz, ~20 nm noise).

    Parameters
    ----------
    prefix : str
        PV prefix.
    name : str
        Device name.
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.x_um = epics_signal_r(float, prefix + "X_UM")
            self.y_um = epics_signal_r(float, prefix + "Y_UM")
            self.z_um = epics_signal_r(float, prefix + "Z_UM")
        with self.add_children_as_readables():
            self.quality = epics_signal_r(float, prefix + "QUALITY")
            self.valid = epics_signal_r(int, prefix + "VALID")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.rate_hz = epics_signal_r(float, prefix + "RATE_HZ")
        super().__init__(name=name)

    async def samples(self, timeout: float | None = 2.0) -> AsyncIterator[MicroscopeSample]:
        """Yield every tracking update (CA monitor) as one sample.

        Parameters
        ----------
        timeout : float or None
            Raise :class:`TimeoutError` when no monitor arrives for this long.
        """
        async for ts, (x, y, z), (quality, valid) in monitor_samples(
            (self.x_um, self.y_um, self.z_um), (self.quality, self.valid), timeout
        ):
            yield MicroscopeSample(ts, x, y, z, quality, bool(valid))
