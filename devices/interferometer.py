"""Laser interferometer measuring the sample-holder runout (ophyd-async)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ophyd_async.core import SignalR, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.epics.core import epics_signal_r

__all__ = ["InterferometerSample", "LaserInterferometer", "monitor_samples"]


@dataclass(frozen=True)
class InterferometerSample:
    """One interferometer update.

    Attributes
    ----------
    timestamp : float
        Unix time of the sample (CA timestamp).
    x_nm, y_nm, z_nm : float
        Position readbacks, nanometres, lab frame.
    signal_pct : float or None
        Signal strength in percent (latest known).
    valid : bool
        Whether the instrument flags the readings as valid (latest known).
    """

    timestamp: float
    x_nm: float
    y_nm: float
    z_nm: float
    signal_pct: float | None
    valid: bool


async def monitor_samples(
    axes: Sequence[SignalR[float]], extra: Sequence[SignalR[Any]], timeout: float | None
) -> AsyncIterator[tuple[float, tuple[float, ...], tuple[Any, ...]]]:
    """Combine per-axis CA monitors into one sample per sensor update.

    The IOC writes all axes of one sample with the same timestamp; a sample is complete when
    every axis has reported that timestamp. ``extra`` signals (status flags) contribute their
    latest value; nothing is yielded before each of them has reported once.

    Yields
    ------
    tuple
        ``(timestamp, axis_values, extra_values)``.

    Raises
    ------
    TimeoutError
        If no monitor arrives within ``timeout`` seconds (``None``: wait forever).
    """
    names = [s.name for s in axes]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"axis signals need distinct names (name the device), got {names}")
    queue: asyncio.Queue[tuple[str, float, Any]] = asyncio.Queue()
    latest: dict[str, tuple[float, Any]] = {}

    def on_reading(reading: dict[str, Any]) -> None:
        for name, r in reading.items():
            queue.put_nowait((name, float(r["timestamp"]), r["value"]))

    signals = [*axes, *extra]
    for s in signals:
        s.subscribe_reading(on_reading)
    last_ts = float("-inf")
    try:
        while True:
            name, ts, value = await asyncio.wait_for(queue.get(), timeout)
            latest[name] = (ts, value)
            # wait for every axis and the first value of every status signal
            if any(n not in latest for n in names) or any(s.name not in latest for s in extra):
                continue
            stamp = latest[names[0]][0]
            if stamp > last_ts and all(latest[n][0] == stamp for n in names):
                last_ts = stamp
                values = tuple(float(latest[n][1]) for n in names)
                extras = tuple(latest[s.name][1] for s in extra)
                yield stamp, values, extras
    finally:
        for s in signals:
            s.clear_sub(on_reading)


class LaserInterferometer(StandardReadable):
    """Three-axis laser interferometer of the rotation-axis runout.

    PVs (``prefix`` e.g. ``"SIM:IFM:"``): ``X_NM``, ``Y_NM``, ``Z_NM`` (position readbacks,
    **nanometres**, lab frame x/y/z, including the fine-stage offset since the measured
    target sits above the piezo), ``SIGNAL`` (signal strength, %), ``VALID`` (1 = valid),
    ``RATE_HZ`` (update rate).

    The readbacks are CA monitors posted at the instrument's update rate (the simulation:
    100 Hz); :meth:`samples` yields one :class:`InterferometerSample` per update.

    Parameters
    ----------
    prefix : str
        PV prefix.
    name : str
        Device name (needed for :meth:`samples`; ``connect`` names children).
    """

    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.x_nm = epics_signal_r(float, prefix + "X_NM")
            self.y_nm = epics_signal_r(float, prefix + "Y_NM")
            self.z_nm = epics_signal_r(float, prefix + "Z_NM")
        with self.add_children_as_readables():
            self.signal_strength = epics_signal_r(float, prefix + "SIGNAL")
            self.valid = epics_signal_r(int, prefix + "VALID")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.rate_hz = epics_signal_r(float, prefix + "RATE_HZ")
        super().__init__(name=name)

    async def samples(self, timeout: float | None = 1.0) -> AsyncIterator[InterferometerSample]:
        """Yield every update (CA monitor) as one sample.

        Parameters
        ----------
        timeout : float or None
            Raise :class:`TimeoutError` when no monitor arrives for this long.
        """
        async for ts, (x, y, z), (strength, valid) in monitor_samples(
            (self.x_nm, self.y_nm, self.z_nm), (self.signal_strength, self.valid), timeout
        ):
            yield InterferometerSample(ts, x, y, z, strength, bool(valid))
