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

import atexit
import csv
import fcntl
import io
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from weightshare.core.errors import RunDirError
from weightshare.core.io import atomic_write_text, read_json, write_json
from weightshare.runs.schema import ARTIFACTS, CONFIG, ENV, METRICS, Artifact

__all__ = [
    "RunDir",
    "RunDirError",
    "environment",
]


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

    from weightshare.core.version import __version__

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


_LOCK = ".lock"
_CLAIMED: dict[str, Any] = {}  # run directories this process writes into -> their open, locked .lock file


def leftover(path: Path) -> bool:
    """What a run killed before writing anything leaves: the lock, or a temporary file of an atomic write."""
    return path.name == _LOCK or (path.name.startswith(".") and path.name.endswith(".tmp"))


@atexit.register
def _release_all() -> None:
    for handle in _CLAIMED.values():
        handle.close()
    _CLAIMED.clear()


class RunDir:
    """A run directory; ``RunDir.create`` refuses to reuse a non-empty one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @staticmethod
    def check_new(path: str | os.PathLike) -> None:
        """Refuse a non-empty directory (call early, before any slow work)."""
        path = Path(path)
        if path.exists() and any(not leftover(p) for p in path.iterdir()):
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
        run.claim()
        write_json(run.path_of(CONFIG), dict(config))
        write_json(run.path_of(ENV), environment())
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, *, write: bool = False) -> RunDir:
        """An existing run; ``write=True`` (to continue it) also claims it for this process."""
        run = cls(path)
        if not run.path_of(CONFIG).is_file():
            raise RunDirError(f"{path} is not a run directory (no config.json)")
        if write:
            run.claim()
        return run

    def claim(self) -> None:
        """Refuse a second process writing into this run (an advisory lock, released when this process ends).

        Claims are per process: this process may open the same run again (e.g. to resume it after an
        exception), another process may not while this one lives.
        """
        key = str(self.path.resolve())
        if key in _CLAIMED:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / _LOCK, "a+")  # noqa: SIM115 (held until the process ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise RunDirError(
                f"another weightshare process (pid {owner}) is writing into {self.path}; wait for it to end"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _CLAIMED[key] = handle
        # Temporary files of a writer that was killed mid-write (the lock says none is writing now).
        for stale in self.path.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Give up the claim of :meth:`claim` (also happens when the process ends)."""
        handle = _CLAIMED.pop(str(self.path.resolve()), None)
        if handle is not None:
            handle.close()

    def file(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def path_of(self, artifact: Artifact, *parts: str) -> Path:
        """Where ``artifact`` (a name of :mod:`weightshare.runs.schema`) lives in this run."""
        return self.path.joinpath(artifact.path, *parts)

    def write_record(self, name: str, obj: Any) -> None:
        """A method record (JSON) under the name the method gives, e.g. ``mixture_epochs/epoch_0001.json``."""
        if Path(name).is_absolute() or ".." in Path(name).parts or name in {a.path for a in ARTIFACTS}:
            raise ValueError(f"a method record cannot be named {name!r}")
        write_json(self.file(name), obj)

    def has(self, artifact: Artifact) -> bool:
        return self.path_of(artifact).exists()

    @property
    def config(self) -> dict[str, Any]:
        return read_json(self.path_of(CONFIG))

    # --- metrics.csv ------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, str]]:
        path = self.path_of(METRICS)
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
        atomic_write_text(self.path_of(METRICS), buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.8g}"
    return value
