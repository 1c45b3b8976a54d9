"""Every error a user can cause, in one place at the bottom of the package.

Each stage raises one of these for bad input (a corrupt file, a wrong setting, a
missing data set, a diverged run); the command line prints them as one line
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CoverageError",
    "DataError",
    "FormatError",
    "RunDirError",
    "TrainingDiverged",
    "USER_ERRORS",
]


class ConfigError(ValueError):
    """A setting is unknown, has the wrong type or is out of range."""


class CoverageError(ValueError):
    """The coverage rule selects no tensor (or names an unknown module type)."""


class DataError(RuntimeError):
    """Data files are missing, corrupt or in the wrong format."""


class FormatError(ValueError):
    """A file (or checkpoint) is truncated, corrupted, foreign, too new, or does not fit the model."""


class RunDirError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""


USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    RunDirError,
    TrainingDiverged,
    CoverageError,
    FormatError,
    FileNotFoundError,
)
