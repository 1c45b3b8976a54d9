"""Every error a user can cause, in one place at the bottom of the package.

Each stage raises one of these for bad input (a corrupt file, a wrong setting, a
missing data set, a diverged run); the command line prints them as one line
without a traceback and exits 2 for a :data:`USAGE_ERRORS` one (what the user
typed is wrong) or 1 for the others (files, data, training). Anything else is a
bug and keeps its traceback. :class:`RunInterrupted` is Ctrl-C during a run,
with how far it got.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CoverageError",
    "DataError",
    "DependencyError",
    "FormatError",
    "MismatchError",
    "RunDirError",
    "RunInterrupted",
    "TrainingDiverged",
    "USAGE_ERRORS",
    "USER_ERRORS",
]


class ConfigError(ValueError):
    """A setting is unknown, has the wrong type or is out of range."""


class CoverageError(ValueError):
    """The coverage rule selects no tensor (or names an unknown module type)."""


class DataError(RuntimeError):
    """Data files are missing, corrupt or in the wrong format."""


class DependencyError(RuntimeError):
    """An optional dependency a command needs is not installed (e.g. ``onnx`` for an ONNX export)."""


class FormatError(ValueError):
    """A file (or checkpoint) is truncated, corrupted, foreign, too new, or does not fit the model."""


class MismatchError(ValueError):
    """A file or run directory is not the kind the command needs: a run of another kind, a model that
    does not fit a file, data the model cannot take."""


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: its directory keeps the last finished epoch, and ``--resume`` continues it.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C still does.

    >>> str(RunInterrupted("runs/x", 3, 100)), str(RunInterrupted("runs/x", 0, 100))
    ('interrupted after epoch 3 of 100', 'interrupted before epoch 1 of 100 ended')
    """

    def __init__(self, path: str, done: int, total: int) -> None:
        super().__init__(
            f"interrupted after epoch {done} of {total}" if done else f"interrupted before epoch 1 of {total} ended"
        )
        self.path, self.done, self.total = path, done, total


USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, CoverageError, MismatchError)
"""Mistakes in what the user typed (a setting, a flag, a file or run of the wrong kind): exit code 2."""

USER_ERRORS: tuple[type[Exception], ...] = (
    *USAGE_ERRORS,
    DataError,
    DependencyError,
    RunDirError,
    TrainingDiverged,
    FormatError,
    FileNotFoundError,
)
"""Every error a user can cause; those not in :data:`USAGE_ERRORS` (files, data, training) exit with code 1."""
