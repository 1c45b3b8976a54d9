"""The errors a user can cause (bad files, bad data, a diverged run), shown without a traceback."""

from __future__ import annotations

from .coverage import CoverageError
from .data import DataError
from .rundir import RunDirError
from .train import TrainingDiverged


def _codec_errors() -> tuple[type[Exception], ...]:
    try:
        from .codec import FormatError
    except ImportError:  # the codec is optional while the package is being built up
        return ()
    return (FormatError,)


USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    RunDirError,
    TrainingDiverged,
    CoverageError,
    FileNotFoundError,
    *_codec_errors(),
)
