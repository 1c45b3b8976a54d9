"""The training loop's plug-in contract: hooks, and the context handed to them.

The one loop (:func:`weightshare.train.loop.fit`) knows nothing of any method: it
calls these hooks, in this order, and nothing else::

    groups = [{"params": hooks.trainable(model), "lr": hooks.model_lr() or lr}, *hooks.parameters()]
    for epoch ...:
        for step, (x, y) ...:
            loss = CE(model(x), y) + hooks.penalty(model) + hooks.extra_loss(model, x, y, logits)
            loss.backward(); optimizer.step()
            hooks.after_step(model, ctx)          # projections, masks, ties
        hooks.on_epoch_end(model, ctx)            # schedules: rounds, warm-ups
        row.update(hooks.epoch_metrics(model))    # metrics.csv columns

Every hook is declared here with a do-nothing default, so ``TrainingHooks()`` is
plain training. Compression methods (:class:`weightshare.methods.base.Method`) and
finishing stages (e.g. codebook fine-tuning) are both hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["TrainContext", "TrainingHooks"]


@dataclass
class TrainContext:
    """Where training stands when a hook is called: what ADMM's projections and the schedules need.

    ``epoch`` counts from 0 (the epoch running, or just finished in ``on_epoch_end``); ``step`` is the
    batch within it and ``global_step`` the batches since the start of the run. ``lr`` is the learning
    rate of the model's own parameter group at this step (after warm-up and decay).

    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    >>> TrainContext(opt, epoch=0, step=3, steps_per_epoch=10).lr
    0.1
    """

    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1
    epochs: int = 1

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def lr_of(self, param: torch.Tensor) -> float:
        """The current learning rate of the optimizer group that holds ``param``."""
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return float(group["lr"])
        raise ValueError("the optimizer in the training context does not update this parameter")

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def last_step_of_epoch(self) -> bool:
        return self.step == self.steps_per_epoch - 1


class TrainingHooks:
    """Every hook the training loop calls; each does nothing by default (plain training)."""

    #: metrics.csv columns that the per-epoch progress line also shows
    progress_keys: tuple[str, ...] = ()

    def parameters(self) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (each a dict with ``params`` and ``lr``)."""
        return []

    def model_lr(self) -> float | None:
        """Learning rate for the model's own parameters, if the hooks set one."""
        return None

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The model parameters the optimizer should update (default: all)."""
        return [p for p in model.parameters() if p.requires_grad]

    def check_train(self, train: Any) -> None:
        """Refuse training settings the hooks cannot work with (e.g. epochs that miss a schedule)."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the mean task loss of each mini-batch, or None.

        Under ``torchrun`` every rank adds it in full: DDP averages the gradients, so it counts once
        (:mod:`weightshare.train.distributed`); it must be the same on every rank (a function of the weights, the
        method's state and noise every rank draws alike), not of the batch: that is :meth:`extra_loss`.
        """
        return None

    def extra_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """A batch-dependent term (e.g. knowledge distillation from the pretrained model), or None."""
        return None

    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        """Projections, masks and ties applied after each optimizer step."""

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        """Schedules (warm-ups, pruning or fixing rounds) at the end of epoch ``ctx.epoch``."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra columns for metrics.csv at the end of an epoch."""
        return {}

    def divergence_hint(self) -> str:
        """What usually makes the loss diverge under these hooks (shown when it does)."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able values needed to resume (see the checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
