"""Shared fixtures: the MNIST data directory of CI and a tiny digits bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("WEIGHTSHARE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on CI: keep torch from oversubscribing when tests run next to each other.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {SHARED_DATA} (set WEIGHTSHARE_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits():
    from weightshare.config import DataConfig
    from weightshare.data import load_data

    return load_data(DataConfig(dataset="digits"))
