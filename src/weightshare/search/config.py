"""The ``[tune]`` settings of a hyper-parameter study (``weightshare tune``)."""

from __future__ import annotations

import dataclasses

from weightshare.core.settings import setting
from weightshare.methods.base import MethodConfig
from weightshare.methods.space import SearchRange

__all__ = ["FINISHED", "StudySpec", "TuneConfig"]

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
"""The states of an ended trial (what ``trials`` counts)."""


@dataclasses.dataclass
class TuneConfig:
    """How a study searches: how many trials, in how many processes, stored where, judged how.

    Without ``max_bytes`` the study has two objectives, the validation error of the model decoded from each
    trial's file and the file's bytes, and its result is their Pareto front. With ``max_bytes`` it minimises the
    validation error alone among files of at most that many bytes, and stops unpromising trials early
    (``pruner``) from their per-epoch validation error. The test set never chooses anything.
    """

    trials: int = setting(40, "trials the study should hold when done (finished, pruned or failed)", ge=1)
    workers: int = setting(1, "local worker processes sharing the study", ge=1)
    storage: str | None = setting(
        None, "Optuna storage URL, e.g. postgresql+psycopg://user@host/db (default: a journal file in the study dir)"
    )
    study_name: str | None = setting(None, "name of the study in the storage (default: tune-METHOD)")
    max_bytes: int | None = setting(None, "single objective: only files of at most this many bytes count", ge=1)
    pruner: str = setting("median", "with --max-bytes: stop bad trials early", choices=("median", "none"))
    sampler_seed: int = setting(0, "seed of the TPE sampler (worker k uses seed + k)", ge=0)
    startup_trials: int = setting(10, "random trials before TPE models the results", ge=0)
    space: str | None = setting(None, "TOML file changing the method's search ranges ([sws.tau] low/high/log...)")
    search_val_size: int = setting(
        5000, "validation images when the recipe has none (val_size 0): the search needs a validation split", ge=1
    )

    @property
    def multi_objective(self) -> bool:
        """Error and bytes both minimised (no byte budget)."""
        return self.max_bytes is None


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """Everything a worker needs to run trials of one study (picklable: workers are spawned processes)."""

    source: str
    config: MethodConfig
    space: dict[str, dict[str, SearchRange]]
    study_dir: str
    settings: TuneConfig

    @property
    def study_name(self) -> str:
        return self.settings.study_name or f"tune-{self.config.method}"

    @property
    def directions(self) -> list[str]:
        return ["minimize", "minimize"] if self.settings.multi_objective else ["minimize"]
