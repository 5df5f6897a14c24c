"""Shared pytest configuration for tomolock's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def artifact_dir() -> Path:
    """Directory for files a test keeps for humans (screenshots, logs); git-ignored."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_configure(config: pytest.Config) -> None:
    # The estimators size their FFT thread pool explicitly; stop BLAS pools from also
    # spawning a thread per core under pytest on the 2-core CI machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
