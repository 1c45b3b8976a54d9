"""What the figures read from a run directory: metrics, mixtures, weights, report.

Every loader is lazy and cached, so a figure only needs the files it draws, and a
run that lacks a file (a pretraining run has no mixture, Deep Compression no
mixture history) is told apart from one whose file is broken: missing optional
files give ``None``, broken ones a :class:`~weightshare.core.errors.RunDirError`
naming the file.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors, read_json
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CONFIG, METRICS, QUANTIZED, REPORT, Artifact

__all__ = ["Mixture", "RunArtifacts", "read_metrics", "sample_indices"]

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


@dataclass(frozen=True)
class Mixture:
    """One snapshot of a Gaussian mixture prior; component 0 is the zero spike."""

    means: np.ndarray
    sigmas: np.ndarray
    pis: np.ndarray
    epoch: int | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: Path) -> Mixture:
        try:
            means = np.asarray(obj["means"], dtype=float)
            pis = np.asarray(obj["pis"], dtype=float)
            sigmas = _sigmas(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{source} is not a mixture record (means, sigmas, pis): {exc}") from None
        if not (means.shape == sigmas.shape == pis.shape) or means.ndim != 1:
            raise RunDirError(f"{source}: means, sigmas and pis must be lists of the same length")
        epoch = obj.get("epoch")
        return cls(means, sigmas, pis, int(epoch) if epoch is not None else None)

    @property
    def size(self) -> int:
        return int(self.means.size)

    def assign(self, w: np.ndarray) -> np.ndarray:
        """Most responsible component of each weight (MAP under the mixture)."""
        sig = np.maximum(self.sigmas, 1e-12)
        logp = np.log(np.maximum(self.pis, 1e-300)) - np.log(sig) - 0.5 * ((w[:, None] - self.means) / sig) ** 2
        return logp.argmax(axis=1)

    def density(self, x: np.ndarray) -> np.ndarray:
        """Per-component weighted densities ``pi_k N(x | mu_k, sigma_k^2)``, shape (K, len(x))."""
        sig = np.maximum(self.sigmas, 1e-12)[:, None]
        z = (x[None, :] - self.means[:, None]) / sig
        return self.pis[:, None] * np.exp(-0.5 * z**2) / (sig * math.sqrt(2 * math.pi))


def _sigmas(obj: dict[str, Any]) -> np.ndarray:
    # Writers have stored the spread in three equivalent ways; accept each.
    if "sigmas" in obj:
        return np.asarray(obj["sigmas"], dtype=float)
    if "precisions" in obj:
        return 1.0 / np.sqrt(np.asarray(obj["precisions"], dtype=float))
    return np.exp(-0.5 * np.asarray(obj["log_precisions"], dtype=float))


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

    @functools.cached_property
    def mixture_final(self) -> Mixture | None:
        path = self.file("mixture_final.json")
        return Mixture.from_json(read_json(path), path) if path.is_file() else None

    @functools.cached_property
    def mixture_history(self) -> list[Mixture]:
        folder = self.file("mixture_epochs")
        files = sorted(folder.glob("epoch_*.json")) if folder.is_dir() else []
        history = [Mixture.from_json(read_json(f), f) for f in files]
        return sorted(history, key=lambda m: m.epoch if m.epoch is not None else 0)

    def tensors(self, artifact: Artifact) -> dict[str, Any] | None:
        """A safetensors state dict of the run (``MODEL_INIT``, ``MODEL_FINAL``), or None."""
        path = self.path_of(artifact)
        return load_tensors(path) if path.is_file() else None

    @functools.cached_property
    def quantized(self) -> Any | None:
        """The run's :class:`~weightshare.core.quantized.QuantizedModel`, or None before compression."""
        from weightshare.core.quantized import load_quantized

        path = self.path_of(QUANTIZED)
        return load_quantized(path) if path.is_file() else None

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
