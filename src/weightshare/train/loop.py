"""The one training loop: pretraining and every method's retraining.

A method (or a finishing stage) plugs in through the hooks of
:class:`~weightshare.train.hooks.TrainingHooks`
(``parameters``, ``penalty``, ``after_step``, ``on_epoch_end``); with no method
this is plain training. Each epoch ends with an evaluation on the validation
split (and the test split, for reporting only), one row in ``metrics.csv`` and
a checkpoint (one safetensors file, see :mod:`weightshare.train.checkpoint`; never pickle). The shuffling of epoch ``e``
depends only on ``(seed, e)`` and the torch RNG state is checkpointed, so a
resumed run ends with the same weights, bit for bit, as one never interrupted.
Given a :class:`~weightshare.train.distributed.Distributed` (a ``torchrun`` launch), the same loop runs
data-parallel; :mod:`weightshare.train.distributed` says how it stays equal to one process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from weightshare.core.errors import RunDirError, TrainingDiverged
from weightshare.data.datasets import DataBundle, Split, batches
from weightshare.runs.rundir import RunDir
from weightshare.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from weightshare.train.config import TrainConfig
from weightshare.train.distill import Distillation
from weightshare.train.distributed import Distributed
from weightshare.train.hooks import TrainContext, TrainingHooks

__all__ = ["fit", "evaluate", "evaluate_model", "FitResult", "TrainingDiverged", "build_optimizer", "lr_factor"]


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, dist: Distributed | None = None
) -> dict[str, float]:
    """Top-1 error (%) and mean cross-entropy of ``model`` on a split (with ``dist``: each rank a part).

    >>> from weightshare.data.datasets import Split
    >>> net = nn.Linear(2, 2)
    >>> evaluate(net, Split(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))["error"] in (0.0, 100.0)
    True
    """
    was_training = model.training
    model.eval()
    if dist is None:
        part = split
    else:
        mine = dist.shard(len(split))
        part = Split(split.x[mine], split.y[mine])
    device = _device_of(model)
    wrong, loss_sum = 0.0, 0.0
    for x, y in batches(part, batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        wrong += int((logits.argmax(1) != y).sum())
    model.train(was_training)
    if dist is not None:  # every image counted once, on the rank whose part holds it
        wrong, loss_sum = dist.sum([wrong, loss_sum])
    if len(split) == 0:  # e.g. --val-size 0: no validation split, so no figure (not a 0% error)
        return {"error": math.nan, "loss": math.nan}
    return {"error": 100.0 * wrong / len(split), "loss": loss_sum / len(split)}


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def evaluate_model(model: nn.Module, data: DataBundle) -> dict[str, float]:
    """Validation and test error (%) of a model."""
    return {"val_error": evaluate(model, data.val)["error"], "test_error": evaluate(model, data.test)["error"]}


def build_optimizer(model: nn.Module, method: TrainingHooks, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Model parameters (the method may set their lr) plus the method's own groups."""
    model_lr = method.model_lr() or cfg.lr
    groups = [{"params": method.trainable(model), "lr": model_lr, "weight_decay": cfg.weight_decay}]
    groups += [{"weight_decay": 0.0, **g} for g in method.parameters()]
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=model_lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=model_lr)


def lr_factor(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Multiplier of every group's initial lr at (epoch, step): linear warm-up, then cosine or step decay.

    >>> lr_factor(TrainConfig(epochs=10, lr_schedule="cosine"), 5, 0, 100)
    0.5
    """
    progress = epoch + step / max(steps_per_epoch, 1)
    if cfg.warmup_epochs and progress < cfg.warmup_epochs:
        return (progress + 1 / max(steps_per_epoch, 1)) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * min((progress - cfg.warmup_epochs) / span, 1.0)))
    if cfg.lr_schedule == "step":
        return cfg.lr_step_gamma ** (epoch // cfg.lr_step_epochs)
    return 1.0


# --- the loop ----------------------------------------------------------------------------


def _epoch_batches(data: DataBundle, cfg: TrainConfig, batch_size: int, epoch: int, dist: Distributed | None):
    seed = cfg.seed * 100003
    if dist is None:
        return batches(data.train, batch_size, shuffle=True, seed=seed + epoch, augment=data.augment)
    return dist.batches(data.train, batch_size, seed=seed, epoch=epoch, augment=data.augment)


def _steps_per_epoch(n: int, batch_size: int, dist: Distributed | None) -> int:
    return dist.steps(n, batch_size) if dist is not None else math.ceil(n / batch_size)


def _train_epoch(net, model, data: DataBundle, cfg: TrainConfig, batch_size: int, method, optimizer, epoch, bar, dist,
                 distill: Distillation | None = None):  # fmt: skip
    """One epoch; ``net`` is what the forward runs (``model`` itself, or it inside DDP), the hooks see ``model``."""
    net.train()
    steps = _steps_per_epoch(len(data.train), batch_size, dist)
    # The method's own parameters (every group after the model's) are outside DDP: averaged by hand.
    outside = [p for g in optimizer.param_groups[1:] for p in g["params"]]
    device = _device_of(model)
    totals = {"loss": 0.0, "task_loss": 0.0, "penalty": 0.0}
    seen = 0
    for step, (x, y) in enumerate(_epoch_batches(data, cfg, batch_size, epoch, dist)):
        x, y = x.to(device), y.to(device)
        factor = lr_factor(cfg, epoch, step, steps)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        logits = net(x)
        task = F.cross_entropy(logits, y)
        kd = distill.loss(x, logits) if distill is not None else None
        penalty = _sum_terms(method.penalty(model), method.extra_loss(model, x, y, logits), kd)
        loss = task if penalty is None else task + penalty
        if not torch.isfinite(loss):
            raise TrainingDiverged(_divergence_message(method, epoch, step, task, penalty))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: the model's gradients are averaged over the ranks here
        if dist is not None:
            dist.average_gradients(outside)
        if cfg.grad_clip:  # the model's own weights (group 0), as the reference clips model.parameters()
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], cfg.grad_clip)
        optimizer.step()
        method.after_step(model, TrainContext(optimizer, epoch, step, steps, cfg.epochs))
        n, value = len(y), float(loss.detach())
        seen += n
        totals["loss"] += value * n
        totals["task_loss"] += float(task.detach()) * n
        totals["penalty"] += (float(penalty.detach()) if penalty is not None else 0.0) * n
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    if dist is not None:  # the epoch's means over every rank's examples
        *sums, seen = dist.sum([*totals.values(), seen])
        totals = dict(zip(totals, sums, strict=True))
    return {k: v / max(seen, 1) for k, v in totals.items()}


def _sum_terms(*terms: torch.Tensor | None) -> torch.Tensor | None:
    present = [t for t in terms if t is not None]
    return sum(present[1:], present[0]) if present else None


def _divergence_message(method: TrainingHooks, epoch: int, step: int, task, penalty) -> str:
    hint = method.divergence_hint()
    values = f"task loss {float(task.detach()):.4g}"
    values += f", penalty {float(penalty.detach()):.4g}" if penalty is not None else ""
    return (
        f"training diverged in epoch {epoch + 1}, batch {step + 1}: the loss is not finite ({values}). "
        f"{hint or 'Likely cause: a learning rate that is too high.'} The last good checkpoint is kept."
    )


def fit(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    *,
    method: TrainingHooks | None = None,
    run: RunDir | None = None,
    phase: str = "pretrain",
    resume: bool = False,
    batch_size: int = 128,
    progress: bool = True,
    history: list[dict[str, Any]] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    dist: Distributed | None = None,
    distill: Distillation | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, with a method's hooks if one is given.

    ``history`` holds earlier rows (e.g. the pretraining curve) that metrics.csv keeps in front. With
    ``dist`` (a ``torchrun`` launch) the training is data-parallel, ``batch_size`` the global batch; only
    rank 0 writes into ``run``, shows progress and calls ``on_epoch``, every rank reads the checkpoint.
    With ``distill`` its term (train/distill.py) joins the method's penalty in the loss and in the ``penalty``
    column.
    """
    method = method or TrainingHooks()
    main = dist is None or dist.is_main
    optimizer = build_optimizer(model, method, cfg)
    start, rows = _starting_point(run, resume, model, optimizer, method, phase, history)
    steps = _steps_per_epoch(len(data.train), batch_size, dist)
    net = dist.wrap(model) if dist is not None else model
    with tqdm(
        total=steps * max(cfg.epochs - start, 0),
        disable=not (progress and main),
        desc=phase,
        unit="batch",
        mininterval=0.5,
        leave=False,
    ) as bar:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            train_stats = _train_epoch(net, model, data, cfg, batch_size, method, optimizer, epoch, bar, dist, distill)
            seconds = time.perf_counter() - t0
            if dist is not None:
                dist.broadcast_buffers(model)
            method.on_epoch_end(model, TrainContext(optimizer, epoch, steps - 1, steps, cfg.epochs))
            if dist is not None:
                dist.check_identical(_training_state(model, method), f"after epoch {epoch + 1}")
            row = {"phase": phase, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_stats}
            rows.append({**row, **_evaluated(model, data, cfg.eval_test, method, dist), "seconds": seconds})
            if not main:
                continue
            if run is not None:
                run.write_metrics(rows)
                save_checkpoint(run, model, optimizer, method, epoch=epoch, phase=phase, history=rows)
            if on_epoch is not None:
                on_epoch(epoch, model)
            if progress:
                tqdm.write(_epoch_line(rows[-1], method.progress_keys))
    return FitResult(model, rows)


def _starting_point(
    run: RunDir | None,
    resume: bool,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: TrainingHooks,
    phase: str,
    history: list[dict[str, Any]] | None,
) -> tuple[int, list[dict[str, Any]]]:
    """The first epoch to train and the rows so far: from the checkpoint when resuming, else epoch 0."""
    if resume and run is None:
        raise RunDirError("resuming needs the run directory that holds the checkpoint")
    if resume and has_checkpoint(run):  # interrupted before its first checkpoint: start from epoch 0
        restored = load_checkpoint(run, model, optimizer, method, phase=phase)
        return restored["epoch"] + 1, restored["history"]
    return 0, list(history or [])


def _evaluated(
    model: nn.Module, data: DataBundle, eval_test: bool, method: TrainingHooks, dist: Distributed | None
) -> dict[str, Any]:
    """An epoch's evaluation columns: validation (and test) error, then the method's own metrics."""
    row = {"val_error": evaluate(model, data.val, dist=dist)["error"]}
    if eval_test:
        row["test_error"] = evaluate(model, data.test, dist=dist)["error"]
    return {**row, **method.epoch_metrics(model)}


def _training_state(model: nn.Module, method: TrainingHooks) -> dict[str, Any]:
    """What every rank must hold alike: the model's state and the method's (masks, duals, mixture...)."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return state | {f"method.{k}": v for k, v in method.state_dict().items()}


def _epoch_line(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    parts = [f"{row['phase']} epoch {row['epoch']}", f"loss {row['loss']:.4f}", f"val err {row['val_error']:.2f}%"]
    if "test_error" in row:
        parts.append(f"test err {row['test_error']:.2f}%")
    for key in keys:
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    parts.append(f"{row['seconds']:.1f}s")
    return " | ".join(parts)
