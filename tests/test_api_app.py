"""HTTP endpoints of tomolock.service.api: reads, auth, control, validation, metrics."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tomolock.service.api import ControlRefusedError, create_app
from tomolock.service.api.memory import DriftRow, InMemoryBackend
from tomolock.service.api.models import (
    ComponentCheck,
    HealthModel,
    Metric,
    ReferenceRequest,
)
from tomolock.service.api.prometheus import render

TOKEN = "tomolock-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_FRAMES = 30


def make_rows(n: int, seed: int = 1) -> list[DriftRow]:
    """Synthetic drift log: sinusoidal runout + linear thermal drift, noisy estimates."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        angle = 0.5 * i
        drift_x = 0.3 * math.sin(math.radians(angle)) + 0.001 * i
        drift_z = 0.05 * math.cos(math.radians(angle))
        rows.append(
            DriftRow(
                frame=i,
                angle_deg=angle,
                t=1000.0 + 0.1 * i,
                est_dy_px=drift_z / 0.03 + float(rng.normal(0, 0.01)),
                est_dx_px=drift_x / 0.03 + float(rng.normal(0, 0.01)),
                confidence=float(rng.uniform(0.5, 1.0)),
                drift_x_um=drift_x,
                drift_z_um=drift_z,
                correction_x_um=None if i == 0 else -drift_x,
                correction_z_um=None if i == 0 else -drift_z,
                decision="reference" if i == 0 else "move",
            )
        )
    return rows


ROWS = make_rows(N_FRAMES)


def make_backend() -> InMemoryBackend:
    backend = InMemoryBackend(version="9.9.9")
    backend.start_scan("scan-1", t=1000.0)
    for row in ROWS:
        backend.add_frame(row)
    backend.end_scan(t=1010.0)
    backend.start_scan("scan-2", t=2000.0)
    backend.metric_samples = [
        Metric(name="tomolock_frames_total", type="counter", help="Frames.", value=42),
        Metric(
            name="tomolock_frames_rejected_total",
            type="counter",
            help="Rejected frames by reason.",
            labels={"reason": "bad_shape"},
            value=3,
        ),
        Metric(
            name="tomolock_frames_rejected_total",
            type="counter",
            labels={"reason": 'odd "quote"\\'},
            value=1,
        ),
        Metric(name="tomolock_latency_ms", type="summary", help="Latency.\nms", value=21.5,
               labels={"quantile": "0.5"}),
        Metric(name="tomolock_latency_ms", type="summary", value=48.0, labels={"quantile": "0.99"}),
        Metric(name="tomolock_latency_ms", type="summary", value=2150.0, suffix="_sum"),
        Metric(name="tomolock_latency_ms", type="summary", value=100, suffix="_count"),
        Metric(name="tomolock_fps", type="gauge", help="Frame rate.", value=float("nan")),
    ]  # fmt: skip
    return backend


@pytest.fixture
def backend() -> InMemoryBackend:
    return make_backend()


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(backend: InMemoryBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(backend, token=TOKEN)) as c:
        yield c


@pytest.fixture
async def tokenless(backend: InMemoryBackend) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(backend, token=None)) as c:
        yield c


# ----------------------------------------------------------------------------- reads


async def test_index_lists_endpoints_with_auth_flags(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "tomolock"
    by_path = {e["path"]: e for e in body["endpoints"]}
    for path in ("/control/enable", "/control/disable", "/config", "/reference", "/model/runout"):
        assert by_path[path]["auth"] is True
        assert by_path[path]["methods"] == ["POST"]
    for path in ("/health", "/status", "/scans", "/scans/{scan_id}/drift", "/metrics", "/"):
        assert by_path[path]["auth"] is False
    assert by_path["/ws/live"]["methods"] == ["WS"]


async def test_health_status_codes(client: httpx.AsyncClient, backend: InMemoryBackend) -> None:
    r = await client.get("/health")
    assert (r.status_code, r.json()["state"]) == (200, "ok")

    degraded = [
        ComponentCheck(name="ingest", state="ok"),
        ComponentCheck(name="last_frame_age", state="degraded", detail="12 s"),
    ]
    backend.health_report = HealthModel.from_checks(degraded)
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json()["state"] == "degraded"
    assert r.json()["checks"][1] == {
        "name": "last_frame_age",
        "state": "degraded",
        "detail": "12 s",
    }

    backend.health_report = HealthModel.from_checks(
        [*degraded, ComponentCheck(name="ioc", state="failed", detail="disconnected")]
    )
    r = await client.get("/health")
    assert (r.status_code, r.json()["state"]) == (503, "failed")


async def test_health_reports_a_broken_backend_as_failed(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    def broken() -> HealthModel:
        raise RuntimeError("pipeline crashed")

    backend.health = broken  # type: ignore[method-assign]
    r = await client.get("/health")
    assert r.status_code == 503
    check = r.json()["checks"][0]
    assert check["name"] == "backend"
    assert "pipeline crashed" in check["detail"]


def test_health_model_cannot_be_better_than_its_worst_check() -> None:
    with pytest.raises(ValueError, match="better than its worst check 'failed'"):
        HealthModel(state="degraded", checks=[ComponentCheck(name="ioc", state="failed")])


async def test_status_and_scans(client: httpx.AsyncClient) -> None:
    r = await client.get("/status")
    assert r.status_code == 200
    status = r.json()
    assert status["version"] == "9.9.9"
    assert status["scan"]["state"] == "running"
    assert status["scan"]["scan_id"] == "scan-2"
    assert status["loop"]["enabled"] is True
    assert status["loop"]["mode"] == "publish-only"

    r = await client.get("/scans")
    assert r.status_code == 200
    scans = r.json()
    assert [s["scan_id"] for s in scans] == ["scan-1", "scan-2"]
    assert scans[0] == {
        "scan_id": "scan-1",
        "state": "ended",
        "start_time": 1000.0,
        "end_time": 1010.0,
        "frames": N_FRAMES,
    }
    assert scans[1]["state"] == "running"


async def test_drift_history_columns_match_ground_truth(client: httpx.AsyncClient) -> None:
    r = await client.get("/scans/scan-1/drift")
    assert r.status_code == 200
    body = r.json()
    assert body["scan_id"] == "scan-1"
    assert body["next_frame"] is None
    cols = body["columns"]
    assert cols["frame"] == list(range(N_FRAMES))
    np.testing.assert_allclose(cols["drift_x_um"], [row.drift_x_um for row in ROWS])
    np.testing.assert_allclose(cols["est_dx_px"], [row.est_dx_px for row in ROWS])
    np.testing.assert_allclose(cols["angle_deg"], 0.5 * np.arange(N_FRAMES))
    assert cols["correction_x_um"][0] is None
    assert cols["correction_x_um"][5] == pytest.approx(-ROWS[5].drift_x_um)
    assert cols["decision"][:2] == ["reference", "move"]
    assert {len(v) for v in cols.values()} == {N_FRAMES}


async def test_drift_history_paging(client: httpx.AsyncClient) -> None:
    r = await client.get("/scans/scan-1/drift", params={"since_frame": 10, "limit": 5})
    body = r.json()
    assert body["columns"]["frame"] == [10, 11, 12, 13, 14]
    assert body["next_frame"] == 15
    r = await client.get("/scans/scan-1/drift", params={"since_frame": 25, "limit": 5})
    assert r.json()["columns"]["frame"] == [25, 26, 27, 28, 29]
    assert r.json()["next_frame"] is None


async def test_drift_history_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/scans/nope/drift")
    assert r.status_code == 404
    assert r.json()["detail"] == "unknown scan 'nope'"
    for params in ({"limit": 0}, {"limit": 10**6}, {"since_frame": -1}, {"limit": "many"}):
        r = await client.get("/scans/scan-1/drift", params=params)
        assert r.status_code == 422, params
        assert r.json()["detail"][0]["loc"][0] == "query"


async def test_nan_values_become_null(client: httpx.AsyncClient, backend: InMemoryBackend) -> None:
    backend.start_scan("scan-nan")
    backend.add_frame(
        DriftRow(0, 0.0, 1.0, float("nan"), 0.1, float("nan"), 0.0, 0.0, None, None, "refuse")
    )
    r = await client.get("/scans/scan-nan/drift")
    assert r.status_code == 200
    assert r.json()["columns"]["est_dy_px"] == [None]
    assert r.json()["columns"]["confidence"] == [None]


async def test_openapi_schema_documents_models_and_security(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "examples" in schema["components"]["schemas"]["StatusModel"]
    enable = schema["paths"]["/control/enable"]["post"]
    assert {"401", "403", "422"} <= set(enable["responses"])
    assert enable["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/status"]["get"]


# ----------------------------------------------------------------------------- metrics

SAMPLE_LINE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)\})? (?P<value>\S+)$'
)


def parse_prometheus(
    text: str,
) -> tuple[dict[str, str], dict[str, str], list[tuple[str, str, float]]]:
    """Minimal exposition-format parser: HELP, TYPE, samples; fails on any other line."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: list[tuple[str, str, float]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert name not in helps, f"HELP twice for {name}"
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "gauge", "summary", "histogram", "untyped"}, line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
        else:
            m = SAMPLE_LINE.match(line)
            assert m, f"bad sample line {line!r}"
            value = m["value"]
            samples.append((m["name"], m["labels"] or "", float(value)))
    return helps, types, samples


async def test_metrics_text_parses(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    helps, types, samples = parse_prometheus(r.text)
    assert types["tomolock_frames_total"] == "counter"
    assert types["tomolock_latency_ms"] == "summary"
    assert types["tomolock_api_ws_clients"] == "gauge"
    assert helps["tomolock_latency_ms"] == "Latency.\\nms"
    values = {(name, labels): value for name, labels, value in samples}
    assert values[("tomolock_frames_total", "")] == 42
    assert values[("tomolock_frames_rejected_total", 'reason="bad_shape"')] == 3
    assert values[("tomolock_frames_rejected_total", 'reason="odd \\"quote\\"\\\\"')] == 1
    assert values[("tomolock_latency_ms", 'quantile="0.99"')] == 48.0
    assert values[("tomolock_latency_ms_count", "")] == 100
    assert math.isnan(values[("tomolock_fps", "")])
    # Every sample belongs to a declared family, and families are contiguous.
    family_of = [n.removesuffix("_sum").removesuffix("_count") for n, _, _ in samples]
    assert set(family_of) <= set(types)
    order = [f for i, f in enumerate(family_of) if i == 0 or family_of[i - 1] != f]
    assert len(order) == len(set(order))


def test_render_rejects_inconsistent_families() -> None:
    with pytest.raises(ValueError, match="both counter and gauge"):
        render([Metric(name="a", type="counter", value=1), Metric(name="a", type="gauge", value=1)])
    with pytest.raises(ValueError, match="duplicate sample"):
        render([Metric(name="a", type="gauge", value=1), Metric(name="a", type="gauge", value=2)])
    assert render([]) == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad-name", "type": "gauge"}, "invalid Prometheus metric name"),
        ({"name": "ok", "type": "gauge", "labels": {"__x": "1"}}, "invalid Prometheus label"),
        ({"name": "ok", "type": "gauge", "suffix": "_sum"}, "summaries only"),
        ({"name": "ok", "type": "gauge", "labels": {"quantile": "0.5"}}, "summaries only"),
    ],
)
def test_metric_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Metric(value=1.0, **kwargs)


# ----------------------------------------------------------------------------- auth

CONTROL_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/control/enable", {"reason": "resume"}),
    ("/control/disable", {"reason": "beam dump"}),
    ("/config", {"min_confidence": 0.7}),
    ("/reference", {"strategy": "mirror"}),
    ("/model/runout", {"kind": "harmonic", "order": 2}),
]


@pytest.mark.parametrize(("path", "body"), CONTROL_REQUESTS)
async def test_control_refused_without_valid_token(
    client: httpx.AsyncClient, backend: InMemoryBackend, path: str, body: dict[str, Any]
) -> None:
    r = await client.post(path, json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "missing" in r.json()["detail"]
    for header in (f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", TOKEN):
        r = await client.post(path, json=body, headers={"Authorization": header})
        assert r.status_code == 401, header
    assert backend.calls == []


@pytest.mark.parametrize(("path", "body"), CONTROL_REQUESTS)
async def test_control_accepted_with_token(
    client: httpx.AsyncClient, backend: InMemoryBackend, path: str, body: dict[str, Any]
) -> None:
    r = await client.post(path, json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert len(backend.calls) == 1


@pytest.mark.parametrize(("path", "body"), CONTROL_REQUESTS)
async def test_control_forbidden_when_started_without_token(
    tokenless: httpx.AsyncClient, backend: InMemoryBackend, path: str, body: dict[str, Any]
) -> None:
    r = await tokenless.post(path, json=body, headers=AUTH)
    assert r.status_code == 403
    assert "started without an API token" in r.json()["detail"]
    assert backend.calls == []
    assert (await tokenless.get("/status")).status_code == 200


async def test_auth_is_checked_before_the_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/config", json={"min_confidence": 7})
    assert r.status_code == 401


@pytest.mark.parametrize("token", ["", "   ", "two words", "tab\there", "new\nline"])
def test_create_app_rejects_bad_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="API token must be"):
        create_app(make_backend(), token=token)


def test_create_app_rejects_incomplete_backend() -> None:
    class Half:
        def status(self) -> None: ...

    with pytest.raises(TypeError, match=r"lacks ServiceBackend methods \['health'"):
        create_app(Half(), token=TOKEN)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- control


async def test_enable_disable_round_trip(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    r = await client.post("/control/disable", json={"reason": "beam dump"}, headers=AUTH)
    assert r.json() == {"enabled": False, "reason": "beam dump"}
    status = (await client.get("/status")).json()["loop"]
    assert (status["enabled"], status["disabled_reason"]) == (False, "beam dump")
    r = await client.post("/control/enable", json={"reason": "beam back"}, headers=AUTH)
    assert r.json() == {"enabled": True, "reason": "beam back"}
    assert backend.calls == [
        ("set_enabled", (False, "beam dump")),
        ("set_enabled", (True, "beam back")),
    ]


async def test_config_patch_is_validated_and_applied(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    patch = {
        "mode": "apply",
        "dead_band_um": 0.01,
        "interlock": {"max_step_um": 0.5, "soft_limits": {"x": {"low": -20, "high": 20}}},
    }
    r = await client.post("/config", json=patch, headers=AUTH)
    assert r.status_code == 200, r.text
    config = r.json()["config"]
    assert config["mode"] == "apply"
    assert config["interlock"]["max_step_um"] == 0.5
    assert config["interlock"]["soft_limits"] == {"x": {"low": -20.0, "high": 20.0}}
    assert (await client.get("/status")).json()["loop"]["mode"] == "apply"
    # A patch valid on its own but inconsistent with the effective config: backend says 422.
    r = await client.post("/config", json={"dead_band_um": 0.6}, headers=AUTH)
    assert r.status_code == 422
    assert "must be below max_step_um" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/control/disable", {}, "Field required"),
        ("/control/disable", {"reason": ""}, "at least 1 character"),
        ("/control/enable", {"reason": "x", "force": True}, "Extra inputs are not permitted"),
        ("/config", {}, "changes nothing"),
        ("/config", {"interlock": {}}, "interlock patch changes nothing"),
        ("/config", {"min_confidence": 1.5}, "less than or equal to 1"),
        ("/config", {"mode": "yolo"}, "'publish-only' or 'apply'"),
        ("/config", {"dead_band_um": "NaN"}, "finite number"),
        ("/config", {"min_confdence": 0.5}, "Extra inputs are not permitted"),
        ("/config", {"interlock": {"soft_limits": {"x": {"low": 5, "high": -5}}}}, "below high"),
        (
            "/config",
            {"interlock": {"soft_limits": {"q": {"low": 0, "high": 1}}}},
            "'x', 'y' or 'z'",
        ),
        ("/reference", {"strategy": "reference_scan"}, "needs scan_id"),
        ("/reference", {"strategy": "mirror", "n_frames": 3}, "takes no n_frames"),
        ("/reference", {"strategy": "first_n", "n_frames": 0}, "greater than or equal to 1"),
        ("/reference", {"strategy": "nearest"}, "'first_n', 'reference_scan' or 'mirror'"),
        ("/reference", {"strategy": "reference_scan", "scan_id": "nope"}, "is unknown"),
        ("/model/runout", {}, "runout model is empty"),
        ("/model/runout", {"order": 2}, "needs a string 'kind'"),
        ("/model/runout", [1, 2], "valid dictionary"),
    ],
)
async def test_control_validation_errors(
    client: httpx.AsyncClient, path: str, body: Any, message: str
) -> None:
    r = await client.post(path, json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert message in r.text


async def test_reference_defaults_and_stored(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    r = await client.post("/reference", json={"strategy": "first_n"}, headers=AUTH)
    assert r.json() == {"reference": {"strategy": "first_n", "n_frames": 1}}
    body = {"strategy": "reference_scan", "scan_id": "scan-1"}
    r = await client.post("/reference", json=body, headers=AUTH)
    assert r.json() == {"reference": body}
    assert backend.calls[-1] == ("set_reference", ReferenceRequest(**body))


async def test_refused_control_is_409(backend: InMemoryBackend) -> None:
    async def refuse(_request: ReferenceRequest) -> dict[str, Any]:
        raise ControlRefusedError("cannot change the reference while scan-2 is running")

    backend.set_reference = refuse  # type: ignore[method-assign]
    async with _client(create_app(backend, token=TOKEN)) as client:
        r = await client.post("/reference", json={"strategy": "mirror"}, headers=AUTH)
        assert r.status_code == 409
        assert r.json()["detail"] == "cannot change the reference while scan-2 is running"


async def test_runout_model_round_trip(client: httpx.AsyncClient, backend: InMemoryBackend) -> None:
    model = {"kind": "harmonic", "order": 1, "x_um": {"a": [0.0, 0.3], "b": [0.0, -0.1]}}
    r = await client.post("/model/runout", json=model, headers=AUTH)
    assert r.json() == {"model": model}
    assert backend.runout_model == model
