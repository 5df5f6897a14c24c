"""Pydantic models of every request and response of the tomolock HTTP API.

Units follow the tomolock conventions: stage offsets and drift in micrometres (lab frame, x
horizontal across the beam, y along the beam, z vertical), image shifts in detector pixels
(``frame(r, c) ≈ reference(r - dy, c - dx)``), angles in degrees, times in Unix seconds.

JSON has no NaN: optional numbers are ``null`` when unknown, and a NaN handed in by a backend is
turned into ``null`` on validation, so a response can always be rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from tomolock.service.feedback.interlocks import AxisLimits

ScanState = Literal["idle", "running", "ended"]
FeedbackMode = Literal["publish-only", "apply"]
HealthState = Literal["ok", "degraded", "failed"]
MetricType = Literal["counter", "gauge", "summary"]
ReferenceStrategy = Literal["first_n", "reference_scan", "mirror"]

#: Severity order of health states, worst last.
HEALTH_ORDER: dict[HealthState, int] = {"ok": 0, "degraded": 1, "failed": 2}


def _nan_to_none(value: float | None) -> float | None:
    return None if value is not None and math.isnan(value) else value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _array_to_list(value: Any) -> Any:
    # Backends keep columns as numpy arrays; accept them without a copy loop in the backend.
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, list) else value


#: A float that may be unknown: ``None`` in JSON; NaN is read as unknown.
OptFloat = Annotated[float | None, AfterValidator(_nan_to_none)]
FiniteFloat = Annotated[float, AfterValidator(_finite)]
#: Columns of the drift log; numpy arrays are accepted and converted.
IntColumn = Annotated[list[int], BeforeValidator(_array_to_list)]
FloatColumn = Annotated[list[OptFloat], BeforeValidator(_array_to_list)]
StrColumn = Annotated[list[str], BeforeValidator(_array_to_list)]


class _Model(BaseModel):
    """Strict-ish base: unknown fields are an error, so typos in requests are reported."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- status


class StageVector(_Model):
    """A fine-stage vector (offset or drift), lab frame, micrometres."""

    x_um: FiniteFloat
    y_um: FiniteFloat
    z_um: FiniteFloat


class ScanStatus(_Model):
    """State of the current (or last) scan as seen by the service."""

    state: ScanState = Field(description="idle (no scan yet), running, or ended")
    scan_id: str | None = Field(None, description="id of the current or last scan")
    frames_received: int = Field(0, ge=0, description="projections received in this scan")
    frames_processed: int = Field(0, ge=0, description="projections estimated in this scan")
    last_frame_angle_deg: OptFloat = Field(None, description="rotation angle of the last frame")
    last_frame_time: OptFloat = Field(None, description="Unix time of the last frame, seconds")


class LoopStatus(_Model):
    """Feedback loop state: whether corrections are applied and what was decided last."""

    enabled: bool
    disabled_reason: str | None = Field(None, description="why the loop is disabled, if it is")
    mode: FeedbackMode = Field(description="publish-only: compute setpoints only; apply: move")
    last_setpoint: StageVector | None = Field(
        None, description="last stage offset commanded, = -(predicted drift)"
    )
    last_decision: str | None = Field(
        None,
        description="last interlock decision, action and reasons (e.g. 'move', 'hold:dead_band')",
    )


class ModelSummary(_Model):
    """Short summary of the fitted drift model."""

    kind: str = Field(description="model family, e.g. 'runout+thermal'")
    fitted: bool
    n_samples: int = Field(0, ge=0, description="observations the model was fitted on")
    rms_residual_um: OptFloat = Field(None, description="RMS fit residual, micrometres")
    parameters: dict[str, FiniteFloat] = Field(default_factory=dict)
    angle_deg: OptFloat = Field(None, description="rotation angle of the prediction below")
    position_um: dict[str, OptFloat] = Field(
        default_factory=dict,
        description="predicted sample displacement now at the current angle, per axis",
    )
    position_std_um: dict[str, OptFloat] = Field(
        default_factory=dict, description="1-sigma uncertainty of position_um, per axis"
    )
    turn_std_max_um: dict[str, OptFloat] = Field(
        default_factory=dict,
        description="largest 1-sigma of the prediction over a whole turn now, per axis "
        "(large until the runout is calibrated)",
    )


class Counters(_Model):
    """Frame counters since service start."""

    frames_dropped: int = Field(0, ge=0, description="frames dropped under overload")
    frames_rejected: dict[str, int] = Field(
        default_factory=dict, description="frames rejected, per reason (e.g. bad_shape)"
    )

    @model_validator(mode="after")
    def _non_negative(self) -> Self:
        negative = {k: v for k, v in self.frames_rejected.items() if v < 0}
        if negative:
            raise ValueError(f"rejection counters must be >= 0, got {negative}")
        return self


class Performance(_Model):
    """Processing speed: frame-to-decision latency percentiles and frame rate."""

    latency_p50_ms: OptFloat = None
    latency_p99_ms: OptFloat = None
    fps: OptFloat = Field(None, description="processed frames per second, recent window")


class DriftCheckResult(_Model):
    """Result of a ``drift_check`` scan: a projection pair 180 degrees apart (``GET /drift_check``).

    The projection at ``angle_180_deg`` mirrored left-right matches the one at ``angle_deg``
    shifted by twice the rotation axis' distance from the frame centre. Horizontal drift
    between the two exposures enters ``centre_offset_px`` as its mean, vertical drift is
    ``dy_px``. ``reference_*`` compare the ``angle_deg`` projection with the reference scan's
    projection at that angle (drift since the reference scan), when there is one.
    """

    scan_id: str = Field(min_length=1)
    angle_deg: FiniteFloat = Field(description="angle of the first projection of the pair")
    angle_180_deg: FiniteFloat = Field(description="angle of its partner, about +180 degrees")
    frames: tuple[int, int] = Field(description="frame numbers of the pair in the scan")
    width_px: int = Field(ge=1, description="frame width; the frame centre is (width - 1) / 2")
    centre_offset_px: FiniteFloat = Field(
        description="rotation-axis column minus the frame-centre column, pixels"
    )
    axis_column_px: FiniteFloat = Field(description="rotation-axis column, pixels")
    dy_px: FiniteFloat = Field(
        description="vertical shift of the 180-degree projection vs the first, pixels"
    )
    confidence: float = Field(ge=0, le=1, description="phase-correlation confidence of the pair")
    time: float = Field(description="Unix time the result was computed, seconds")
    exposure_times: tuple[float, float] = Field(description="Unix mid-exposure times of the pair")
    reference_dx_px: OptFloat = Field(
        None, description="first projection vs its reference-scan projection, columns"
    )
    reference_dy_px: OptFloat = Field(None, description="same, rows")
    reference_confidence: OptFloat = Field(None, description="confidence of that estimate")


class StatusModel(_Model):
    """Full service status (``GET /status``)."""

    version: str
    uptime_s: float = Field(ge=0)
    scan: ScanStatus
    loop: LoopStatus
    model: ModelSummary | None = None
    counters: Counters = Field(default_factory=Counters)
    performance: Performance = Field(default_factory=Performance)
    drift_check: DriftCheckResult | None = Field(None, description="latest drift check")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "version": "0.1.0",
                    "uptime_s": 812.4,
                    "scan": {
                        "state": "running",
                        "scan_id": "scan-0042",
                        "frames_received": 361,
                        "frames_processed": 360,
                        "last_frame_angle_deg": 179.5,
                        "last_frame_time": 1767225600.25,
                    },
                    "loop": {
                        "enabled": True,
                        "disabled_reason": None,
                        "mode": "apply",
                        "last_setpoint": {"x_um": -0.41, "y_um": 0.0, "z_um": 0.07},
                        "last_decision": "move",
                    },
                    "model": {
                        "kind": "runout+thermal",
                        "fitted": True,
                        "n_samples": 360,
                        "rms_residual_um": 0.012,
                        "parameters": {"thermal_x_um_per_s": 0.0004},
                    },
                    "counters": {"frames_dropped": 1, "frames_rejected": {"bad_shape": 0}},
                    "performance": {"latency_p50_ms": 21.0, "latency_p99_ms": 48.5, "fps": 9.8},
                }
            ]
        },
    )


# --------------------------------------------------------------------------- health


class ComponentCheck(_Model):
    """Health of one component (``ingest``, ``last_frame_age``, ``ioc``, ``record``...)."""

    name: str = Field(min_length=1)
    state: HealthState
    detail: str = ""


class HealthModel(_Model):
    """Overall health (``GET /health``): never better than its worst component."""

    state: HealthState
    checks: list[ComponentCheck] = Field(default_factory=list)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "state": "degraded",
                    "checks": [
                        {"name": "ingest", "state": "ok", "detail": "alive"},
                        {"name": "last_frame_age", "state": "degraded", "detail": "12.0 s"},
                        {"name": "ioc", "state": "ok", "detail": "connected"},
                        {"name": "record", "state": "ok", "detail": "writable"},
                    ],
                }
            ]
        },
    )

    @model_validator(mode="after")
    def _not_better_than_worst(self) -> Self:
        worst = worst_state(c.state for c in self.checks)
        if HEALTH_ORDER[self.state] < HEALTH_ORDER[worst]:
            raise ValueError(
                f"overall health {self.state!r} is better than its worst check {worst!r}"
            )
        return self

    @classmethod
    def from_checks(cls, checks: list[ComponentCheck]) -> HealthModel:
        """Build a health report whose overall state is the worst of ``checks``.

        Parameters
        ----------
        checks : list of ComponentCheck
            Per-component results.

        Returns
        -------
        HealthModel
            ``state`` is ``"ok"`` when ``checks`` is empty.
        """
        return cls(state=worst_state(c.state for c in checks), checks=checks)


def worst_state(states: Iterable[HealthState]) -> HealthState:
    """Return the worst of an iterable of health states (``"ok"`` when empty)."""
    return max(states, key=HEALTH_ORDER.__getitem__, default="ok")


# --------------------------------------------------------------------------- scans, history


class ScanSummary(_Model):
    """One scan the service knows about (``GET /scans``)."""

    scan_id: str = Field(min_length=1)
    state: Literal["running", "ended"]
    start_time: OptFloat = Field(None, description="Unix time of scan start, seconds")
    end_time: OptFloat = Field(None, description="Unix time of scan end, seconds")
    frames: int = Field(0, ge=0, description="projections processed")


class DriftColumns(_Model):
    """Per-frame drift log as columns of equal length (one entry per processed frame).

    ``est_*`` are the raw image-shift estimates, ``drift_*_um`` the fused model's drift,
    ``correction_*_um`` the stage offset actually applied (``null`` when none was).
    """

    frame: IntColumn
    angle_deg: FloatColumn
    t: FloatColumn
    est_dy_px: FloatColumn
    est_dx_px: FloatColumn
    confidence: FloatColumn
    drift_x_um: FloatColumn
    drift_z_um: FloatColumn
    correction_x_um: FloatColumn
    correction_z_um: FloatColumn
    decision: StrColumn

    @model_validator(mode="after")
    def _equal_lengths(self) -> Self:
        lengths = {name: len(getattr(self, name)) for name in type(self).model_fields}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"drift history columns differ in length: {lengths}")
        return self

    def __len__(self) -> int:
        return len(self.frame)


class DriftHistory(_Model):
    """Drift log of one scan (``GET /scans/{scan_id}/drift``), paged by frame number."""

    scan_id: str
    since_frame: int = Field(ge=0, description="first frame number asked for")
    next_frame: int | None = Field(
        None, description="frame number to ask for next when more rows remain, else null"
    )
    columns: DriftColumns

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "scan_id": "scan-0042",
                    "since_frame": 0,
                    "next_frame": None,
                    "columns": {
                        "frame": [0, 1],
                        "angle_deg": [0.0, 0.5],
                        "t": [1767225600.0, 1767225600.1],
                        "est_dy_px": [0.0, 0.12],
                        "est_dx_px": [0.0, -1.31],
                        "confidence": [1.0, 0.93],
                        "drift_x_um": [0.0, -0.039],
                        "drift_z_um": [0.0, 0.004],
                        "correction_x_um": [None, 0.039],
                        "correction_z_um": [None, -0.004],
                        "decision": ["reference", "applied"],
                    },
                }
            ]
        },
    )


# --------------------------------------------------------------------------- metrics

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Metric(_Model):
    """One Prometheus sample.

    Several samples of one metric family (e.g. rejections per ``reason``) share ``name``,
    ``type`` and ``help`` and differ in ``labels``. A summary is given as samples with a
    ``quantile`` label plus samples with ``suffix`` ``"_sum"`` and ``"_count"``.
    """

    name: str
    type: MetricType
    help: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    value: float
    suffix: Literal["", "_sum", "_count"] = ""

    @model_validator(mode="after")
    def _valid_names(self) -> Self:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"invalid Prometheus metric name {self.name!r}")
        for label in self.labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid Prometheus label name {label!r} in {self.name}")
        if self.type != "summary" and (self.suffix or "quantile" in self.labels):
            raise ValueError(f"{self.name}: suffix and 'quantile' label are for summaries only")
        if self.suffix and "quantile" in self.labels:
            raise ValueError(f"{self.name}{self.suffix}: a _sum/_count sample has no quantile")
        return self


# --------------------------------------------------------------------------- control


class ControlRequest(_Model):
    """Body of ``POST /control/enable`` and ``POST /control/disable``."""

    reason: str = Field(
        min_length=1,
        max_length=500,
        description="why, for the operator log",
        examples=["beam dump", "operator resumed after alignment"],
    )


class EnableResponse(_Model):
    """Result of enabling or disabling the feedback loop."""

    enabled: bool
    reason: str


# One definition of an axis's soft limits (validated low < high): the interlocks' own.
AxisLimitsPatch = AxisLimits


class InterlockLimitsPatch(_Model):
    """Interlock limits to change; omitted fields keep their value.

    Names match :class:`tomolock.service.feedback.interlocks.InterlockConfig`; the backend
    checks the patched configuration as a whole (e.g. dead band below ``max_step_um``).
    """

    soft_limits: dict[Literal["x", "y", "z"], AxisLimitsPatch] | None = Field(
        None,
        min_length=1,
        description="allowed absolute stage range per axis; given axes are replaced",
    )
    max_step_um: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="largest move of one axis in one update"
    )
    max_total_correction_um: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="largest |target - nominal| per axis"
    )
    min_interval_s: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="minimum time between two moves"
    )
    staleness_timeout_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="older setpoints are refused"
    )
    max_std_um: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="more uncertain setpoints are refused"
    )


class ConfigPatch(_Model):
    """Body of ``POST /config``: the runtime-changeable subset; omitted fields stay unchanged."""

    interlock: InterlockLimitsPatch | None = None
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="setpoints with lower confidence are refused"
    )
    dead_band_um: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="moves smaller than this are skipped"
    )
    mode: FeedbackMode | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"min_confidence": 0.6, "dead_band_um": 0.01, "mode": "apply"},
                {
                    "interlock": {
                        "max_step_um": 0.5,
                        "soft_limits": {"x": {"low": -20.0, "high": 20.0}},
                    }
                },
            ]
        },
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if not self.model_dump(exclude_none=True):
            raise ValueError("config patch changes nothing: give at least one field")
        if self.interlock is not None and not self.interlock.model_dump(exclude_none=True):
            # An empty interlock object is almost certainly a client bug.
            raise ValueError("interlock patch changes nothing: give at least one limit")
        return self


class ConfigResponse(_Model):
    """Effective runtime configuration after a patch, as reported by the service."""

    config: dict[str, Any]


class ReferenceRequest(_Model):
    """Body of ``POST /reference``: how the drift estimator chooses its reference image.

    * ``first_n``: average the first ``n_frames`` projections of the scan (default 1).
    * ``reference_scan``: use the projections of an earlier scan ``scan_id`` at the same
      angles.
    * ``mirror``: compare each projection with the one taken 180° earlier, flipped
      horizontally.
    """

    strategy: ReferenceStrategy
    n_frames: int | None = Field(None, ge=1, le=10_000)
    scan_id: str | None = Field(None, min_length=1)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"strategy": "first_n", "n_frames": 4},
                {"strategy": "reference_scan", "scan_id": "scan-0041"},
                {"strategy": "mirror"},
            ]
        },
    )

    @model_validator(mode="after")
    def _fields_match_strategy(self) -> Self:
        if self.strategy == "first_n":
            if self.scan_id is not None:
                raise ValueError("scan_id is only for strategy 'reference_scan'")
            if self.n_frames is None:
                self.n_frames = 1
        elif self.strategy == "reference_scan":
            if self.scan_id is None:
                raise ValueError("strategy 'reference_scan' needs scan_id")
            if self.n_frames is not None:
                raise ValueError("n_frames is only for strategy 'first_n'")
        elif self.n_frames is not None or self.scan_id is not None:
            raise ValueError("strategy 'mirror' takes no n_frames or scan_id")
        return self


class ReferenceResponse(_Model):
    """The reference the service will use, as reported by the service."""

    reference: dict[str, Any]


class RunoutModelResponse(_Model):
    """The runout model the service stored, as reported by the service."""

    model: dict[str, Any]


# --------------------------------------------------------------------------- dashboard

Axis = Literal["x", "y", "z"]


class HarmonicAxis(_Model):
    """Runout harmonics of one axis: ``offset + sum_k cos_k cos(k theta) + sin_k sin(k theta)``.

    ``cos_um[k-1]`` and ``sin_um[k-1]`` are the coefficients of harmonic ``k`` (micrometres).
    """

    offset_um: FiniteFloat = 0.0
    cos_um: list[FiniteFloat] = Field(min_length=1, max_length=64)
    sin_um: list[FiniteFloat] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _paired(self) -> Self:
        if len(self.cos_um) != len(self.sin_um):
            raise ValueError(
                f"cos_um has {len(self.cos_um)} harmonics but sin_um {len(self.sin_um)}"
            )
        return self


class AxisResiduals(_Model):
    """Fit residuals of one axis (observation minus model) at the observed angles."""

    angle_deg: FloatColumn
    residual_um: FloatColumn

    @model_validator(mode="after")
    def _equal_lengths(self) -> Self:
        if len(self.angle_deg) != len(self.residual_um):
            raise ValueError(
                f"residuals: {len(self.angle_deg)} angles but {len(self.residual_um)} values"
            )
        return self


class ModelState(_Model):
    """The fitted drift model as the dashboard shows it (from ``backend.model_state()``)."""

    kind: str = Field(min_length=1, description="model family, e.g. 'runout+thermal'")
    fitted: bool
    harmonics: dict[Axis, HarmonicAxis] = Field(default_factory=dict)
    residuals: dict[Axis, AxisResiduals] = Field(default_factory=dict)
    rms_residual_um: dict[Axis, OptFloat] = Field(default_factory=dict)
    parameters: dict[str, FiniteFloat] = Field(default_factory=dict)


class ModelResponse(_Model):
    """``GET /model``: the fitted drift model, or why there is none yet."""

    available: bool
    detail: str | None = Field(None, description="why the model is not available")
    state: ModelState | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "available": True,
                    "state": {
                        "kind": "runout+thermal",
                        "fitted": True,
                        "harmonics": {
                            "x": {"offset_um": 0.0, "cos_um": [0.31, 0.02],
                                  "sin_um": [-0.12, 0.01]},
                        },
                        "residuals": {"x": {"angle_deg": [0.0, 0.5],
                                            "residual_um": [0.004, -0.002]}},
                        "rms_residual_um": {"x": 0.003},
                    },
                },
                {"available": False, "detail": "no model fitted yet"},
            ]
        },
    )  # fmt: skip


class ImageInfo(_Model):
    """One thumbnail: its size and a PNG data URL (8-bit greyscale)."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    png_data_url: str = Field(description="data:image/png;base64,...")


class LatestImagesResponse(_Model):
    """``GET /images/latest``: latest projection thumbnail and the reference it was matched to."""

    available: bool
    detail: str | None = Field(None, description="why no image is available")
    frame_number: int | None = None
    angle_deg: OptFloat = None
    frame: ImageInfo | None = None
    reference: ImageInfo | None = None


# --------------------------------------------------------------------------- misc


class EndpointInfo(_Model):
    """One endpoint in the index."""

    methods: list[str]
    path: str
    auth: bool = Field(description="needs 'Authorization: Bearer <token>'")
    summary: str = ""


class IndexModel(_Model):
    """``GET /``: a machine-readable index of the endpoints."""

    name: str
    version: str
    endpoints: list[EndpointInfo]


class ErrorModel(_Model):
    """Error body (FastAPI's shape): ``detail`` says what went wrong."""

    detail: str
