"""Compression runs: retrain with a method -> QuantizedModel -> .wsz file -> decoded accuracy -> report.

The accuracy this module quotes is that of the model *decoded from the file it
wrote*, and the compression rate is measured from that file's bytes; the
paper-style estimate is written beside it, labelled as such.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import torch

from weightshare.core.io import save_tensors
from weightshare.core.quantized import QuantizedModel
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig
from weightshare.data.datasets import DataBundle, load_data
from weightshare.finish.codebook_tuning import CodebookTuning
from weightshare.finish.config import FinishConfig
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.methods import build_method, config_class, method_class
from weightshare.methods.base import Method, MethodConfig
from weightshare.models.architectures import build_model
from weightshare.pipeline.pretrain import evaluate_model, load_run_model, set_threads
from weightshare.report.run_report import build_report, write_report
from weightshare.runs.rundir import RunDir
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit

__all__ = ["compress", "finish", "stored_config", "tune_codebooks"]


def compress(
    source: str | os.PathLike,
    config: MethodConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    record_frames: bool = False,
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """Retrain the final model of run ``source`` with the recipe ``config``; write everything into ``out``.

    The type of ``config`` picks the method (``SWSConfig`` -> soft weight-sharing), e.g.
    ``compress("runs/lenet300", SWSConfig.preset("lenet300"), "runs/out")``. ``config.train`` drives the
    retraining (its ``model`` is always the source run's), ``config.data`` changes the source run's data
    settings, ``config.finish`` the stages after the method's hard assignment. ``record_frames`` keeps a
    sample of the covered weights each epoch (for the scatter animation). Returns the report (also
    written to ``out/report.json``).
    """
    method_class(config)  # not a method's config: refused before anything is read or written
    config = validate(copy.deepcopy(config))  # the caller's object stays as it was
    if not resume:
        RunDir.check_new(out)
    model, source_run = load_run_model(source)
    config, data_cfg = _resolve(config, source_run.config)
    train_cfg = config.train
    set_threads(train_cfg.threads)
    record = {"command": "compress", "method": config.method, "source": str(source), **config.sections()}
    record["data"] = dataclasses.asdict(data_cfg)  # what ran, not just what this recipe changed
    data = data or load_data(data_cfg)
    pretrained_state = {k: v.clone() for k, v in model.state_dict().items()}
    pretrained = evaluate_model(model, data)
    torch.manual_seed(train_cfg.seed)
    hooks = build_method(config, model, len(data.train))
    hooks.check_train(train_cfg)  # e.g. a schedule of rounds that fixes the number of epochs
    # Only now, with every setting checked, does the run directory come to exist.
    run = RunDir.open(out, write=True) if resume else RunDir.create(out, record)
    if not resume:
        save_tensors(run.file("model_init.safetensors"), pretrained_state)
    history = [dict(r) for r in source_run.read_metrics()]  # the pretraining curve, kept in front
    recorder = _FrameRecorder(run, hooks) if record_frames else None
    fit(
        model,
        data,
        train_cfg,
        method=hooks,
        run=run,
        phase="retrain",
        resume=resume,
        batch_size=data_cfg.batch_size,
        progress=progress,
        history=history,
        on_epoch=recorder,
    )
    _write_method_records(run, hooks)
    save_tensors(run.file("model_final.safetensors"), model.state_dict())
    retrained = evaluate_model(model, data)
    qmodel, removed = _remove_dead(model, hooks.finalize(model), config.finish, data)
    qmodel.meta.update({"method": config.method, "model": train_cfg.model})
    errors = {"pretrained": pretrained, "retrained": retrained}
    if config.finish.codebook_epochs:
        errors["snapped"] = evaluate_model(qmodel.load_into(model), data)
        # Short, so it keeps no checkpoint of its own: an interrupted run resumes from the retraining's.
        qmodel, rows = tune_codebooks(
            model, qmodel, data, train_cfg, epochs=config.finish.codebook_epochs, lr=config.finish.codebook_lr,
            batch_size=data_cfg.batch_size, progress=progress, history=run.read_metrics(),
        )  # fmt: skip
        run.write_metrics(rows)
    summary = {**hooks.summary(), **({"dead_weights_removed": removed} if removed else {})}
    return finish(run, qmodel, data, errors=errors, method_summary=summary)


def _resolve(config: MethodConfig, source: dict[str, Any]) -> tuple[MethodConfig, DataConfig]:
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
    sections["data"] = {k: stored["data"][k] for k in ("val_size", "batch_size", "data_dir")}
    if "finish" not in stored:  # a run started before [finish] existed kept these with the method's settings
        own = dict(sections[cls.method])
        sections["finish"] = {f.name: own.pop(f.name) for f in dataclasses.fields(FinishConfig) if f.name in own}
        sections[cls.method] = own
    return validate(cls().updated(sections, f"{stored['method']} run's config.json"))


def _remove_dead(
    model: torch.nn.Module, qmodel: QuantizedModel, finish_cfg: FinishConfig, data: DataBundle
) -> tuple[QuantizedModel, dict[str, int]]:
    """``[finish] remove_dead``: drop weights that never change the output (lossless)."""
    if not finish_cfg.remove_dead:
        return qmodel, {}
    return remove_dead_weights(model, qmodel, data.train.x[:1])


def finish(
    run: RunDir,
    qmodel: QuantizedModel,
    data: DataBundle,
    *,
    errors: dict[str, dict[str, float]],
    method_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantized checkpoint -> model.wsz -> decode -> evaluate the decoded model -> report.json."""
    from weightshare.codec import load_compressed, save_compressed
    from weightshare.core.quantized import save_quantized

    save_quantized(qmodel, run.file("quantized.safetensors"))
    nbytes = save_compressed(qmodel, run.file("model.wsz"))
    decoded = load_compressed(run.file("model.wsz"))
    model_name = str(qmodel.meta["model"])
    net = decoded.load_into(build_model(model_name, data.num_classes))
    errors = {**errors, "decoded": evaluate_model(net, data)}
    report = build_report(run, errors=errors, written_bytes=nbytes)
    report["method_summary"] = method_summary or {}
    write_report(run, report)
    return report


def tune_codebooks(
    model: torch.nn.Module,
    qmodel: QuantizedModel,
    data: DataBundle,
    train_cfg: TrainConfig,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    progress: bool = False,
    history: list[dict[str, Any]] | None = None,
) -> tuple[QuantizedModel, list[dict[str, Any]]]:
    """Fine-tune ``qmodel``'s shared values and dense tensors inside ``model``, indices fixed.

    Adam at a constant ``lr`` for ``epochs`` epochs, with ``train_cfg``'s seed (the batches) and
    evaluation settings; returns the tuned model and the metrics rows (``history`` kept in front).
    """
    tuning = CodebookTuning(model, qmodel, lr)
    cfg = dataclasses.replace(train_cfg, epochs=epochs, lr_schedule="none", warmup_epochs=0, optimizer="adam")
    result = fit(model, data, cfg, method=tuning, phase="codebook", batch_size=batch_size, progress=progress,
                 history=history)  # fmt: skip
    return tuning.finalize(model), result.history


def _write_method_records(run: RunDir, method: Method) -> None:
    """The records the method declares (e.g. soft weight-sharing's mixture at every epoch)."""
    for name, record in method.records().items():
        run.write_record(name, record)


class _FrameRecorder:
    """Saves a fixed sample of covered weights each epoch, for the scatter animation."""

    def __init__(self, run: RunDir, method: Method, sample: int = 20000) -> None:
        self.run = run
        self.covered = method.covered_tensors()
        flat = torch.cat([p.detach().reshape(-1) for p in self.covered.values()]) if self.covered else torch.empty(0)
        gen = torch.Generator().manual_seed(0)
        self.index = torch.randperm(flat.numel(), generator=gen)[:sample].sort().values
        save_tensors(run.file("frames", "epoch_0000.safetensors"), {"w": flat[self.index]})

    def __call__(self, epoch: int, model: torch.nn.Module) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in self.covered.values()])
        save_tensors(self.run.file("frames", f"epoch_{epoch + 1:04d}.safetensors"), {"w": flat[self.index]})
