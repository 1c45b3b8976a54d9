"""Run directories as the stages see them: which command made one, what it records, how far it got.

Every stage that reads a run directory opens it here, so a run of another kind (a compression
run where a pretraining run is needed), a record this version does not know or a missing field
is refused in one line naming what was expected, before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from weightshare.core.errors import MismatchError, RunDirError, RunInterrupted
from weightshare.runs.rundir import RunDir
from weightshare.runs.rundir import leftover as _leftover
from weightshare.runs.schema import COMPRESSED, CONFIG, PRETRAINED
from weightshare.train.checkpoint import checkpointed_epochs, has_checkpoint

__all__ = ["check_new", "describe", "interruptible", "open_run", "recorded", "run_kind", "training_run"]

_FINAL = {"pretrain": PRETRAINED, "compress": COMPRESSED}  # the file a finished run of each command holds


def run_kind(config: dict[str, Any]) -> str:
    """The command that made a run: ``pretrain`` or ``compress`` (runs older than the ``command`` record too).

    >>> run_kind({"command": "compress", "method": "sws"}), run_kind({"method": "dc"}), run_kind({"train": {}})
    ('compress', 'compress', 'pretrain')
    """
    return str(config.get("command") or ("compress" if "method" in config else "pretrain"))


def describe(config: dict[str, Any]) -> str:
    """A run as a phrase: ``a pretrain run`` or ``a compress run (sws)``.

    >>> describe({"command": "compress", "method": "sws"})
    'a compress run (sws)'
    """
    kind = run_kind(config)
    return f"a {kind} run" + (f" ({config['method']})" if kind == "compress" and "method" in config else "")


def open_run(
    path: str | os.PathLike, kind: str | None = None, *, why: str = "", write: bool = False, resuming: bool = False
) -> RunDir:
    """The run directory ``path``, refused unless it exists and (if ``kind`` is given) was made by that command.

    ``why`` ends the refusal, saying what needs that kind (e.g. ``compress starts from a pretrained model``).
    """
    if not (Path(path) / CONFIG.path).is_file():
        expected = f"; expected a run directory made by weightshare {kind}" if kind else ""
        if resuming and Path(path).is_dir() and all(_leftover(p) for p in Path(path).iterdir()):
            expected = "; it was stopped before writing anything: run the command again without --resume"
        raise RunDirError(f"{path} is not a run directory (no {CONFIG.path}){expected}")
    run = RunDir.open(path, write=write)
    found = run_kind(run.config)
    if kind is not None and found != kind:
        raise MismatchError(f"{path} is {describe(run.config)}, not a {kind} run" + (f": {why}" if why else ""))
    return run


def recorded(run: RunDir, *keys: str) -> Any:
    """The value at ``keys`` of the run's ``config.json`` (``recorded(run, "train", "model")``); refused if absent."""
    value: Any = run.config
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(keys[: depth + 1])
            raise RunDirError(f"{run.path_of(CONFIG)} records no {where!r}: not written by this weightshare?")
        value = value[key]
    return value


def check_new(path: str | os.PathLike) -> None:
    """Refuse to start a run in a non-empty directory; if it holds a run stopped before its first checkpoint,
    say that ``--resume`` starts that run from epoch 0."""
    run = RunDir(path)
    if run.path_of(CONFIG).is_file() and not has_checkpoint(run):
        final = _FINAL.get(run_kind(run.config))
        if final is not None and not run.has(final):
            raise RunDirError(
                f"run directory {path} holds a run stopped before its first epoch ended (no checkpoint); "
                "pass --resume to start it from epoch 0 with the settings it was started with, or remove it"
            )
    RunDir.check_new(path)


def training_run(path: str | os.PathLike, record: dict[str, Any], *, resume: bool, writer: bool) -> RunDir:
    """The run directory a training writes into: created with ``record`` (or claimed, to resume it) by the
    ``writer``; the other ranks of a ``torchrun`` launch get it unclaimed, only to read its checkpoint."""
    if not writer:
        return RunDir(path)
    return RunDir.open(path, write=True) if resume else RunDir.create(path, record)


def _epochs_done(run: RunDir, phase: str) -> int:
    """Finished epochs of ``phase`` that a resume keeps: those in the checkpoint (not metrics.csv, written first)."""
    try:
        return checkpointed_epochs(run, phase)
    except RunDirError:  # a checkpoint being replaced or broken: a resume will say what is wrong with it
        return 0


@contextmanager
def interruptible(run: RunDir, phase: str, total: int) -> Iterator[None]:
    """Turn Ctrl-C inside the block into :class:`RunInterrupted` saying how far ``phase`` got of ``total`` epochs."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(str(run.path), _epochs_done(run, phase), total) from None
