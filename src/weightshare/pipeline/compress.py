"""Compression runs: retrain with a method -> QuantizedModel -> .wsz file -> decoded accuracy -> report.

The accuracy this module quotes is that of the model *decoded from the file it
wrote*, and the compression rate is measured from that file's bytes; the
paper-style estimate is written beside it, labelled as such.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from weightshare.core.errors import MismatchError, RunDirError
from weightshare.core.io import save_tensors
from weightshare.core.quantized import QuantizedModel
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig, DataOverrides
from weightshare.data.datasets import DataBundle, load_data
from weightshare.finish.config import FinishConfig
from weightshare.finish.stages import run_finishing
from weightshare.methods import CONFIGS, build_method, config_class, method_class
from weightshare.methods.base import Method, MethodConfig
from weightshare.models.architectures import build_model
from weightshare.pipeline.pretrain import load_run_model, set_threads
from weightshare.pipeline.rundirs import check_new, interruptible, open_run, recorded, training_run
from weightshare.report.run_report import build_report, write_report
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CHECKPOINTS, COMPRESSED, CONFIG, FRAMES, MODEL_FINAL, MODEL_INIT, QUANTIZED
from weightshare.train.checkpoint import checkpointed_epochs
from weightshare.train.distill import Distillation
from weightshare.train.distributed import Distributed, session
from weightshare.train.loop import evaluate_model, fit

__all__ = [
    "collapsed",
    "compress",
    "open_compress_run",
    "resolve_recipe",
    "recorded_method",
    "recorded_source",
    "refinish",
    "result_warnings",
    "stored_config",
    "write_and_report",
]


def compress(
    source: str | os.PathLike,
    config: MethodConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    record_frames: bool = False,
    data: DataBundle | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Retrain the final model of run ``source`` with the recipe ``config``; write everything into ``out``.

    The type of ``config`` picks the method (``SWSConfig`` -> soft weight-sharing), e.g.
    ``compress("runs/lenet300", SWSConfig.preset("lenet300"), "runs/out")``. ``config.train`` drives the
    retraining (its ``model`` is always the source run's), ``config.data`` changes the source run's data
    settings, ``config.finish`` the stages after the method's hard assignment. ``record_frames`` keeps a
    sample of the covered weights each epoch (for the scatter animation); ``on_epoch(epoch, model)`` is called
    after each retraining epoch's row is in ``metrics.csv`` (a search stops bad trials from it). Returns the
    report (also written to ``out/report.json``); its ``warnings`` say whether the result collapsed (:func:`collapsed`).
    Ctrl-C raises :class:`~weightshare.core.errors.RunInterrupted`; ``resume=True`` continues. Launched by
    ``torchrun``, the retraining is data-parallel and rank 0 alone finalizes and writes
    (:mod:`weightshare.train.distributed`); the other ranks return an empty dict.
    """
    method_class(config)  # not a method's config: refused before anything is read or written
    config = validate(copy.deepcopy(config))  # the caller's object stays as it was
    with session() as dist:
        if resume:
            open_compress_run(out, config.method)  # another command's or method's run: refused before any work
        else:
            check_new(out)
        if dist is not None:
            dist.barrier()  # every rank has looked at ``out`` before rank 0 creates it
        model, source_run = load_run_model(source)
        config, data_cfg = resolve_recipe(config, source_run.config)
        set_threads(config.train.threads)
        data = data or load_data(data_cfg)
        if dist is not None:
            model.to(dist.device)
        return _retrain(model, source, source_run, config, data_cfg, data, out, resume=resume, progress=progress,
                        record_frames=record_frames, on_epoch=on_epoch, dist=dist)  # fmt: skip


def _retrain(
    model: torch.nn.Module,
    source: str | os.PathLike,
    source_run: RunDir,
    config: MethodConfig,
    data_cfg: DataConfig,
    data: DataBundle,
    out: str | os.PathLike,
    *,
    resume: bool,
    progress: bool,
    record_frames: bool,
    on_epoch: Callable[[int, torch.nn.Module], None] | None,
    dist: Distributed | None,
) -> dict[str, Any]:
    """The method's retraining in run directory ``out``, then (rank 0) the file and its report."""
    writer = dist is None or dist.is_main
    pretrained_state = {k: v.clone() for k, v in model.state_dict().items()}
    # The teacher is the pretrained model: taken before a method touches the weights (ADMM projects as it is
    # built) and before fit restores a checkpoint (--resume).
    distill = Distillation.maybe(model, config.distill)
    errors = {"pretrained": evaluate_model(model, data)} if writer else {}
    torch.manual_seed(config.train.seed)
    hooks = build_method(config, model, len(data.train))
    hooks.check_train(config.train)  # e.g. a schedule of rounds that fixes the number of epochs
    # Only now, with every setting checked, does the run directory come to exist.
    record = {"command": "compress", "method": config.method, "source": str(source), **config.sections()}
    record["data"] = dataclasses.asdict(data_cfg)  # what ran, not just what this recipe changed
    run = training_run(out, record, resume=resume, writer=writer)
    if writer and not run.has(MODEL_INIT):  # also when a resumed run was stopped before writing it
        save_tensors(run.path_of(MODEL_INIT), pretrained_state)
    with interruptible(run, "retrain", config.train.epochs):
        history = [dict(r) for r in source_run.read_metrics()]  # the pretraining curve, kept in front
        recorder = _FrameRecorder(run, hooks) if record_frames and writer else None
        callbacks = [c for c in (recorder, on_epoch) if c is not None]

        def after_epoch(epoch: int, net: torch.nn.Module) -> None:
            for callback in callbacks:
                callback(epoch, net)

        fitted = fit(model, data, config.train, method=hooks, run=run, phase="retrain", resume=resume,
            batch_size=data_cfg.batch_size, progress=progress, history=history, on_epoch=after_epoch,
            dist=dist, distill=distill)  # fmt: skip
        if not writer:
            return {}
        errors["retrained"] = evaluate_model(model, data)
        return _finalize_and_finish(
            run, model, hooks, config, data, errors, history=fitted.history, batch_size=data_cfg.batch_size,
            progress=progress,
        )  # fmt: skip


def refinish(
    run: str | os.PathLike,
    finish: FinishConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """The ``[finish]`` stages again, now with ``finish``, on the retrained network of compression run ``run``.

    The finish stages take minutes, the retraining hours: the retraining's checkpoint is copied into a new run
    ``out`` (``run`` is left as it is) and continued there as ``compress --resume`` would, so ``out`` holds the
    file, report and records of a run started with the new ``[finish]``, e.g.
    ``refinish("runs/lenet5-sws", FinishConfig(dense_param_bits=4), "runs/lenet5-sws-4bit")``. Returns the report.
    """
    old = open_compress_run(run)
    config = dataclasses.replace(stored_config(old.config), finish=validate(copy.deepcopy(finish)))
    done = checkpointed_epochs(old, "retrain")
    if done < config.train.epochs:
        raise RunDirError(
            f"{run} has retrained {done} of {config.train.epochs} epochs: finish it first with "
            f"weightshare compress {config.method} --out {run} --resume"
        )
    source = recorded_source(old)
    record = {**old.config, "finish": dataclasses.asdict(config.finish), "refinished_from": str(run)}
    new = RunDir.create(out, record)
    shutil.copytree(old.path_of(CHECKPOINTS), new.path_of(CHECKPOINTS))
    if old.has(MODEL_INIT):
        shutil.copy2(old.path_of(MODEL_INIT), new.path_of(MODEL_INIT))
    return compress(source, config, out, resume=True, progress=progress, data=data)


def recorded_source(run: RunDir) -> str:
    """The pretrained run that compression run ``run`` was started from, as its ``config.json`` records it."""
    source = str(recorded(run, "source"))
    if not os.path.isdir(source):  # recorded as typed: a relative path holds only from where the run started
        raise RunDirError(
            f"{run.path} was started from the pretrained run {source!r}, which is not a directory from "
            f"{os.getcwd()}: give --from with where that run is now"
        )
    return source


def open_compress_run(out: str | os.PathLike, method: str | None = None) -> RunDir:
    """The compression run in ``out`` to continue; refused if another command, or a method other than
    ``method`` (when given), made it, or if it records a method this version does not know."""
    run = open_run(out, "compress", why="compress --resume continues a run made by weightshare compress", resuming=True)
    stored = recorded_method(run).method
    if method is not None and stored != method:
        raise MismatchError(
            f"{out} is a {stored} run, not a {method} run: continue it with weightshare compress {stored} --resume"
        )
    return run


def recorded_method(run: RunDir) -> type[MethodConfig]:
    """The config class of the method a compression run records; one this version does not know is refused."""
    name = recorded(run, "method")
    if name not in CONFIGS:
        raise RunDirError(
            f"{run.path_of(CONFIG)} records method {name!r}, which this version of weightshare does not know "
            f"(known: {', '.join(CONFIGS)})"
        )
    return CONFIGS[name]


def _finalize_and_finish(
    run: RunDir,
    model: torch.nn.Module,
    hooks: Method,
    config: MethodConfig,
    data: DataBundle,
    errors: dict[str, dict[str, float]],
    *,
    history: list[dict[str, Any]],
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """The method's records and hard assignment, then the ``[finish]`` stages, then the file and its report.

    ``history`` is metrics.csv up to the end of the retraining; the finish stages' rows follow it.
    """
    for name, record in hooks.records().items():
        run.write_record(name, record)
    save_tensors(run.path_of(MODEL_FINAL), model.state_dict())
    qmodel = hooks.finalize(model)
    qmodel.meta.update({"method": config.method, "model": config.train.model})
    finished = run_finishing(
        model, qmodel, data, config.finish, config.train,
        batch_size=batch_size, progress=progress, history=history,
    )  # fmt: skip
    run.write_metrics(finished.rows or history)  # a resumed run's earlier finish rows are not kept twice
    summary = {**hooks.summary(), **finished.summary()}
    return write_and_report(
        run, finished.qmodel, data, errors=errors | finished.errors, method_summary=summary,
        hint=hooks.collapse_hint(), coverage=hooks.coverage_reasons(), float16=config.finish.float16,
    )  # fmt: skip


def resolve_recipe(config: MethodConfig, source: dict[str, Any]) -> tuple[MethodConfig, DataConfig]:
    """The recipe as it runs from a source run with ``config.json`` ``source``: the source's model, and the
    source's data settings with ``config.data`` applied."""
    train = dataclasses.replace(config.train, model=source["train"]["model"])  # the weights are the source's
    data_cfg = validate(config.data.apply(DataConfig(**source["data"])))
    return dataclasses.replace(config, train=train), data_cfg


def stored_config(stored: dict[str, Any]) -> MethodConfig:
    """The recipe a compression run was started with, from its ``config.json`` (for ``--resume``).

    ``config.json`` holds the data settings that ran; as overrides of the source's they give the same again.
    """
    cls = config_class(stored["method"])
    sections = {name: stored[name] for name in cls.section_names() if name in stored}
    # Every [data] setting a run may override, as it ran (a run made before `shift` existed has none).
    sections["data"] = {
        f.name: stored["data"][f.name] for f in dataclasses.fields(DataOverrides) if f.name in stored["data"]
    }
    if "finish" not in stored:  # a run started before [finish] existed kept these with the method's settings
        own = dict(sections[cls.method])
        sections["finish"] = {f.name: own.pop(f.name) for f in dataclasses.fields(FinishConfig) if f.name in own}
        sections[cls.method] = own
    return validate(cls().updated(sections, f"{stored['method']} run's config.json"))


def write_and_report(
    run: RunDir,
    qmodel: QuantizedModel,
    data: DataBundle,
    *,
    errors: dict[str, dict[str, float]],
    method_summary: dict[str, Any] | None = None,
    hint: str = Method.collapse_hint(),
    coverage: dict[str, str] | None = None,
    float16: bool = False,
) -> dict[str, Any]:
    """Quantized checkpoint -> model.wsz -> decode -> evaluate the decoded model -> report.json.

    The report's ``warnings`` say when the result collapsed or lost much in the hard assignment (then with
    ``hint``, what usually helps); the files are written all the same, to be inspected. ``coverage``
    (``Method.coverage_reasons()``) goes into the report: why each dense tensor was not compressed.
    ``float16`` sets the file's float16 flag (``[finish] float16``).
    """
    from weightshare.codec import load_compressed, save_compressed
    from weightshare.core.quantized import save_quantized

    save_quantized(qmodel, run.path_of(QUANTIZED))
    nbytes = save_compressed(qmodel, run.path_of(COMPRESSED), float16=float16)
    decoded = load_compressed(run.path_of(COMPRESSED))
    model_name = str(qmodel.meta["model"])
    net = decoded.load_into(build_model(model_name, data.num_classes))
    errors = {**errors, "decoded": evaluate_model(net, data)}
    report = build_report(
        run, errors=errors, written_bytes=nbytes, model=net, example_input=data.test.x[:1], coverage=coverage
    )
    report["method_summary"] = method_summary or {}
    report["warnings"] = result_warnings(report, data.num_classes, hint)
    write_report(run, report)
    return report


CHANCE_MARGIN = 5.0
"""A decoded test error within this many points of chance, 100 (1 - 1/classes), counts as collapsed."""

GAP_FACTOR, GAP_POINTS = 2.0, 2.0
"""The decoded error is "far above" the retrained one when more than ``GAP_FACTOR`` times it and
more than ``GAP_POINTS`` points above it (both: 0.5% -> 1.2% is noise, 60% -> 64% is not the assignment's doing)."""


def result_warnings(report: dict[str, Any], num_classes: int, hint: str) -> list[dict[str, str]]:
    """What is wrong with a compression result, as ``{"kind", "message"}``: ``collapsed`` (every covered weight
    is zero, or the decoded model is at chance level) or ``assignment_gap`` (the decoded error is far above the
    retrained one).

    >>> report = {"totals": {"weights": 10, "nnz": 0}, "errors": {"retrained": {"test_error": 2.0},
    ...           "decoded": {"test_error": 88.0}}}
    >>> [w["kind"] for w in result_warnings(report, 10, "retrain longer")]
    ['collapsed', 'collapsed', 'assignment_gap']
    """
    out = []
    if report["totals"]["weights"] and report["totals"]["nnz"] == 0:
        message = f"the result collapsed: every one of the {report['totals']['weights']:,} covered weights is zero"
        out.append({"kind": "collapsed", "message": message})
    decoded = report["errors"]["decoded"]["test_error"]
    chance = 100.0 * (1 - 1 / num_classes)
    if decoded >= chance - CHANCE_MARGIN:
        message = f"the result collapsed: its decoded test error {decoded:.2f}% is at chance level"
        out.append({"kind": "collapsed", "message": f"{message} ({chance:.0f}% for {num_classes} classes)"})
    retrained = report["errors"].get("retrained", {}).get("test_error")
    if retrained is not None and decoded > GAP_FACTOR * retrained and decoded > retrained + GAP_POINTS:
        message = f"the decoded test error {decoded:.2f}% is far above the retrained {retrained:.2f}%"
        out.append({"kind": "assignment_gap", "message": f"{message}{_gap_split(report['errors'])}: {hint}"})
    return out


def _gap_split(errors: dict[str, dict[str, float]]) -> str:
    """Which half of the hard assignment lost it: setting the zeros, or snapping the survivors to shared values."""
    if "pruned" not in errors:
        return ""
    pruned = errors["pruned"]["test_error"]
    return f" (with only the weights assigned to zero set to zero, the trained network is at {pruned:.2f}%)"


def collapsed(report: dict[str, Any]) -> bool:
    """Whether a compression report says its result collapsed (see :func:`result_warnings`)."""
    return any(w["kind"] == "collapsed" for w in report.get("warnings", []))


class _FrameRecorder:
    """Saves a fixed sample of covered weights each epoch, for the scatter animation."""

    def __init__(self, run: RunDir, method: Method, sample: int = 20000) -> None:
        self.run = run
        self.covered = method.covered_tensors()
        gen = torch.Generator().manual_seed(0)
        self.index = torch.randperm(self._flat().numel(), generator=gen)[:sample].sort().values
        self(-1)  # epoch 0: the pretrained weights

    def _flat(self) -> torch.Tensor:
        if not self.covered:
            return torch.empty(0)
        return torch.cat([p.detach().reshape(-1) for p in self.covered.values()])

    def __call__(self, epoch: int, model: torch.nn.Module | None = None) -> None:
        """Save the sample after (0-based) ``epoch``."""
        save_tensors(self.run.path_of(FRAMES, f"epoch_{epoch + 1:04d}.safetensors"), {"w": self._flat()[self.index]})
