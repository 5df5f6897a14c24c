"""Beamline devices (ophyd-async) used by tomolock, and their simulations in ``sim``.

The device classes are imported lazily: ``import tomolock.devices.sim...`` (IOC, streamer)
must not load the CA client library, and a client must set its ``EPICS_CA_*`` environment
before the first device import (libca reads it once per process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tomolock.devices.detector import DetectorStream
    from tomolock.devices.interferometer import InterferometerSample, LaserInterferometer
    from tomolock.devices.microscope import MicroscopeSample, VisibleLightMicroscope
    from tomolock.devices.service import TomolockService
    from tomolock.devices.stage import SampleStage

_EXPORTS = {
    "DetectorStream": "tomolock.devices.detector",
    "InterferometerSample": "tomolock.devices.interferometer",
    "LaserInterferometer": "tomolock.devices.interferometer",
    "MicroscopeSample": "tomolock.devices.microscope",
    "SampleStage": "tomolock.devices.stage",
    "TomolockService": "tomolock.devices.service",
    "VisibleLightMicroscope": "tomolock.devices.microscope",
}

__all__ = [
    "DetectorStream",
    "InterferometerSample",
    "LaserInterferometer",
    "MicroscopeSample",
    "SampleStage",
    "TomolockService",
    "VisibleLightMicroscope",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
