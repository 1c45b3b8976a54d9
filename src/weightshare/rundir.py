"""Run directories: everything a result depends on and everything it produced.

A run directory holds ``config.json`` (every resolved setting), ``env.json``
(versions, CPU/GPU, git commit), ``metrics.csv``, ``checkpoints/`` and, after a
compression, the quantized checkpoint, ``model.wsz``, ``report.json`` and
``figures/``. Every file is written atomically (a temporary file in the same
directory, then ``os.replace``), so a crash never leaves a half-written file that
looks valid. An existing run directory is never silently overwritten.

Tensors are stored with safetensors and everything else as JSON: nothing is
ever pickled.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

__all__ = [
    "RunDir",
    "RunDirError",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_json",
    "read_json",
    "save_tensors",
    "load_tensors",
    "environment",
]


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write strict JSON: a NaN or infinite float (e.g. the error of an empty split) becomes null."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON: {exc}") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None):
    """safetensors, written atomically (contiguous CPU copies; shared storage is fine)."""
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=dict(meta) if meta else None))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise RunDirError(f"{path} is not a valid safetensors file: {exc}") from None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, hardware and git commit, for env.json."""
    import numpy

    from . import __version__

    return {
        "weightshare": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
    }


class RunDir:
    """A run directory; ``RunDir.create`` refuses to reuse a non-empty one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @staticmethod
    def check_new(path: str | os.PathLike) -> None:
        """Refuse a non-empty directory (call early, before any slow work)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise RunDirError(
                f"run directory {path} already exists and is not empty; choose another --out, "
                "remove it, or pass --resume to continue that run"
            )

    @classmethod
    def create(cls, path: str | os.PathLike, config: Mapping[str, Any]) -> RunDir:
        path = Path(path)
        cls.check_new(path)
        run = cls(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(run.file("config.json"), dict(config))
        write_json(run.file("env.json"), environment())
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        run = cls(path)
        if not run.file("config.json").is_file():
            raise RunDirError(f"{path} is not a run directory (no config.json)")
        return run

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.file("config.json"))

    # --- metrics.csv ------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, str]]:
        path = self.file("metrics.csv")
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite metrics.csv atomically; the header is the union of all columns seen."""
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(self.file("metrics.csv"), buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.8g}"
    return value
