"""bluesky plans for tomolock: calibration, reference/tomography scans, drift check, settling.

Plain generators built from bluesky plan stubs only: nothing blocks the RunEngine (the service
is reached through :class:`tomolock.devices.TomolockService`, asynchronous HTTP on the
RunEngine's loop). See ``docs/bluesky.md`` for a session against the simulated beamline.
"""

from tomolock.plans.beam import SuspenderSignal, beam_suspender
from tomolock.plans.calibration import RunoutModelReadable, runout_calibration
from tomolock.plans.drift_check import drift_check
from tomolock.plans.progress import ProgressPrinter
from tomolock.plans.scans import CORRECTIONS, reference_scan, tomo_scan
from tomolock.plans.settle import ModelNotSettledError, ModelSettle, wait_for_model

__all__ = [
    "CORRECTIONS",
    "ModelNotSettledError",
    "ModelSettle",
    "ProgressPrinter",
    "RunoutModelReadable",
    "SuspenderSignal",
    "beam_suspender",
    "drift_check",
    "reference_scan",
    "runout_calibration",
    "tomo_scan",
    "wait_for_model",
]
