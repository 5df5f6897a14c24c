"""The tomolock service as an ophyd-async device, backed by its HTTP API.

Plans read the feedback loop's state (and record it in their event documents) and control the
service (runout model, loop on/off, feedback mode) through this device. All I/O is asynchronous
on the RunEngine's event loop (:class:`httpx.AsyncClient`): a slow or dead service never blocks
the RunEngine, it raises :class:`ServiceError` after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from ophyd_async.core import (
    AsyncStatus,
    Device,
    StandardReadable,
    soft_signal_r_and_setter,
    soft_signal_rw,
)
from ophyd_async.core import StandardReadableFormat as Format

__all__ = [
    "DriftCheckReader",
    "ProcessedFrameWaiter",
    "RunoutModelSetter",
    "ServiceAuthError",
    "ServiceError",
    "ServiceRefusedError",
    "ServiceRejectedError",
    "ServiceUnavailableError",
    "TomolockService",
]

_MODES = ("publish-only", "apply")


class ServiceError(RuntimeError):
    """The tomolock service could not do what was asked (base class).

    ``status_code`` is the HTTP status when the service answered with an error, else None.
    """

    status_code: int | None = None


class ServiceUnavailableError(ServiceError):
    """The service did not answer (not running, wrong URL, or timeout)."""


class ServiceAuthError(ServiceError):
    """A control request was refused for lack of a valid token (HTTP 401/403)."""


class ServiceRefusedError(ServiceError):
    """The service refused a control request in its current state (HTTP 409)."""


class ServiceRejectedError(ServiceError):
    """The service rejected the request's content as invalid (HTTP 404/422)."""


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


class RunoutModelSetter(Device):
    """``set(model)`` stores a runout model in the service (``POST /model/runout``).

    ``model`` is a fitted :class:`~tomolock.service.model.RunoutModel` or its ``to_dict()``.
    The child signal ``n_harmonics`` tells what the service installed last (0: nothing yet).
    """

    def __init__(self, owner: TomolockService, name: str = "") -> None:
        # A bound method, not the device: a Device attribute would become a child.
        self._request = owner.request
        self.n_harmonics, self._set_n = soft_signal_r_and_setter(int, 0)
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def set(self, value: Any) -> None:
        """Send the model; done when the service has installed it."""
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping) or not value:
            raise TypeError(
                f"runout_model needs a fitted RunoutModel or its to_dict(), got {type(value)}"
            )
        answer = await self._request("POST", "/model/runout", json=dict(value))
        self._set_n(int(answer.get("model", {}).get("n_harmonics", 0)))


class ProcessedFrameWaiter(Device):
    """``set((scan_id, n))`` completes when the service has fully processed frame ``n - 1``.

    Fully processed means its drift-log row exists: estimated, fused, correction decided (and,
    in ``apply`` mode, the stage move awaited). Polls the API every ``poll_s`` seconds without
    blocking; raises :class:`ServiceError` after the device's ``wait_timeout_s``.
    """

    def __init__(self, owner: TomolockService, poll_s: float = 0.003, name: str = "") -> None:
        self._wait = owner.wait_processed
        self._poll_s = poll_s
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def set(self, value: tuple[str, int]) -> None:
        """Wait for frame ``n - 1`` of scan ``scan_id`` (``n = 0``: for the scan to start)."""
        try:
            scan_id, n = value
            n = int(n)
        except (TypeError, ValueError):
            raise TypeError(f"wait value must be (scan_id, n_frames), got {value!r}") from None
        if not isinstance(scan_id, str) or not scan_id or n < 0:
            raise ValueError(f"wait value must be (non-empty scan_id, n >= 0), got {value!r}")
        await self._wait(scan_id, n, poll_s=self._poll_s)


#: Numeric fields of a drift-check result (``GET /drift_check``) read as signals.
_CHECK_FIELDS = (
    ("centre_offset_px", "px"), ("axis_column_px", "px"), ("dy_px", "px"),
    ("confidence", None), ("angle_deg", "deg"), ("angle_180_deg", "deg"),
    ("reference_dx_px", "px"), ("reference_dy_px", "px"), ("time", "s"),
)


class DriftCheckReader(StandardReadable):
    """The service's result of a ``drift_check`` scan, as a readable (``GET /drift_check``).

    ``read()`` fetches the result of the check scan named by the config signal
    ``requested_scan_id`` (empty: the newest result) and returns ``available`` (False while
    the service has none: 404), ``scan_id`` and the numeric fields of
    :class:`~tomolock.service.api.models.DriftCheckResult` (``centre_offset_px``,
    ``axis_column_px``, ``dy_px``, ``confidence``, ``angle_deg``, ``angle_180_deg``,
    ``reference_dx_px``, ``reference_dy_px``, ``time``; NaN when unknown). :attr:`last` holds
    the raw JSON of the last result read.
    """

    def __init__(self, owner: TomolockService, name: str = "") -> None:
        self._fetch = owner.fetch_drift_check  # a bound method: a Device would become a child
        self.last: dict[str, Any] | None = None
        setters: dict[str, Any] = {}
        with self.add_children_as_readables():
            self.available, setters["available"] = soft_signal_r_and_setter(bool, False)
            self.scan_id, setters["scan_id"] = soft_signal_r_and_setter(str, "")
            for key, units in _CHECK_FIELDS:
                sig, setters[key] = soft_signal_r_and_setter(float, math.nan, units=units)
                setattr(self, key, sig)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.requested_scan_id = soft_signal_rw(str, "")
        self._setters = setters
        super().__init__(name=name)

    async def refresh(self) -> dict[str, Any] | None:
        """Fetch the result into the signals; return its JSON, or None when there is none."""
        wanted = await self.requested_scan_id.get_value()
        answer = await self._fetch(wanted or None)
        self.last = answer
        s = self._setters
        s["available"](answer is not None)
        s["scan_id"]((answer or {}).get("scan_id") or "")
        for key, _ in _CHECK_FIELDS:
            s[key](_float((answer or {}).get(key)))
        return answer

    async def read(self) -> dict[str, Any]:
        """Refresh from the service, then read every readable signal."""
        await self.refresh()
        return await super().read()


class ModelStateReader(StandardReadable):
    """The drift model's prediction now, at the stage's current angle (``GET /status``).

    ``read()`` returns ``fitted``, ``angle_deg``, ``position_x_um``/``position_z_um`` (the
    predicted sample displacement), ``std_x_um``/``std_z_um`` (its 1-sigma uncertainty) and
    ``turn_std_x_um``/``turn_std_z_um`` (the largest 1-sigma over a whole turn: large until
    the runout is calibrated), NaN while the service has no prediction.
    :func:`tomolock.plans.wait_for_model` watches it to start a reference scan only once the
    model has settled.
    """

    def __init__(self, owner: TomolockService, name: str = "") -> None:
        self._request = owner.request  # a bound method: a Device would become a child
        setters: dict[str, Any] = {}
        with self.add_children_as_readables():
            self.fitted, setters["fitted"] = soft_signal_r_and_setter(bool, False)
            for key, units in (("angle_deg", "deg"), ("position_x_um", "um"),
                               ("position_z_um", "um"), ("std_x_um", "um"),
                               ("std_z_um", "um"), ("turn_std_x_um", "um"),
                               ("turn_std_z_um", "um")):
                sig, setters[key] = soft_signal_r_and_setter(float, math.nan, units=units)
                setattr(self, key, sig)
        self._setters = setters
        super().__init__(name=name)

    async def refresh(self) -> dict[str, Any]:
        """Fetch ``/status`` into the signals; return its ``model`` part (``{}`` if none)."""
        model = (await self._request("GET", "/status")).get("model") or {}
        s = self._setters
        s["fitted"](bool(model.get("fitted")))
        s["angle_deg"](_float(model.get("angle_deg")))
        position = model.get("position_um") or {}
        std = model.get("position_std_um") or {}
        turn = model.get("turn_std_max_um") or {}
        for axis in ("x", "z"):
            s[f"position_{axis}_um"](_float(position.get(axis)))
            s[f"std_{axis}_um"](_float(std.get(axis)))
            s[f"turn_std_{axis}_um"](_float(turn.get(axis)))
        return model

    async def read(self) -> dict[str, Any]:
        """Refresh from the service, then read every readable signal."""
        await self.refresh()
        return await super().read()


class TomolockService(StandardReadable):
    """The live drift-correction service, seen through its HTTP API.

    Readable signals (refreshed from ``GET /status`` and the scan's drift log on every
    ``read()``): loop ``enabled`` and ``mode``, ``scan_id``, ``frames_processed``, the last
    setpoint ``setpoint_x_um``/``setpoint_z_um`` (stage target = -(predicted drift)), and of the
    last processed frame its image residual ``residual_dx_px``/``residual_dy_px`` (shift vs its
    reference, pixels), fused drift ``drift_x_um``/``drift_z_um`` and ``decision``.

    Settable: ``enabled`` (``POST /control/enable|disable`` with ``control_reason``), ``mode``
    (``POST /config``), ``runout_model`` (``POST /model/runout``); ``processed`` waits for the
    service (see :class:`ProcessedFrameWaiter`). Control needs ``token``. ``drift_check``
    reads drift-check results (:class:`DriftCheckReader`, not part of this device's reading;
    also :meth:`fetch_drift_check`); ``model`` reads the drift model's prediction now
    (:class:`ModelStateReader`, not part of this device's reading either).

    Parameters
    ----------
    url : str
        Base URL of the API, e.g. ``"http://127.0.0.1:8600"``.
    token : str, optional
        Bearer token for control requests.
    timeout_s : float
        Timeout of each HTTP request.
    wait_timeout_s : float
        How long :attr:`processed` waits for one frame.
    name : str
        Device name.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 5.0,
        wait_timeout_s: float = 30.0,
        name: str = "",
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be an http(s) URL with a host, got {url!r}")
        for label, value in (("timeout_s", timeout_s), ("wait_timeout_s", wait_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be > 0, got {value!r}")
        if token is not None and not token.strip():
            raise ValueError("token must be a non-empty string or None")
        self.url = str(parsed).rstrip("/")
        self._token = token
        self.timeout_s = float(timeout_s)
        self.wait_timeout_s = float(wait_timeout_s)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        setters: dict[str, Any] = {}
        self._loop_state: dict[str, Any] = {"enabled": True, "mode": "publish-only"}
        with self.add_children_as_readables():
            # The getters return the state of the last refresh (no request per signal).
            self.enabled = soft_signal_rw(
                bool, True, setter=self._put_enabled, getter=lambda: self._loop_state["enabled"]
            )
            self.mode = soft_signal_rw(
                str, "publish-only", setter=self._put_mode, getter=lambda: self._loop_state["mode"]
            )
            for key, dtype, units in (
                ("scan_id", str, None),
                ("frames_processed", int, None),
                ("setpoint_x_um", float, "um"),
                ("setpoint_z_um", float, "um"),
                ("residual_dx_px", float, "px"),
                ("residual_dy_px", float, "px"),
                ("drift_x_um", float, "um"),
                ("drift_z_um", float, "um"),
                ("decision", str, None),
            ):
                initial = math.nan if dtype is float else None
                sig, setters[key] = soft_signal_r_and_setter(dtype, initial, units=units)
                setattr(self, key, sig)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.control_reason = soft_signal_rw(str, "bluesky plan")
        self._setters = setters
        self.runout_model = RunoutModelSetter(self)
        self.processed = ProcessedFrameWaiter(self)
        self.drift_check = DriftCheckReader(self)
        self.model = ModelStateReader(self)
        super().__init__(name=name)

    # ------------------------------------------------------------------ connection
    async def connect(
        self, mock: Any = False, timeout: float = 10.0, force_reconnect: bool = False
    ) -> None:
        """Connect the soft signals and check the service answers ``GET /status``."""
        await super().connect(mock=mock, timeout=timeout, force_reconnect=force_reconnect)
        if mock:
            return
        await self.refresh()

    async def close(self) -> None:
        """Close the HTTP client (a later request opens a new one)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        # A client is bound to the loop that created it (its connection pool).
        if self._client is None or self._client_loop is not loop:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._client = httpx.AsyncClient(
                base_url=self.url, headers=headers, timeout=self.timeout_s, trust_env=False
            )
            self._client_loop = loop
        return self._client

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Send one API request and return the decoded JSON answer.

        Raises
        ------
        ServiceUnavailableError
            When the service does not answer within ``timeout_s``.
        ServiceAuthError, ServiceRefusedError, ServiceRejectedError, ServiceError
            On HTTP 401/403, 409, 404/422, and any other error status.
        """
        if method != "GET" and self._token is None:
            raise ServiceAuthError(
                f"{method} {path} needs the service's control token: create "
                "TomolockService(url, token=...)"
            )
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailableError(
                f"tomolock service at {self.url} did not answer {method} {path} within "
                f"{self.timeout_s} s"
            ) from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(
                f"cannot reach the tomolock service at {self.url} ({method} {path}): {exc}"
            ) from exc
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        code = response.status_code
        what = f"{method} {path} -> HTTP {code}: {detail}"
        error: ServiceError
        if code in (401, 403):
            error = ServiceAuthError(f"control refused, check the token ({what})")
        elif code == 409:
            error = ServiceRefusedError(f"refused in the service's current state ({what})")
        elif code in (404, 422):
            error = ServiceRejectedError(f"request rejected as invalid ({what})")
        else:
            error = ServiceError(what)
        error.status_code = code
        raise error

    # ------------------------------------------------------------------ state
    async def refresh(self) -> dict[str, Any]:
        """Update every readable signal from the service; return the raw ``/status``."""
        status = await self.request("GET", "/status")
        loop, scan = status["loop"], status["scan"]
        self._loop_state.update(enabled=bool(loop["enabled"]), mode=str(loop["mode"]))
        sp = loop.get("last_setpoint") or {}
        s = self._setters
        s["setpoint_x_um"](_float(sp.get("x_um")))
        s["setpoint_z_um"](_float(sp.get("z_um")))
        s["scan_id"](scan.get("scan_id") or "")
        processed = int(scan.get("frames_processed") or 0)
        s["frames_processed"](processed)
        if scan.get("scan_id") and processed > 0:
            await self._load_row(scan["scan_id"], processed - 1)
        return status

    async def _load_row(self, scan_id: str, frame: int) -> bool:
        """Load the drift-log row of ``frame`` into the signals; False when it is not there."""
        history = await self.request(
            "GET", f"/scans/{scan_id}/drift", params={"since_frame": frame, "limit": 1}
        )
        cols = history["columns"]
        if not cols["frame"] or cols["frame"][0] != frame:
            return False
        s = self._setters
        s["residual_dx_px"](_float(cols["est_dx_px"][0]))
        s["residual_dy_px"](_float(cols["est_dy_px"][0]))
        s["drift_x_um"](_float(cols["drift_x_um"][0]))
        s["drift_z_um"](_float(cols["drift_z_um"][0]))
        s["decision"](str(cols["decision"][0]))
        return True

    async def read(self) -> dict[str, Any]:
        """Refresh from the service, then read every readable signal."""
        await self.refresh()
        return await super().read()

    async def fetch_drift_check(self, scan_id: str | None = None) -> dict[str, Any] | None:
        """Return the drift-check result of ``scan_id`` (default: the newest) as JSON.

        Returns None while the service has none (HTTP 404: no check yet, or the scan's pair
        is not processed yet).

        Raises
        ------
        ServiceError
            When the service cannot be reached or answers with another error.
        """
        path = "/drift_check" if scan_id is None else f"/drift_check/{quote(scan_id, safe='')}"
        try:
            return await self.request("GET", path)
        except ServiceRejectedError as exc:
            if exc.status_code == 404:
                return None
            raise

    async def wait_processed(self, scan_id: str, n: int, *, poll_s: float = 0.003) -> None:
        """Return once frame ``n - 1`` of ``scan_id`` is in the drift log (``n = 0``: started).

        Raises
        ------
        ServiceError
            After ``wait_timeout_s`` without it.
        """
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            if n == 0:
                status = await self.request("GET", "/status")
                if status["scan"].get("scan_id") == scan_id:
                    return
            else:
                try:
                    if await self._load_row(scan_id, n - 1):
                        self._setters["frames_processed"](n)
                        return
                except ServiceRejectedError:
                    pass  # 404: the service has not seen the scan start yet
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the service did not process frame {n - 1} of scan {scan_id!r} within "
                    f"{self.wait_timeout_s} s (frame dropped, or the stream is not connected?)"
                )
            await asyncio.sleep(poll_s)

    # ------------------------------------------------------------------ control
    async def _put_enabled(self, value: bool | None) -> bool:
        enabled = bool(value)
        reason = await self.control_reason.get_value() or "bluesky plan"
        path = "/control/enable" if enabled else "/control/disable"
        await self.request("POST", path, json={"reason": reason})
        self._loop_state["enabled"] = enabled
        return enabled

    async def _put_mode(self, value: str | None) -> str:
        if value not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {value!r}")
        answer = await self.request("POST", "/config", json={"mode": value})
        self._loop_state["mode"] = str(answer.get("config", {}).get("mode", value))
        return self._loop_state["mode"]
