"""Dashboard endpoints and helpers: page and assets, /config, /model, /images, PNG, thumbnails."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tomolock.service.api import create_app
from tomolock.service.api.backend import BACKEND_METHODS, optional_method
from tomolock.service.api.dashboard import (
    check_thumbnail,
    encode_png,
    make_thumbnail,
    plotly_js_path,
)
from tomolock.service.api.memory import DriftRow, InMemoryBackend

TOKEN = "dashboard-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RequiredOnly:
    """Only the required backend methods (as a pipeline without the optional ones)."""

    def __init__(self, inner: InMemoryBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in BACKEND_METHODS:
            return getattr(self._inner, name)
        raise AttributeError(name)


async def _client(backend: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend, token=TOKEN)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
def backend() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
async def client(backend: InMemoryBackend) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(backend):
        yield c


@pytest.fixture
async def bare_client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(RequiredOnly(InMemoryBackend())):
        yield c


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


# ----------------------------------------------------------------------------- page, assets


async def test_page_and_assets_are_served_offline(client: httpx.AsyncClient) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'src="dashboard/vendor/plotly.min.js"' in html
    assert "://" not in html.replace("http://www.w3.org", "")  # nothing from a CDN
    for path, kind in [
        ("/dashboard/static/dashboard.css", "text/css"),
        ("/dashboard/static/js/main.js", "javascript"),
        ("/dashboard/static/js/series.js", "javascript"),
        ("/dashboard/vendor/plotly.min.js", "javascript"),
    ]:
        r = await client.get(path)
        assert r.status_code == 200, path
        assert kind in r.headers["content-type"], (path, r.headers["content-type"])
    r = await client.get("/dashboard/vendor/plotly.min.js")
    assert len(r.content) == plotly_js_path().stat().st_size > 1_000_000
    assert (await client.get("/dashboard/static/nope.js")).status_code == 404


async def test_browsers_are_redirected_api_clients_get_the_index(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 307 and r.headers["location"] == "dashboard"
    r = await client.get("/")
    assert r.status_code == 200
    paths = {(e["path"], tuple(e["methods"])) for e in r.json()["endpoints"]}
    for entry in [("/dashboard", ("GET",)), ("/model", ("GET",)), ("/images/latest", ("GET",))]:
        assert entry in paths


# ----------------------------------------------------------------------------- config, model


async def test_config_reflects_patches(client: httpx.AsyncClient) -> None:
    r = await client.get("/config")
    assert r.status_code == 200
    assert r.json() == {"config": {"mode": "publish-only", "interlock": {}}}
    patch = {"interlock": {"max_total_correction_um": 2.5}, "min_confidence": 0.7}
    assert (await client.post("/config", json=patch, headers=AUTH)).status_code == 200
    config = (await client.get("/config")).json()["config"]
    assert config["interlock"] == {"max_total_correction_um": 2.5}
    assert config["min_confidence"] == 0.7


async def test_model_before_and_after_a_fit(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    assert (await client.get("/model")).json() == {
        "available": False, "detail": "no model fitted yet", "state": None,
    }  # fmt: skip
    backend.fitted_model = {
        "kind": "runout",
        "fitted": True,
        "harmonics": {"x": {"cos_um": [0.3, 0.01], "sin_um": [-0.1, 0.0]}},
        "residuals": {"x": {"angle_deg": np.array([0.0, 90.0]), "residual_um": [0.01, np.nan]}},
        "rms_residual_um": {"x": 0.01},
    }
    body = (await client.get("/model")).json()
    assert body["available"] is True
    state = body["state"]
    assert state["harmonics"]["x"] == {"offset_um": 0.0, "cos_um": [0.3, 0.01],
                                       "sin_um": [-0.1, 0.0]}  # fmt: skip
    assert state["residuals"]["x"] == {"angle_deg": [0.0, 90.0], "residual_um": [0.01, None]}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kind": "runout", "fitted": True,
          "harmonics": {"x": {"cos_um": [0.3, 0.1], "sin_um": [0.1]}}}, "2 harmonics but sin_um 1"),
        ({"kind": "runout", "fitted": True,
          "residuals": {"z": {"angle_deg": [1.0], "residual_um": []}}}, "1 angles but 0 values"),
        ({"kind": "runout", "fitted": True, "harmonics": {"q": {"cos_um": [1], "sin_um": [1]}}},
         "Input should be 'x', 'y' or 'z'"),
    ],
)  # fmt: skip
async def test_invalid_model_from_backend_is_a_clear_server_error(
    client: httpx.AsyncClient, backend: InMemoryBackend, model: dict[str, Any], message: str
) -> None:
    backend.fitted_model = model
    with pytest.raises(RuntimeError, match=r"model_state\(\) returned an invalid value") as info:
        await client.get("/model")
    assert message in str(info.value)


# ----------------------------------------------------------------------------- images


async def test_latest_images_round_trip_as_png(
    client: httpx.AsyncClient, backend: InMemoryBackend
) -> None:
    body = (await client.get("/images/latest")).json()
    assert body["available"] is False and body["frame"] is None
    assert (await client.get("/images/latest/frame.png")).status_code == 404

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    backend.set_images(frame, frame_number=12, angle_deg=6.0)
    r = await client.get("/images/latest")
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert (body["available"], body["frame_number"], body["angle_deg"]) == (True, 12, 6.0)
    assert (body["frame"]["height"], body["frame"]["width"]) == (37, 53)
    assert body["reference"] is None
    prefix = "data:image/png;base64,"
    assert body["frame"]["png_data_url"].startswith(prefix)
    png = base64.b64decode(body["frame"]["png_data_url"][len(prefix):])
    np.testing.assert_array_equal(decode_png(png), frame)

    r = await client.get("/images/latest/frame.png")
    assert r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_png(r.content), frame)
    r = await client.get("/images/latest/reference.png")
    assert r.status_code == 404 and "no reference image" in r.json()["detail"]
    assert (await client.get("/images/latest/other.png")).status_code == 422

    reference = frame[::-1].copy()
    backend.set_images(frame, reference)
    r = await client.get("/images/latest/reference.png")
    np.testing.assert_array_equal(decode_png(r.content), reference)


async def test_optional_endpoints_answer_501_without_backend_methods(
    bare_client: httpx.AsyncClient,
) -> None:
    for path, method in [("/config", "config"), ("/model", "model_state"),
                         ("/images/latest", "latest_images"),
                         ("/images/latest/frame.png", "latest_images")]:  # fmt: skip
        r = await bare_client.get(path)
        assert r.status_code == 501, path
        assert f"has no {method}() method" in r.json()["detail"]
    assert (await bare_client.get("/status")).status_code == 200
    # Control still works: the optional methods are not part of create_app's check.
    r = await bare_client.post("/control/disable", json={"reason": "x"}, headers=AUTH)
    assert r.status_code == 200


def test_optional_method_lookup() -> None:
    backend = InMemoryBackend()
    assert optional_method(backend, "config") == backend.config
    assert optional_method(RequiredOnly(backend), "config") is None
    with pytest.raises(ValueError, match="not one of"):
        optional_method(backend, "status")


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (256, 256), (1024, 17)])
def test_encode_png_is_lossless(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)
    # Non-contiguous views are encoded as what they show.
    view = np.zeros((shape[0], 2 * shape[1]), np.uint8)
    view[:, ::2] = image
    np.testing.assert_array_equal(decode_png(encode_png(view[:, ::2])), image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([[1, 2]], "must be a numpy array"),
        (np.zeros((4, 4), np.uint16), "2-D uint8"),
        (np.zeros((4, 4, 3), np.uint8), "2-D uint8"),
        (np.zeros((0, 4), np.uint8), "non-empty"),
        (np.zeros((1025, 4), np.uint8), "at most 1024 px"),
    ],
)
def test_check_thumbnail_rejects_bad_images(image: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_thumbnail("frame", image)


def test_make_thumbnail_bins_and_stretches() -> None:
    yy, xx = np.mgrid[0:2048, 0:2000]
    image = (xx + 3 * yy).astype(np.uint16)
    image[-1, -1] = 65535  # a hot pixel must not set the scale
    thumb = make_thumbnail(image, max_side=256)
    assert thumb.dtype == np.uint8 and thumb.shape == (256, 250)  # factor 8, 2000 // 8 = 250
    assert thumb[0, 0] == 0 and thumb[-1, -2] >= 250
    assert np.all(np.diff(thumb.astype(int), axis=0) >= 0)  # monotone ramp stays monotone
    assert 100 < thumb[128, 125] < 160  # middle of the ramp, mid grey


def test_make_thumbnail_edge_cases() -> None:
    assert make_thumbnail(np.full((10, 10), 7.0)).max() == 0  # flat: no division by zero
    assert make_thumbnail(np.full((4, 4), np.nan)).max() == 0
    img = np.arange(16.0).reshape(4, 4)
    img[0, 0] = np.nan
    thumb = make_thumbnail(img, percentiles=(0, 100))
    assert thumb[0, 0] == 0 and thumb[-1, -1] == 255
    for bad, message in [
        (np.zeros(5), "2-D"),
        (np.zeros((4, 4), complex), "real-valued"),
        (np.zeros((2000, 1)), "too thin"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_thumbnail(bad)
    with pytest.raises(ValueError, match="max_side"):
        make_thumbnail(img, max_side=0)
    with pytest.raises(ValueError, match="percentiles"):
        make_thumbnail(img, percentiles=(50, 50))


def test_memory_backend_status_reports_last_setpoint_and_decision() -> None:
    backend = InMemoryBackend()
    backend.start_scan("s1", t=0.0)
    row = DriftRow(frame=0, angle_deg=0.0, t=0.0, est_dy_px=0.0, est_dx_px=0.0, confidence=1.0,
                   drift_x_um=0.2, drift_z_um=0.1, correction_x_um=None, correction_z_um=None,
                   decision="reference")  # fmt: skip
    backend.add_frame(row)
    loop = backend.status().loop
    assert (loop.last_setpoint, loop.last_decision) == (None, "reference")
    backend.add_frame(DriftRow(**{**row.__dict__, "frame": 1, "correction_x_um": -0.2,
                                  "correction_z_um": -0.1, "decision": "move"}))  # fmt: skip
    loop = backend.status().loop
    assert loop.last_setpoint is not None
    assert (loop.last_setpoint.x_um, loop.last_setpoint.z_um, loop.last_decision) == (
        -0.2, -0.1, "move"
    )
    with pytest.raises(ValueError, match="2-D uint8"):
        backend.set_images(np.zeros((4, 4), np.float32))
