"""One typed configuration object for the tomolock service.

Sources, highest priority first: keyword arguments, environment variables
(``TOMOLOCK_<SECTION>__<FIELD>``, e.g. ``TOMOLOCK_API__PORT=8601``), a TOML file (``tomolock serve
--config FILE``), then the defaults below, which run the embedded simulated beamline on loopback.

Example TOML (see ``deploy/tomolock.example.toml`` for a beamline)::

    [ingest]
    frames_address = "tcp://127.0.0.1:5600"
    frames_socket = "pull"

    [feedback]
    mode = "apply"
    pixel_size_um = 0.03

    [feedback.interlocks]
    max_step_um = 0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tomolock.service.feedback.interlocks import InterlockConfig


class _Section(BaseModel):
    # Unknown keys are almost always typos in a beamline config: refuse them loudly.
    model_config = ConfigDict(extra="forbid")


def _zmq_address(value: str) -> str:
    if not value.startswith(("tcp://", "ipc://", "inproc://")):
        raise ValueError(f"{value!r} is not a ZMQ address (tcp://host:port, ipc://path)")
    return value


class IngestSettings(_Section):
    """Where frames and bluesky documents come from."""

    frames_address: str = Field("tcp://127.0.0.1:5600", description="detector stream address")
    frames_socket: Literal["pull", "sub"] = Field(
        "pull", description="PULL for PUSH streams (DECTRIS, ADZMQ push), SUB for PUB streams"
    )
    frames_bind: bool = Field(False, description="bind instead of connecting")
    rcvhwm: int = Field(8, ge=1, description="ZMQ receive high-water mark (messages)")
    max_message_bytes: int = Field(256 * 2**20, ge=1024, description="larger messages are dropped")
    frame_queue: int = Field(
        1,
        ge=1,
        description="projections waiting when the estimator lags (newest wins; 1 = lowest "
        "latency, larger = fewer drops when processing is bursty)",
    )
    documents_address: str | None = Field(
        None, description="0MQ proxy output carrying bluesky documents (msgpack); None = off"
    )

    _check_frames = field_validator("frames_address")(_zmq_address)


class EstimateSettings(_Section):
    """Drift estimator options."""

    upsample: int = Field(100, ge=1, le=1000, description="subpixel precision 1/upsample px")
    binning: int = Field(1, ge=1, le=8)
    window: Literal["hann", "tukey"] | None = None
    lowpass: float = Field(
        2.0, gt=0, description="Gaussian low-pass sigma on the correlation, analysed pixels"
    )
    periodic_smooth: bool = True
    roi: tuple[int, int, int, int] | None = Field(
        None, description="(row0, row1, col0, col1) region used by the estimators"
    )
    first_n: int = Field(
        0,
        ge=0,
        le=10_000,
        description="keep the first N projections of each scan as references for later frames "
        "at the same angles (360-degree scans, return-to-start checks); 0 = off",
    )
    reference_angle_tolerance_deg: float = Field(0.25, gt=0)
    workers: int = Field(1, ge=1, description="FFT threads per estimate")


class ModelSettings(_Section):
    """Drift-model options."""

    n_harmonics: int = Field(4, ge=1, le=16)
    initial_offset_std_um: float = Field(
        0.05,
        gt=0,
        description="prior on the sample's offset when the service starts: drift is motion "
        "since the sample was aligned (the absolute offset is not observable by the "
        "interferometer alone)",
    )
    runout_model_file: Path | None = Field(None, description="fitted runout model (JSON)")


class FeedbackSettings(_Section):
    """Correction setpoints and where they go."""

    mode: Literal["publish-only", "apply"] = "publish-only"
    pixel_size_um: float = Field(0.03, gt=0)
    sign_x: Literal[-1, 1] = 1
    sign_z: Literal[-1, 1] = 1
    axes: tuple[Literal["x", "y", "z"], ...] = ("x", "z")
    publish_address: str = "tcp://127.0.0.1:5601"
    lookahead_frames: int = Field(1, ge=1, description="correct for the exposure N frames ahead")
    interlocks: InterlockConfig = Field(default_factory=InterlockConfig)

    _check_publish = field_validator("publish_address")(_zmq_address)


class EpicsSettings(_Section):
    """PV prefixes of the beamline devices (the defaults match the simulated IOC)."""

    stage_prefix: str = "SIM:STAGE:"
    interferometer_prefix: str = "SIM:IFM:"
    microscope_prefix: str = "SIM:VLM:"
    detector_prefix: str = "SIM:DET:"
    connect_timeout_s: float = Field(5.0, gt=0)


class RecordSettings(_Section):
    """Where drift logs go."""

    directory: Path = Path("tomolock-data")


class ApiSettings(_Section):
    """HTTP API and dashboard."""

    host: str = Field("127.0.0.1", description="bind address; never 0.0.0.0 unless you mean it")
    port: int = Field(8600, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token for control endpoints")
    token_file: Path | None = Field(None, description="file holding the token (preferred)")

    @model_validator(mode="after")
    def _load_token_file(self) -> ApiSettings:
        if self.token is None and self.token_file is not None:
            try:
                text = self.token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read api.token_file {self.token_file}: {exc}") from None
            if not text:
                raise ValueError(f"api.token_file {self.token_file} is empty")
            self.token = SecretStr(text)
        return self


class TomolockSettings(BaseSettings):
    """All of tomolock's configuration (see the module docstring for sources)."""

    model_config = SettingsConfigDict(
        env_prefix="TOMOLOCK_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    ingest: IngestSettings = Field(default_factory=IngestSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    epics: EpicsSettings = Field(default_factory=EpicsSettings)
    record: RecordSettings = Field(default_factory=RecordSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: arguments, environment, TOML file."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @classmethod
    def load(cls, path: Path | str | None = None, **overrides: Any) -> TomolockSettings:
        """Load settings from an optional TOML file plus the environment.

        Parameters
        ----------
        path : path-like, optional
            TOML configuration file. Missing or unreadable files raise ``FileNotFoundError`` /
            ``ValueError`` naming the file, rather than silently running on defaults.
        **overrides
            Section values that take precedence over everything else.
        """
        if path is None:
            return cls(**overrides)
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"configuration file not found: {p}")
        import tomllib

        try:
            tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: invalid TOML: {exc}") from None

        # A subclass reading this file; named like the settings so errors read naturally.
        from_file = type(cls.__name__, (cls,), {"model_config": SettingsConfigDict(toml_file=p)})
        return cls.model_validate(from_file(**overrides).model_dump())
