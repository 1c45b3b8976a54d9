"""Compression runs: retrain with a method -> QuantizedModel -> .wsz file -> decoded accuracy -> report.

The accuracy this module quotes is that of the model *decoded from the file it
wrote*, and the compression rate is measured from that file's bytes; the
paper-style estimate is written beside it, labelled as such.
"""

from __future__ import annotations

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
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.methods import build_method, get_method
from weightshare.methods.base import Method
from weightshare.models.architectures import build_model
from weightshare.pipeline.pretrain import evaluate_model, load_run_model, set_threads
from weightshare.report.run_report import build_report, write_report
from weightshare.runs.rundir import RunDir
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit

__all__ = ["compress", "finish", "tune_codebooks"]


def compress(
    method: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    train_cfg: TrainConfig,
    method_cfg: Any,
    data_cfg: DataConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    record_frames: bool = False,
    data: DataBundle | None = None,
) -> dict[str, Any]:
    """Retrain the final model of run ``source`` with ``method``; write everything into ``out``.

    ``record_frames`` keeps a sample of the covered weights each epoch (for the scatter animation).
    Returns the report (also written to ``out/report.json``).
    """
    spec = get_method(method)
    validate(train_cfg)
    validate(method_cfg)
    if not resume:
        RunDir.check_new(out)
    model, source_run = load_run_model(source)
    data_cfg = validate(data_cfg or DataConfig(**source_run.config["data"]))
    set_threads(train_cfg.threads)
    config = {
        "command": "compress",
        "method": method,
        "source": str(source),
        "data": dataclasses.asdict(data_cfg),
        "train": dataclasses.asdict(train_cfg),
        spec.name: dataclasses.asdict(method_cfg),
    }
    data = data or load_data(data_cfg)
    pretrained_state = {k: v.clone() for k, v in model.state_dict().items()}
    pretrained = evaluate_model(model, data)
    torch.manual_seed(train_cfg.seed)
    hooks = build_method(method, model, method_cfg, len(data.train))
    hooks.check_train(train_cfg)  # e.g. a schedule of rounds that fixes the number of epochs
    # Only now, with every setting checked, does the run directory come to exist.
    run = RunDir.open(out) if resume else RunDir.create(out, config)
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
    qmodel, removed = _remove_dead(model, hooks.finalize(model), method_cfg, data)
    qmodel.meta.update({"method": method, "model": source_run.config["train"]["model"]})
    errors = {"pretrained": pretrained, "retrained": retrained}
    if getattr(method_cfg, "codebook_epochs", 0):
        errors["snapped"] = evaluate_model(qmodel.load_into(model), data)
        # Short, so it keeps no checkpoint of its own: an interrupted run resumes from the retraining's.
        qmodel, rows = tune_codebooks(
            model, qmodel, data, train_cfg, epochs=method_cfg.codebook_epochs, lr=method_cfg.codebook_lr,
            batch_size=data_cfg.batch_size, progress=progress, history=run.read_metrics(),
        )  # fmt: skip
        run.write_metrics(rows)
    summary = {**hooks.summary(), **({"dead_weights_removed": removed} if removed else {})}
    return finish(run, qmodel, data, errors=errors, method_summary=summary)


def _remove_dead(
    model: torch.nn.Module, qmodel: QuantizedModel, method_cfg: Any, data: DataBundle
) -> tuple[QuantizedModel, dict[str, int]]:
    """The method's ``remove_dead`` setting: drop weights that never change the output (lossless)."""
    if not getattr(method_cfg, "remove_dead", False):
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
    report = build_report(run, qmodel, decoded, nbytes=nbytes, errors=errors)
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
