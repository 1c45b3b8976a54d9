"""Run directories: the schema of what a run writes, and where."""

from __future__ import annotations

from weightshare.runs.rundir import RunDir, environment

__all__ = ["RunDir", "environment"]
