"""The control-room dashboard: the page, its assets and the read endpoints it needs.

Routes added by :func:`add_dashboard_routes`:

* ``GET /dashboard``: the page (static HTML + ES modules from ``static/``, no build step).
* ``GET /dashboard/static/...``: its CSS and JavaScript.
* ``GET /dashboard/vendor/plotly.min.js``: plotly.js from the installed ``plotly`` wheel, so the
  page works without network access.
* ``GET /config``: effective runtime configuration (interlock limits) from ``backend.config()``.
* ``GET /model``: fitted drift model (harmonics, residuals) from ``backend.model_state()``.
* ``GET /images/latest``: latest projection thumbnail and its reference as PNG data URLs, and
  ``GET /images/latest/{frame|reference}.png`` as plain PNG, from ``backend.latest_images()``.

The three backend methods are optional: without one, its endpoints answer 501 and the page says
"not available".
"""

from __future__ import annotations

import base64
import importlib.util
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Response, status
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from numpy.typing import ArrayLike, NDArray
from pydantic import ValidationError

from tomolock.service.api.backend import optional_method
from tomolock.service.api.models import (
    ConfigResponse,
    ErrorModel,
    ImageInfo,
    LatestImagesResponse,
    ModelResponse,
    ModelState,
)

#: Folder of the page's HTML, CSS and JavaScript (package data).
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Largest thumbnail side the API serves, pixels (thumbnails, not full frames).
MAX_THUMBNAIL_SIDE = 1024
IMAGE_NAMES = ("frame", "reference")

_NOT_PROVIDED = {501: {"model": ErrorModel, "description": "backend does not provide this"}}
_NO_STORE = {"Cache-Control": "no-store"}


# --------------------------------------------------------------------------- images


def check_thumbnail(name: str, image: Any) -> NDArray[np.uint8]:
    """Check that ``image`` is a servable thumbnail and return it as a C-contiguous array.

    Parameters
    ----------
    name : str
        What the image is (for the error message).
    image : Any
        Should be a 2-D ``uint8`` array, at most :data:`MAX_THUMBNAIL_SIDE` a side.

    Returns
    -------
    numpy.ndarray
        The image, C-contiguous.

    Raises
    ------
    ValueError
        If it is not a non-empty 2-D ``uint8`` array of allowed size.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"{name} image must be a non-empty 2-D uint8 array (use make_thumbnail), got "
            f"dtype {image.dtype} shape {image.shape}"
        )
    if max(image.shape) > MAX_THUMBNAIL_SIDE:
        raise ValueError(
            f"{name} image is {image.shape}; thumbnails are at most {MAX_THUMBNAIL_SIDE} px a "
            "side (use make_thumbnail)"
        )
    return np.ascontiguousarray(image)


def make_thumbnail(
    image: ArrayLike,
    max_side: int = 256,
    percentiles: tuple[float, float] = (1.0, 99.5),
) -> NDArray[np.uint8]:
    """Bin a projection down to at most ``max_side`` pixels a side and stretch it to 8 bits.

    Parameters
    ----------
    image : array_like
        2-D image of any real dtype; non-finite pixels are shown black.
    max_side : int, optional
        Largest side of the result (integer binning by the smallest sufficient factor; rows and
        columns that do not fill a bin are cut off).
    percentiles : tuple of float, optional
        Intensity percentiles mapped to 0 and 255 (robust against hot pixels).

    Returns
    -------
    numpy.ndarray
        2-D ``uint8`` thumbnail.

    Raises
    ------
    ValueError
        If the image is not 2-D and non-empty, ``max_side`` is not in 1..1024 or the
        percentiles are not ordered within 0..100.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"image must be real-valued, got dtype {a.dtype}")
    if not 1 <= max_side <= MAX_THUMBNAIL_SIDE:
        raise ValueError(f"max_side must be in 1..{MAX_THUMBNAIL_SIDE}, got {max_side}")
    lo_pct, hi_pct = percentiles
    if not 0.0 <= lo_pct < hi_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    factor = math.ceil(max(a.shape) / max_side)
    h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
    if h == 0 or w == 0:
        raise ValueError(f"image {a.shape} is too thin for a thumbnail of {max_side} px")
    binned = (
        a[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor).mean((1, 3))
    )
    finite = np.isfinite(binned)
    if not finite.any():
        return np.zeros(binned.shape, np.uint8)
    lo, hi = np.percentile(binned[finite], [lo_pct, hi_pct])
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    stretched = np.clip((np.where(finite, binned, lo) - lo) * scale, 0.0, 255.0)
    return np.rint(stretched).astype(np.uint8)


def encode_png(image: NDArray[np.uint8]) -> bytes:
    """Encode a 2-D ``uint8`` array as an 8-bit greyscale PNG (zlib + struct, no dependency).

    Parameters
    ----------
    image : numpy.ndarray
        Thumbnail as accepted by :func:`check_thumbnail`.

    Returns
    -------
    bytes
        The PNG file.

    Raises
    ------
    ValueError
        If the array is not a valid thumbnail.
    """
    a = check_thumbnail("PNG", image)
    height, width = a.shape
    rows = np.zeros((height, width + 1), np.uint8)  # leading 0 per row: filter type "None"
    rows[:, 1:] = a

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bit, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _image_info(png: bytes, shape: tuple[int, ...]) -> ImageInfo:
    data_url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return ImageInfo(height=shape[0], width=shape[1], png_data_url=data_url)


# --------------------------------------------------------------------------- plotly.js


def plotly_js_path() -> Path:
    """Return the path of ``plotly.min.js`` inside the installed ``plotly`` package.

    Raises
    ------
    FileNotFoundError
        If the ``plotly`` package or its bundled ``plotly.min.js`` is missing.
    """
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the 'plotly' Python package is not installed; the dashboard serves its bundled "
            "plotly.min.js (pip install plotly)"
        )
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path} (broken plotly install?)")
    return path


# --------------------------------------------------------------------------- routes


def _require(backend: object, name: str, what: str) -> Callable[[], Any]:
    method = optional_method(backend, name)
    if method is None:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            f"{what} not available: backend {type(backend).__name__} has no {name}() method",
        )
    return method


def _backend_bug(name: str, exc: Exception) -> RuntimeError:
    return RuntimeError(f"backend {name}() returned an invalid value (backend bug): {exc}")


def add_dashboard_routes(app: FastAPI, backend: object) -> None:
    """Add the dashboard page, its assets and its read endpoints to ``app``.

    Parameters
    ----------
    app : FastAPI
        The application from :func:`~tomolock.service.api.app.create_app`.
    backend : object
        The service backend; its optional methods ``config``, ``model_state`` and
        ``latest_images`` are looked up on every request.

    Raises
    ------
    FileNotFoundError
        If the package's ``static`` folder is missing (a broken installation).
    """
    if not (STATIC_DIR / "dashboard.html").is_file():
        raise FileNotFoundError(
            f"dashboard files missing in {STATIC_DIR}: is tomolock installed with its package "
            "data (static/*)?"
        )

    @app.get("/dashboard", response_class=FileResponse, summary="Control-room dashboard (HTML)")
    async def dashboard() -> FileResponse:
        """Serve the live control-room page (open it in a browser)."""
        return FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        try:
            path = plotly_js_path()
        except FileNotFoundError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        return FileResponse(
            path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get(
        "/config",
        response_model=ConfigResponse,
        summary="Effective runtime config",
        responses=_NOT_PROVIDED,
    )
    async def get_config() -> ConfigResponse:
        """Effective runtime configuration: mode, interlock limits, detector mapping."""
        config = _require(backend, "config", "runtime configuration")()
        if config is None:
            raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, "backend reports no config")
        if not isinstance(config, dict):
            raise _backend_bug("config", TypeError(f"a dict is needed, got {type(config)}"))
        return ConfigResponse(config=config)

    @app.get(
        "/model",
        response_model=ModelResponse,
        summary="Fitted drift model",
        responses=_NOT_PROVIDED,
    )
    async def get_model() -> ModelResponse:
        """Runout harmonics per axis and fit residuals (``available`` false before a fit)."""
        state = _require(backend, "model_state", "drift model")()
        if state is None:
            return ModelResponse(available=False, detail="no model fitted yet")
        try:
            return ModelResponse(available=True, state=ModelState.model_validate(state))
        except ValidationError as exc:
            raise _backend_bug("model_state", exc) from None

    def latest() -> tuple[dict[str, Any] | None, dict[str, NDArray[np.uint8] | None]]:
        images = _require(backend, "latest_images", "images")()
        if images is None:
            return None, {}
        if not isinstance(images, dict) or images.get("frame") is None:
            raise _backend_bug("latest_images", ValueError("a dict with a 'frame' is needed"))
        try:
            arrays = {
                n: None if images.get(n) is None else check_thumbnail(n, images[n])
                for n in IMAGE_NAMES
            }
        except ValueError as exc:
            raise _backend_bug("latest_images", exc) from None
        return images, arrays

    @app.get(
        "/images/latest",
        response_model=LatestImagesResponse,
        summary="Latest projection and reference (PNG data URLs)",
        responses=_NOT_PROVIDED,
    )
    async def latest_images() -> Response:
        """Latest projection thumbnail and its reference, 8-bit greyscale PNG data URLs."""
        images, arrays = latest()
        if images is None:
            body = LatestImagesResponse(available=False, detail="no projection yet")
        else:
            infos = {
                n: None if a is None else _image_info(encode_png(a), a.shape)
                for n, a in arrays.items()
            }
            try:
                body = LatestImagesResponse(
                    available=True,
                    frame_number=images.get("frame_number"),
                    angle_deg=images.get("angle_deg"),
                    **infos,
                )
            except ValidationError as exc:
                raise _backend_bug("latest_images", exc) from None
        return Response(body.model_dump_json(), media_type="application/json", headers=_NO_STORE)

    @app.get(
        "/images/latest/{name}.png",
        summary="Latest projection or reference as PNG",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}},
            404: {"model": ErrorModel, "description": "no such image yet"},
            **_NOT_PROVIDED,
        },
    )
    async def latest_png(name: Literal["frame", "reference"]) -> Response:
        """One thumbnail as an 8-bit greyscale PNG."""
        _, arrays = latest()
        image = arrays.get(name)
        if image is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {name} image yet")
        return Response(encode_png(image), media_type="image/png", headers=_NO_STORE)
