"""What the figures read from a run directory: metrics, weights, report, a method's records.

Every loader is lazy and cached, so a figure only needs the files it draws, and a
run that lacks a file (a pretraining run has no quantized model, a method may keep
no records) is told apart from one whose file is broken: missing optional files
give ``None``, broken ones a :class:`~weightshare.core.errors.RunDirError` naming
the file. Files are found by their names in :mod:`weightshare.runs.schema`; a
method's records by the names the method declares (its figures read them).
"""

from __future__ import annotations

import csv
import functools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors, read_json
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CONFIG, METRICS, QUANTIZED, REPORT, Artifact

__all__ = ["RunArtifacts", "read_metrics", "sample_indices"]

# Columns that are text, not numbers; every other column of metrics.csv is parsed as a float.
_TEXT_COLUMNS = ("phase",)


def read_metrics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """metrics.csv as ``column -> array`` (floats, NaN where empty; ``phase`` as strings).

    Raises :class:`RunDirError` naming the file when it is missing, has no ``epoch``
    column or holds a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist (the run has no training curve to plot)")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunDirError(f"{path} is not a readable CSV file: {exc}") from None
    if "epoch" not in columns or not rows:
        raise RunDirError(f"{path} is corrupt: expected a header with 'phase', 'epoch', ... and one row per epoch")
    out: dict[str, np.ndarray] = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        if column in _TEXT_COLUMNS:
            out[column] = np.array([v or "" for v in values])
        else:
            out[column] = np.array([_number(v, path, column, line) for line, v in enumerate(values, start=2)])
    return out


def _number(value: str | None, path: Path, column: str, line: int) -> float:
    if value is None or value.strip() == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise RunDirError(f"{path} is corrupt: line {line}, column {column!r} holds {value!r}, not a number") from None


def sample_indices(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """A seeded, sorted sample of ``min(n, sample)`` positions out of ``n``."""
    if sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


class RunArtifacts(RunDir):
    """Lazy, cached access to the files of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a run directory (it does not exist)")

    @functools.cached_property
    def config(self) -> dict[str, Any]:  # type: ignore[override]  # cached, and {} where there is none
        path = self.path_of(CONFIG)
        return read_json(path) if path.is_file() else {}

    @functools.cached_property
    def report(self) -> dict[str, Any] | None:
        path = self.path_of(REPORT)
        return read_json(path) if path.is_file() else None

    @functools.cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        return read_metrics(self.path_of(METRICS))

    @property
    def method(self) -> str:
        return str((self.report or {}).get("method") or self.config.get("method") or self.config.get("command", "?"))

    @property
    def model_name(self) -> str:
        return str((self.report or {}).get("model") or self.config.get("train", {}).get("model", "?"))

    def lacks(self, *artifacts: Artifact) -> str | None:
        """Which of ``artifacts`` the run does not hold, as a note (None when it holds them all)."""
        absent = [a.path for a in artifacts if not self.has(a)]
        return f"the run has no {', '.join(absent)}" if absent else None

    def record(self, name: str) -> Any | None:
        """A method record (JSON) by the name its method declared, or None when the run has none."""
        path = self.file(name)
        return read_json(path) if path.is_file() else None

    def tensors(self, artifact: Artifact) -> dict[str, Any] | None:
        """A safetensors state dict of the run (``MODEL_INIT``, ``MODEL_FINAL``), or None."""
        path = self.path_of(artifact)
        return load_tensors(path) if path.is_file() else None

    @functools.cached_property
    def quantized(self) -> Any | None:
        """The run's :class:`~weightshare.core.quantized.QuantizedModel`, weights only (biases quantized after
        the method back among the dense tensors: the figures show the covered weights), or None before compression."""
        from weightshare.core.quantized import load_quantized

        path = self.path_of(QUANTIZED)
        return load_quantized(path).weights_only() if path.is_file() else None

    def covered(self, state: dict[str, Any]) -> np.ndarray:
        """The covered weights of ``state`` concatenated in the quantized model's order."""
        names = list(self.quantized.quantized)
        missing = [n for n in names if n not in state]
        if missing:
            raise RunDirError(f"{self.path}: state dict lacks the compressed tensors {missing}")
        return np.concatenate([state[n].detach().float().reshape(-1).numpy() for n in names])

    def covered_indices(self) -> np.ndarray:
        """Per covered weight its index into its tensor's codebook, in the covered order."""
        return np.concatenate([qt.indices.reshape(-1).numpy() for qt in self.quantized.quantized.values()])

    def covered_quantized(self) -> np.ndarray:
        """The covered weights after quantization (codebook values), in the covered order."""
        qm = self.quantized
        return np.concatenate([qm.dequantize(n).reshape(-1).numpy() for n in qm.quantized])
