"""The live pipeline behind the real API: endpoints, operator disable, malformed input."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tomolock.devices.sim.drift import DriftParams
from tomolock.devices.sim.inprocess import step_scan
from tomolock.service.api.app import create_app
from tomolock.service.backend import PipelineBackend
from tomolock.service.simloop import calibrated_scan, simulated_loop

TOKEN = "test-token-123"


async def test_pipeline_serves_api_and_obeys_disable(tmp_path: Path) -> None:
    params = DriftParams(jitter_rms_um=0.0005, vibration=(), jump_rate_per_h=0.0)
    angles = np.linspace(0.0, 180.0, 13)
    async with simulated_loop(params, shape=(96, 96), workdir=tmp_path, seed=4) as sl:
        service, streamer, beam, stage = sl.service, sl.streamer, sl.beam, sl.stage
        app = create_app(PipelineBackend(service), token=TOKEN)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            await calibrated_scan(sl, angles, scan_id="scan1")
            moves_before = stage.moves
            assert moves_before > 0

            status = (await client.get("/status")).json()
            assert status["scan"]["scan_id"] == "scan1"
            assert status["scan"]["frames_processed"] == len(angles)
            assert status["loop"]["enabled"] is True
            assert status["performance"]["latency_p50_ms"] > 0
            drift_hist = (await client.get("/scans/scan1/drift")).json()
            assert drift_hist["columns"]["frame"] == list(range(len(angles)))
            assert (await client.get("/scans/nope/drift")).status_code == 404
            cfg = (await client.get("/config")).json()["config"]
            assert cfg["mode"] == "apply" and cfg["interlock"]["max_step_um"] == 1.5
            model = (await client.get("/model")).json()
            assert model["available"] and model["state"]["fitted"]
            images = (await client.get("/images/latest")).json()
            assert images["available"] and images["frame"]["png_data_url"].startswith("data:")
            metrics = (await client.get("/metrics")).text
            assert "tomolock_frames_received_total" in metrics
            assert 'tomolock_frame_latency_ms{quantile="0.99"}' in metrics
            assert "tomolock_frame_latency_ms_count" in metrics

            # Control needs the token; with it, disabling stops moves at once.
            r = await client.post("/control/disable", json={"reason": "beam dump"})
            assert r.status_code == 401
            r = await client.post(
                "/control/disable", json={"reason": "beam dump"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert r.status_code == 200
            auth = {"Authorization": f"Bearer {TOKEN}"}
            r = await client.post("/reference", json={"strategy": "first_n", "n_frames": 3},
                                  headers=auth)
            assert r.status_code == 200 and service.processor.first_n == 3
            r = await client.post("/reference", json={"strategy": "mirror"}, headers=auth)
            assert r.status_code == 409 and "drift_check" in r.text
            r = await client.post("/reference", json={"strategy": "reference_scan",
                                                      "scan_id": "other"}, headers=auth)
            assert r.status_code == 409
            r = await client.post("/reference", json={"strategy": "reference_scan",
                                                      "scan_id": "ref"}, headers=auth)
            assert r.status_code == 200 and service.processor.first_n == 0
            await step_scan(streamer, service, beam, "scan2", angles[:4])
            assert stage.moves == moves_before
            assert service.last_feedback.decision.action == "refuse"
            assert "disabled" in service.last_feedback.decision.reasons

            # Malformed messages on the frame stream are counted by reason and the service
            # keeps processing (the ingest tests cover every reason; this is the pipeline).
            sock = streamer._sock  # the bound PUSH the service's PULL is connected to
            await sock.send_multipart([b"{not json"])
            await sock.send_multipart([b'{"htype": "tomolock-frame-1"}', b"x", b"y"])
            await step_scan(streamer, service, beam, "scan3", angles[:3])
            assert service.scan.scan_id == "scan3" and service.scan.processed == 3
            rejected = (await client.get("/status")).json()["counters"]["frames_rejected"]
            assert sum(rejected.values()) >= 2, rejected
