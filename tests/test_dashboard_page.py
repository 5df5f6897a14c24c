"""The dashboard in a real headless Chromium against a real uvicorn with an InMemoryBackend."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tomolock.service.api import create_app, serve
from tomolock.service.api.backend import BACKEND_METHODS
from tomolock.service.api.dashboard import make_thumbnail
from tomolock.service.api.memory import DriftRow, InMemoryBackend
from tomolock.service.api.models import Counters, Performance

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TOKEN = "dashboard-test-token-42"
PIXEL_UM = 0.03
DEG_PER_FRAME = 1.5
FRAME_PERIOD_S = 0.05  # 20 Hz
T0 = 1_767_225_600.0


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A fresh Chromium page and the list its console errors and page errors go to."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium "
            "(run `make chromium`, i.e. apt-get install -y chromium)"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        pytest.fail(f"the Python 'playwright' package is missing ({exc}); pip install -e '.[dev]'")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1680, "height": 1050})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            yield page, errors
        finally:
            await browser.close()


def drift_row(i: int) -> DriftRow:
    """Frame i of a simulated corrected scan: runout + thermal drift, small image residual."""
    rng = np.random.default_rng(i)
    angle = DEG_PER_FRAME * i
    th = math.radians(angle)
    drift_x = 0.8 * math.sin(th) + 0.25 * math.cos(2 * th) + 0.002 * i
    drift_z = 0.15 * math.cos(th) + 0.001 * i
    resid_x, resid_z = rng.normal(0.0, 0.02, 2)
    return DriftRow(
        frame=i,
        angle_deg=angle,
        t=T0 + FRAME_PERIOD_S * i,
        est_dy_px=float(resid_z) / PIXEL_UM,
        est_dx_px=float(resid_x) / PIXEL_UM,
        confidence=float(np.clip(0.9 + rng.normal(0, 0.04), 0, 1)),
        drift_x_um=drift_x,
        drift_z_um=drift_z,
        correction_x_um=-drift_x,
        correction_z_um=-drift_z,
        decision="move",
    )


def dressed_backend() -> InMemoryBackend:
    """A backend with interlock limits, a fitted model, images, counters and performance."""
    backend = InMemoryBackend(version="0.1.0-test")
    backend.runtime_config = {
        "mode": "apply",
        "min_confidence": 0.6,
        "interlock": {
            "soft_limits": {"x": {"low": -20.0, "high": 20.0}, "z": {"low": -5.0, "high": 5.0}},
            "max_step_um": 0.5,
            "max_total_correction_um": 1.5,
            "dead_band_um": 0.005,
        },
        "detector": {"pixel_size_um": PIXEL_UM, "sign_x": 1, "sign_z": 1},
    }
    rng = np.random.default_rng(7)
    angles = np.arange(0.0, 360.0, 3.0)
    backend.fitted_model = {
        "kind": "runout+thermal",
        "fitted": True,
        "harmonics": {
            "x": {"offset_um": 0.0, "cos_um": [0.0, 0.25], "sin_um": [0.8, 0.0]},
            "z": {"offset_um": 0.0, "cos_um": [0.15], "sin_um": [0.0]},
        },
        "residuals": {
            "x": {"angle_deg": angles, "residual_um": rng.normal(0, 0.006, angles.size)},
            "z": {"angle_deg": angles, "residual_um": rng.normal(0, 0.004, angles.size)},
        },
        "rms_residual_um": {"x": 0.006, "z": 0.004},
    }
    yy, xx = np.mgrid[0:512, 0:512]
    sample = np.exp(-((xx - 256) ** 2 + (yy - 256) ** 2) / (2 * 120.0**2))
    sample += 0.15 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.03, (512, 512))
    reference = np.roll(sample, (3, -5), axis=(0, 1))
    backend.set_images(
        make_thumbnail(sample), make_thumbnail(reference), frame_number=210, angle_deg=315.0
    )
    backend.counters = Counters(frames_dropped=2, frames_rejected={"bad_shape": 1})
    backend.performance = Performance(latency_p50_ms=18.4, latency_p99_ms=41.0, fps=19.8)
    return backend


async def plotted_points(page: Any, plot_id: str = "plot-angle") -> int:
    """Number of points of the first trace (fused drift x) actually handed to plotly."""
    return await page.evaluate(
        "(id) => { const d = document.getElementById(id).data;"
        " return d && d.length ? d[0].x.length : 0; }",
        plot_id,
    )


async def test_dashboard_live_plots_control_and_screenshot(artifact_dir: Path) -> None:
    backend = dressed_backend()
    backend.start_scan("scan-0042", t=T0)
    n_history = 160
    for i in range(n_history):  # the page opens mid-scan: history comes from /scans/.../drift
        backend.add_frame(drift_row(i))
    app = create_app(backend, token=TOKEN)
    server = await serve(app, host="127.0.0.1", port=0)
    async with server, browser_page() as (page, errors):
        await page.goto(f"{server.url}/dashboard")
        await page.wait_for_function(
            "document.getElementById('badge-link').textContent === 'LIVE ✓'"
        )
        await page.wait_for_function(
            f"document.getElementById('plot-angle').data?.[0]?.x?.length >= {n_history}"
        )
        before = await plotted_points(page)
        assert before == n_history

        # Stream a simulated scan at ~20 Hz and watch the plot grow while it runs.
        samples = []
        for i in range(n_history, n_history + 60):
            backend.add_frame(drift_row(i))
            await asyncio.sleep(FRAME_PERIOD_S)
            if i % 20 == 19:
                samples.append(await plotted_points(page))
        await asyncio.sleep(0.3)  # the last live message and redraw
        after = await plotted_points(page)
        assert samples == sorted(samples) and samples[0] > before, samples
        # The feed is throttled to 10 Hz (frames coalesce), so not every frame is plotted.
        assert n_history + 20 <= after <= n_history + 60
        last_x = await page.evaluate("document.getElementById('plot-angle').data[0].x.at(-1)")
        assert last_x == pytest.approx(DEG_PER_FRAME * (n_history + 59))
        for plot in ("plot-time", "plot-correction", "plot-confidence"):
            assert await plotted_points(page, plot) == after

        # Status, limits, model and images reached the page.
        text = await page.inner_text("body")
        assert "SCAN RUNNING · scan-0042" in text
        assert "MODE APPLY" in text
        assert "max total correction (µm)" in text and "-20 … 20" in text
        limit_lines = await page.evaluate(
            "document.getElementById('plot-correction').layout.shapes.map(s => s.y0)"
        )
        assert sorted(limit_lines) == [-1.5, 1.5]
        assert await page.inner_text("#kpi-dropped") == "2"
        assert await page.inner_text("#kpi-rejected") == "1"
        assert await page.inner_text("#kpi-latency") == "18.4 / 41.0"
        confidence = await page.inner_text("#kpi-confidence")
        assert confidence == f"{drift_row(n_history + 59).confidence:.3f}"
        model_traces = await page.evaluate(
            "document.getElementById('plot-model').data.map(t => t.name)"
        )
        assert "runout x" in model_traces and "residual x (rms 6.0 nm)" in model_traces
        for img in ("#img-frame", "#img-reference"):
            width = await page.evaluate(f"document.querySelector('{img}').naturalWidth")
            assert width == 256
        assert errors == [], errors

        # Wrong token: refused, shown as 401, loop untouched.
        await page.fill("#token", "not-the-token")
        await page.fill("#reason", "beam dump")
        await page.click("#btn-disable")
        await page.wait_for_function(
            "document.getElementById('control-result').textContent.startsWith('refused')"
        )
        result = await page.inner_text("#control-result")
        assert "401" in result and "wrong or missing token" in result
        assert backend.enabled and backend.calls == []

        # Right token: the backend's loop is disabled and the page says why.
        await page.fill("#token", TOKEN)
        await page.click("#btn-disable")
        await page.wait_for_function(
            "document.getElementById('control-result').textContent.startsWith('OK')"
        )
        assert backend.calls == [("set_enabled", (False, "beam dump"))]
        assert not backend.enabled and backend.disabled_reason == "beam dump"
        await page.wait_for_function(
            "document.getElementById('badge-loop').textContent === 'LOOP DISABLED: beam dump'"
        )
        # The only console errors are the browser's own logs of the refused request.
        assert all("401" in e for e in errors), errors

        await page.wait_for_timeout(300)  # let the plots settle for the picture
        await page.screenshot(path=str(artifact_dir / "dashboard.png"), full_page=True)


class RequiredOnly:
    """A backend with only the required methods (like a pipeline that lacks the optional ones)."""

    def __init__(self, inner: InMemoryBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in BACKEND_METHODS:
            return getattr(self._inner, name)
        raise AttributeError(name)


async def test_page_without_optional_methods_and_bounded_history() -> None:
    app = create_app(RequiredOnly(InMemoryBackend()), token=None)  # type: ignore[arg-type]
    async with await serve(app) as server, browser_page() as (page, errors):
        await page.goto(f"{server.url}/dashboard")
        for element in ("#model-note", "#image-note", "#limits"):
            await page.wait_for_function(
                f"document.querySelector('{element}').textContent.includes('not available')"
            )
        assert "no model_state() method" in await page.inner_text("#model-note")

        # The plots' history tables stay bounded however long the scan runs.
        result = await page.evaluate(
            """async () => {
                const { DecimatingTable } = await import('./dashboard/static/js/series.js');
                const t = new DecimatingTable(['frame'], 2000);
                const lengths = [];
                for (let i = 0; i < 100000; i += 1) {
                    t.push({ frame: i });
                    if (i % 997 === 0) lengths.push(t.length);
                }
                const f = t.cols.frame;
                const steps = f.slice(1).map((v, i) => v - f[i]);
                return { max: Math.max(...lengths, t.length), first: f[0], last: f.at(-1),
                         sorted: steps.every(s => s > 0), maxStep: Math.max(...steps) };
            }"""
        )
        assert result["max"] <= 2001  # capacity + the provisional newest row
        assert result["first"] == 0 and result["last"] == 99_999
        assert result["sorted"]
        assert result["maxStep"] <= 2 * 100_000 / 2000  # evenly thinned, no big holes
        # Only the browser's logs of the three 501 answers; no script errors.
        assert len(errors) == 3 and all("501" in e for e in errors), errors
