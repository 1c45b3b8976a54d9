"""Fixtures of the search tests: a tiny Deep Compression recipe (one epoch a trial) and a PostgreSQL server."""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick_dc():
    """Deep Compression in one digits epoch: one pruning round of one epoch, no centroid fine-tuning."""
    from weightshare.methods.dc.config import DCConfig

    sections = {"train": {"epochs": 1}, "dc": {"prune_rounds": 1, "prune_epochs": 1, "quant_epochs": 0}}
    return DCConfig.preset("digits").updated(sections)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a real PostgreSQL database: the one ``.ci/run`` started ($WEIGHTSHARE_TEST_POSTGRES), else a
    throwaway server started here with ``.ci/postgres`` when the server's programs are installed."""
    pytest.importorskip("psycopg")
    url = os.environ.get("WEIGHTSHARE_TEST_POSTGRES")
    if url:
        yield url
        return
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        if os.environ.get("CI"):
            pytest.fail("CI must have a PostgreSQL server: .ci/run installs and starts one with .ci/postgres")
        pytest.skip("no PostgreSQL server programs here (.ci/run installs Debian's postgresql)")
    folder = tempfile.mkdtemp(prefix="ws-pg-", dir="/tmp")  # a short path: Unix socket paths are limited
    script = str(ROOT / ".ci" / "postgres")
    url = subprocess.run(["bash", script, "start", folder], check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run(["bash", script, "stop", folder], check=False)
