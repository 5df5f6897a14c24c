"""The local Dask cluster of the fine alignment: loopback, tuned worker settings."""

from __future__ import annotations

import os

import pytest

from tomolock.service.align.cluster import MMAP_THRESHOLD_BYTES, dask_client


def _worker_settings() -> dict[str, object]:
    import dask

    return {"mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "pid": os.getpid()}


@pytest.mark.parametrize("processes", [True, False])
def test_local_workers_run_without_profiler(processes):
    environ = dict(os.environ)
    with dask_client(n_workers=1, processes=processes) as client:
        settings = client.submit(_worker_settings, pure=False).result(timeout=60)
        addresses = list(client.scheduler_info()["workers"])
    # The sampling profiler contends for the GIL with scikit-image's radon (1.4x slower).
    assert settings["profile"] is False
    if processes:
        assert settings["pid"] != os.getpid()
        # glibc reads this at process start: only a spawned worker can carry it.
        assert settings["mmap"] == str(MMAP_THRESHOLD_BYTES)
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    else:
        assert settings["pid"] == os.getpid()
    # The nannies' environment (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS=1, ...) does not
    # stay behind for later subprocesses: it slowed the IOCs of the tests after this one.
    assert dict(os.environ) == environ


def test_local_cluster_shape_is_checked():
    with pytest.raises(ValueError, match="n_workers"), dask_client(n_workers=0):
        pass
