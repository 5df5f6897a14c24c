"""Runout calibration: step a full turn reading the interferometer, fit the harmonics."""

from __future__ import annotations

import json
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from tomolock.plans._detector import MsgGen, reading_time, reading_value
from tomolock.service.model import RunoutModel

__all__ = ["RunoutModelReadable", "runout_calibration"]

#: Name of the event stream that carries the fitted model.
MODEL_STREAM = "runout_model"


class RunoutModelReadable:
    """A fitted :class:`RunoutModel` as a bluesky readable, for its own event stream.

    Fields: ``<name>_coefficients`` (``n_axes x (1 + 2N)``: offset, cos_1, sin_1, ... um),
    ``<name>_amplitudes_um`` (``n_axes x N``), ``<name>_rms_residual_um`` and ``<name>_json``
    (``RunoutModel.to_dict()`` as JSON, reloadable with ``RunoutModel.from_dict``).
    """

    parent = None

    def __init__(self, model: RunoutModel, name: str = "runout_model") -> None:
        if not model.is_fitted:
            raise ValueError("RunoutModelReadable needs a fitted RunoutModel")
        self.model = model
        self.name = name
        self._t = time.time()

    def _values(self) -> dict[str, Any]:
        m = self.model
        return {
            f"{self.name}_coefficients": m.coefficients,
            f"{self.name}_amplitudes_um": m.amplitudes_um,
            f"{self.name}_rms_residual_um": np.asarray(m.diagnostics.rms_residual_um),
            f"{self.name}_json": json.dumps(m.to_dict()),
        }

    def read(self) -> dict[str, dict[str, Any]]:
        """Return the model's values as a bluesky reading."""
        return {k: {"value": v, "timestamp": self._t} for k, v in self._values().items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        """Return the data keys of :meth:`read`."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self._values().items():
            if isinstance(value, str):
                out[key] = {"source": "tomolock.plans", "dtype": "string", "shape": []}
            else:
                out[key] = {"source": "tomolock.plans", "dtype": "array",
                            "shape": list(value.shape), "dtype_numpy": "<f8", "units": "um"}
        return out

    def read_configuration(self) -> dict[str, Any]:
        """No configuration."""
        return {}

    def describe_configuration(self) -> dict[str, Any]:
        """No configuration."""
        return {}


def runout_calibration(
    stage: Any,
    interferometer: Any,
    service: Any = None,
    *,
    microscope: Any = None,
    n_points: int = 73,
    sweep_deg: float = 360.0,
    start_deg: float = 0.0,
    n_harmonics: int = 4,
    settle_s: float = 0.03,
    md: dict[str, Any] | None = None,
) -> MsgGen:
    """Step the rotation over a turn reading the interferometer; fit and store the runout.

    One bluesky run: a ``primary`` event per angle (stage readbacks, interferometer, optional
    microscope), then one event in the ``runout_model`` stream with the fitted coefficients
    (see :class:`RunoutModelReadable`). The fit uses the interferometer readings in um minus the
    piezo readbacks (the interferometer target sits above the piezo), the rotation readback as
    angle and the interferometer timestamps as times (its linear time term absorbs thermal drift
    during the sweep). With ``service`` the model is then stored in the service
    (``bps.mv(service.runout_model, model)``).

    Parameters
    ----------
    stage : SampleStage
        Rotation and piezo motors.
    interferometer : LaserInterferometer
        Runout readbacks in nanometres.
    service : TomolockService, optional
        Where to store the model (needs its control token).
    microscope : VisibleLightMicroscope, optional
        Also recorded at each angle (not used in the fit).
    n_points : int
        Angles of the sweep, from ``start_deg`` to ``start_deg + sweep_deg`` inclusive (the
        default 73 = every 5 degrees, both ends of a full turn).
    sweep_deg : float
        Angular range, degrees (a full turn determines every harmonic best).
    start_deg : float
        First angle, degrees.
    n_harmonics : int
        Harmonics of the fitted :class:`RunoutModel`.
    settle_s : float
        Wait after each step so that the 100 Hz interferometer has a sample at rest.
    md : dict, optional
        Extra start-document metadata.

    Returns
    -------
    RunoutModel
        The fitted model (``yield from`` the plan to get it).

    Raises
    ------
    ValueError
        On bad arguments, or when the readings cannot determine the harmonics.
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    if not (np.isfinite(sweep_deg) and 0 < sweep_deg <= 720):
        raise ValueError(f"sweep_deg must be in (0, 720], got {sweep_deg!r}")
    if not (np.isfinite(settle_s) and settle_s >= 0):
        raise ValueError(f"settle_s must be >= 0, got {settle_s!r}")
    if not np.isfinite(start_deg):
        raise ValueError(f"start_deg must be finite, got {start_deg!r}")
    probe = RunoutModel(n_harmonics)  # validates n_harmonics before anything moves
    if n_points < probe.n_params + probe.time_degree:
        raise ValueError(f"n_points={n_points} cannot determine {n_harmonics} harmonics "
                         f"(need >= {probe.n_params + probe.time_degree})")
    angles = start_deg + np.linspace(0.0, sweep_deg, n_points)
    detectors = [interferometer, stage] + ([microscope] if microscope is not None else [])
    ifm_axes = (interferometer.x_nm, interferometer.y_nm, interferometer.z_nm)
    piezo = (stage.x.user_readback, stage.y.user_readback, stage.z.user_readback)
    metadata = {
        "plan_name": "runout_calibration",
        "plan_args": {"n_points": n_points, "sweep_deg": sweep_deg, "start_deg": start_deg,
                      "n_harmonics": n_harmonics},
        "detectors": [d.name for d in detectors],
        "motors": [stage.rotation.name],
        "num_points": n_points,
        "hints": {"dimensions": [([stage.rotation.name], "primary")]},
        **(md or {}),
    }

    fitted: list[RunoutModel] = []  # run_decorator returns the run's uid, not our value

    @bpp.run_decorator(md=metadata)
    def inner() -> MsgGen:
        rows: list[tuple[float, float, tuple[float, ...]]] = []
        for angle in angles:
            yield from bps.checkpoint()
            yield from bps.mv(stage.rotation, float(angle))
            if settle_s:
                yield from bps.sleep(settle_s)
            reading = yield from bps.trigger_and_read(detectors)
            theta = float(reading_value(reading, stage.rotation.user_readback))
            t = reading_time(reading, interferometer.x_nm)
            um = tuple(
                float(reading_value(reading, ifm)) * 1e-3 - float(reading_value(reading, pz))
                for ifm, pz in zip(ifm_axes, piezo, strict=True)
            )
            rows.append((theta, t, um))
        theta = np.array([r[0] for r in rows])
        times = np.array([r[1] for r in rows])
        readings = np.array([r[2] for r in rows])
        model = RunoutModel(n_harmonics).fit(theta, readings, times_s=times)
        yield from bps.create(MODEL_STREAM)
        yield from bps.read(RunoutModelReadable(model))
        yield from bps.save()
        fitted.append(model)

    yield from inner()
    model = fitted[0]
    if service is not None:
        yield from bps.mv(service.runout_model, model)
    return model
