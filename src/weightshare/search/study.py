"""Hyper-parameter studies: Optuna searching one method's settings from one pretrained run.

Every trial is an ordinary compression run directory (``STUDY_DIR/trials/trial_0007``), so any trial can be
inspected, plotted or evaluated like a run started by hand. A trial's objectives are the *validation* error of
the model decoded from its file and the file's bytes; the test error is recorded for the report only and never
chooses anything. The study lives in an Optuna storage: by default a journal file in the study directory, which
local worker processes share; any storage URL (PostgreSQL, ...) lets workers on many machines share one study.
The study is created once, before any worker starts (concurrent creation breaks some storages), and running
the same command again continues it (docs/search.md).
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from weightshare.core.errors import USER_ERRORS, ConfigError, MismatchError, RunDirError
from weightshare.core.io import write_json
from weightshare.core.settings import validate
from weightshare.data.datasets import load_data
from weightshare.methods.base import MethodConfig
from weightshare.methods.space import SearchRange, check_space, space_from_toml, space_to_dict
from weightshare.pipeline.compress import collapsed, compress, resolve_recipe
from weightshare.pipeline.pretrain import open_source_run
from weightshare.runs.rundir import RunDir
from weightshare.search.config import FINISHED, StudySpec, TuneConfig
from weightshare.search.results import write_results

__all__ = ["StudySpec", "TrialFailed", "open_storage", "prepare_study", "suggest", "tune", "finished_trials"]

STUDY_RECORD = "study.json"
JOURNAL = "journal.log"
TRIALS = "trials"
POLL_SECONDS = 2.0


class TrialFailed(RuntimeError):
    """A trial whose result is unusable (e.g. it collapsed): recorded as failed, the study goes on."""


def tune(
    source: str | os.PathLike,
    config: MethodConfig,
    study_dir: str | os.PathLike,
    settings: TuneConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Search ``config``'s method's settings (its ``search_space``) from pretrained run ``source``.

    ``config`` is the recipe every trial starts from (e.g. ``SWSConfig.preset("lenet300")``); each trial
    replaces the searched settings. Writes the trials, ``pareto.csv``/``pareto.json``, ``pareto.png`` and one
    TOML recipe per Pareto trial into ``study_dir`` and returns the summary of :func:`write_results`, e.g.
    ``tune("runs/digits", SWSConfig.preset("digits"), "runs/study", TuneConfig(trials=8, workers=2))``.
    """
    spec = prepare_study(source, config, study_dir, settings or TuneConfig())
    run_workers(spec, progress=progress)
    return write_results(spec, load_study(spec))


def prepare_study(
    source: str | os.PathLike, config: MethodConfig, study_dir: str | os.PathLike, settings: TuneConfig
) -> StudySpec:
    """Check everything, record the study in ``study_dir/study.json`` and create it in its storage, once."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what matters
    settings = validate(copy.deepcopy(settings))
    source_run = open_source_run(source)
    space = space_from_toml(settings.space, config.search_space) if settings.space else config.search_space
    if not space:
        raise ConfigError(f"the {config.method} recipe has no search space: give one with --space FILE.toml")
    check_space(config, space, f"{config.method} search space")
    spec = StudySpec(str(Path(source).resolve()), _with_validation(config, source_run, settings), dict(space),
                     str(Path(study_dir).resolve()), settings)  # fmt: skip
    if settings.storage is None:  # the journal's workers are this command's: one command per study directory
        RunDir(spec.study_dir).claim()
    Path(spec.study_dir, TRIALS).mkdir(parents=True, exist_ok=True)
    _record_study(spec)
    storage = open_storage(spec)
    study = optuna.create_study(
        study_name=spec.study_name, storage=storage, directions=spec.directions, load_if_exists=True
    )
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise MismatchError(f"study {spec.study_name!r} in {describe_storage(spec)} has other objectives")
    if settings.storage is None:
        fail_interrupted(study, storage)
    return spec


def fail_interrupted(study: Any, storage: Any) -> int:
    """Mark failed the trials an earlier, stopped command left running; returns how many.

    A journal file has no heartbeat, so a killed worker's trial would stay RUNNING for ever, count
    against ``--trials`` in every worker's stop check, and never be retried. Only called with the study
    directory claimed, so no live worker is running any trial of this journal.
    """
    optuna = require_optuna()
    stale = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    for trial in stale:  # FrozenTrial keeps its storage id private; Optuna's own fail_stale_trials uses it too
        storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: the command running it was stopped")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def require_optuna() -> Any:
    """The optuna module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("weightshare tune needs Optuna: pip install 'weightshare[search]'") from None
    return optuna


def _with_validation(config: MethodConfig, source_run: RunDir, settings: TuneConfig) -> MethodConfig:
    """The recipe with a validation split: a search chooses on validation error, so ``val_size = 0`` (the papers'
    protocol of retraining on every training image) becomes ``settings.search_val_size`` for the trials."""
    _, data_cfg = resolve_recipe(config, source_run.config)
    if data_cfg.val_size > 0:
        return config
    return config.updated({"data": {"val_size": settings.search_val_size}}, "tune (validation split)")


def _record_study(spec: StudySpec) -> None:
    """Write ``study.json``; a study directory holding another study (method, source, recipe, space or objectives)
    is refused, so a re-run continues exactly the study it started."""
    record = {
        "method": spec.config.method,
        "source": spec.source,
        "study_name": spec.study_name,
        "objectives": ["val_error", "bytes"] if spec.settings.multi_objective else ["val_error"],
        "max_bytes": spec.settings.max_bytes,
        "recipe": spec.config.sections(),
        "space": space_to_dict(spec.space),
    }
    path = Path(spec.study_dir, STUDY_RECORD)
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = [key for key in record if key != "recipe" and stored.get(key) != json.loads(json.dumps(record[key]))]
        settings = recipe_changes(spec.config, stored.get("recipe") or {})
        parts = [f"its {', '.join(changed)} differ"] if changed else []
        if settings:
            parts.append(f"its recipe differs: {'; '.join(settings[:3])}{'; ...' if len(settings) > 3 else ''}")
        if parts:
            raise MismatchError(
                f"{path} records another study ({'; '.join(parts)}); use another --study-dir to start one"
            )
        return
    write_json(path, record)


def recipe_changes(config: MethodConfig, stored: dict[str, dict[str, Any]]) -> list[str]:
    """The settings of ``config`` that differ from a recorded recipe, as ``section.key recorded -> now``.

    A setting the record lacks (one a later version of weightshare added) counts as its default, so
    upgrading does not orphan a study whose recipe did not change.
    """
    now, defaults = (json.loads(json.dumps(c.sections())) for c in (config, type(config)()))
    changes = []
    for section, values in now.items():
        for key, value in values.items():
            before = stored.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if before != value:
                changes.append(f"{section}.{key} {before!r} -> {value!r}")
    gone = [
        f"{section}.{key} recorded, no longer a setting"
        for section, values in stored.items()
        for key in values
        if key not in now.get(section, {})
    ]
    return changes + gone


def open_storage(spec: StudySpec) -> Any:
    """The study's storage: a journal file in the study directory, or the URL of ``settings.storage``.

    A database gets a heartbeat, so the trial of a worker that died is marked failed instead of running forever.
    """
    optuna = require_optuna()
    url = spec.settings.storage
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(Path(spec.study_dir, JOURNAL))))
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what marks dead trials failed
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except Exception as exc:  # noqa: BLE001 (SQLAlchemy's and the drivers' errors have no common base)
        raise RunDirError(f"cannot open the study storage {url}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def describe_storage(spec: StudySpec) -> str:
    return spec.settings.storage or str(Path(spec.study_dir, JOURNAL))


def load_study(spec: StudySpec, worker: int | None = None) -> Any:
    """The study, with the sampler and pruner of worker ``worker`` (None: for reading only)."""
    optuna = require_optuna()
    sampler = _sampler(spec, worker or 0)
    return optuna.load_study(
        study_name=spec.study_name, storage=open_storage(spec), sampler=sampler, pruner=_pruner(spec)
    )


def _sampler(spec: StudySpec, worker: int) -> Any:
    """TPE (Optuna's default; multi-objective too, and constrained by a byte budget that each trial reports with
    ``set_constraint``); worker ``k`` draws with seed + k so workers don't repeat each other."""
    optuna = require_optuna()
    return optuna.samplers.TPESampler(
        seed=spec.settings.sampler_seed + worker, n_startup_trials=spec.settings.startup_trials
    )


def _pruner(spec: StudySpec) -> Any:
    """Median pruning on the per-epoch validation error (single objective only: Optuna prunes nothing else)."""
    optuna = require_optuna()
    if spec.settings.multi_objective or spec.settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, spec.config.train.epochs // 4))


def finished_trials(study: Any) -> int:
    """Trials that ended, whatever the outcome (what ``--trials`` counts)."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def run_workers(spec: StudySpec, *, progress: bool = True) -> None:
    """Run the trials the study still lacks: in this process, or split exactly among spawned workers."""
    done = finished_trials(load_study(spec))
    remaining = max(0, spec.settings.trials - done)
    workers = min(spec.settings.workers, remaining)
    quotas = [remaining // workers + (k < remaining % workers) for k in range(workers)] if workers else []
    bar = _Progress(spec, done, remaining, enabled=progress)
    try:
        if workers == 1:
            work(spec, 0, quotas[0], on_trial=bar.update)
        elif workers > 1:
            _spawn(spec, quotas, bar)
    finally:
        bar.close()


def _spawn(spec: StudySpec, quotas: list[int], bar: _Progress) -> None:
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    procs = [context.Process(target=work, args=(spec, k, q), name=f"tune-worker-{k}") for k, q in enumerate(quotas)]
    for proc in procs:
        proc.start()
    study = load_study(spec)  # one storage connection; each poll reads the trials anew
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_SECONDS)
            bar.update(study)
    finally:
        for proc in procs:
            proc.join()
    bar.update(study)
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        raise RunDirError(
            f"worker(s) {', '.join(failed)} of study {spec.study_name!r} stopped with an error (see above)"
        )


def work(spec: StudySpec, worker: int, quota: int, on_trial: Any = None) -> None:
    """One worker: run up to ``quota`` trials; each failure is a failed trial, never the end of the study."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.config.train.threads == 0 and spec.settings.workers > 1:  # workers share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.settings.workers))
    study = load_study(spec, worker)
    _, data_cfg = resolve_recipe(spec.config, open_source_run(spec.source).config)
    data = load_data(data_cfg)  # once per worker, not per trial

    def stop_at_total(study: Any, trial: Any) -> None:  # other machines may share the study
        if on_trial is not None:
            on_trial(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if sum(state in (*FINISHED, "RUNNING") for state in states) >= spec.settings.trials:
            study.stop()

    study.optimize(
        lambda trial: objective(trial, spec, data),
        n_trials=quota,
        catch=(Exception,),
        callbacks=[stop_at_total],
        gc_after_trial=True,
    )


def suggest(trial: Any, space: dict[str, dict[str, SearchRange]]) -> dict[str, dict[str, Any]]:
    """The settings of one trial, by section, drawn from ``space`` (parameter names are ``section.setting``)."""
    out: dict[str, dict[str, Any]] = {}
    for section_name, ranges in space.items():
        for key, rng in ranges.items():
            name = f"{section_name}.{key}"
            if rng.choices is not None:
                value = trial.suggest_categorical(name, list(rng.choices))
            elif all(isinstance(v, int) for v in (rng.low, rng.high, rng.step or 1)):
                value = trial.suggest_int(name, int(rng.low), int(rng.high), step=int(rng.step or 1), log=rng.log)
            else:
                value = trial.suggest_float(name, float(rng.low), float(rng.high), log=rng.log, step=rng.step)
            out.setdefault(section_name, {})[key] = value
    return out


def objective(trial: Any, spec: StudySpec, data: Any) -> float | tuple[float, float]:
    """One trial: a compression run with the drawn settings; its decoded validation error (and file bytes)."""
    optuna = require_optuna()
    config = validate(spec.config.updated(suggest(trial, spec.space), f"trial {trial.number}"))
    out = Path(spec.study_dir, TRIALS, f"trial_{trial.number:04d}")
    trial.set_user_attr("run_dir", str(out.relative_to(spec.study_dir)))
    pruning = None if spec.settings.multi_objective else _PruneFromMetrics(trial, out)
    failed = (math.nan,) * len(spec.directions)
    try:
        report = compress(spec.source, config, out, progress=False, data=data, on_epoch=pruning)
        return _record_result(trial, spec, report)
    except optuna.TrialPruned:
        raise
    except (TrialFailed, *USER_ERRORS) as exc:  # e.g. diverged or collapsed: a failed trial, one line in the log
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        return failed if len(failed) > 1 else failed[0]
    except Exception as exc:  # a bug: Optuna logs its traceback, records the trial as failed and goes on
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        RunDir(out).release()  # a worker runs many trials: let go of each run directory


def _record_result(trial: Any, spec: StudySpec, report: dict[str, Any]) -> float | tuple[float, float]:
    decoded, file = report["errors"]["decoded"], report["file"]
    attrs = {
        "val_error": decoded["val_error"],
        "test_error": decoded["test_error"],
        "bytes": file["bytes"],
        "cr": file["cr_all"],
        "paper_cr": report["paper_style"]["cr_all"],
        "nnz": report["totals"]["nnz"],
        "weights": report["totals"]["weights"],
        "unique_values": report["totals"]["unique_values"],
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if collapsed(report):
        raise TrialFailed("; ".join(w["message"] for w in report["warnings"] if w["kind"] == "collapsed"))
    if spec.settings.multi_objective:
        return attrs["val_error"], float(attrs["bytes"])
    trial.set_constraint("max_bytes", attrs["bytes"] - spec.settings.max_bytes)  # feasible when <= 0
    return attrs["val_error"]


class _PruneFromMetrics:
    """Report each retraining epoch's validation error to Optuna; stop the trial when the pruner says so."""

    def __init__(self, trial: Any, out: Path) -> None:
        self.trial, self.out = trial, out

    def __call__(self, epoch: int, model: Any) -> None:
        optuna = require_optuna()
        row = RunDir(self.out).read_metrics()[-1]
        val_error = float(row["val_error"])
        self.trial.report(val_error, epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", epoch + 1)
            raise optuna.TrialPruned(f"validation error {val_error:.2f}% after epoch {epoch + 1}")


class _Progress:
    """Trials done and the best so far, as a progress bar (or nothing, with ``enabled=False``)."""

    def __init__(self, spec: StudySpec, done_before: int, total: int, *, enabled: bool) -> None:
        self.spec, self.done_before = spec, done_before
        self.bar = tqdm(total=total, desc=f"study {spec.study_name}", unit="trial", disable=not enabled)

    def update(self, study: Any) -> None:
        self.bar.n = min(self.bar.total, finished_trials(study) - self.done_before)
        self.bar.set_postfix_str(best_so_far(study, self.spec), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def best_so_far(study: Any, spec: StudySpec) -> str:
    """``best 2.2% val at 1,840 B`` (the lowest validation error among usable trials within any byte budget)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and "bytes" in t.user_attrs]
    budget = spec.settings.max_bytes
    feasible = [t for t in done if budget is None or t.user_attrs["bytes"] <= budget]
    if not feasible:
        return "no usable trial yet"
    best = min(feasible, key=lambda t: (t.user_attrs["val_error"], t.user_attrs["bytes"]))
    return f"best {best.user_attrs['val_error']:.2f}% val at {best.user_attrs['bytes']:,} B (trial {best.number})"
