"""Atomic, pickle-free file writes: JSON and safetensors, whole or not at all.

Every file weightshare writes goes through here: a temporary file in the same
directory, flushed and fsync'ed, then ``os.replace``, so a crash never leaves a
half-written file that looks valid. Tensors are stored with safetensors and
everything else as JSON: nothing is ever pickled.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from weightshare.core.errors import RunDirError

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "save_tensors", "load_tensors"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The temporary file is created with mode 0666, so the kernel applies the umask and the
    file gets the permissions any new file would (``tempfile.mkstemp`` would make it 0600;
    reading the umask to correct that means setting it, which races with other threads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
