"""The Method protocol: how a compression method plugs into the one training loop.

A method is a small object with hooks (DESIGN.md, "The methods"). The training
loop in :mod:`weightshare.train.loop` calls them; a user can call the same hooks from
a loop of their own::

    method = SoftWeightSharing(model, config)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 5e-4}, *method.parameters()])
    for epoch in range(epochs):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y) + method.penalty(model)
            opt.zero_grad(); loss.backward(); opt.step()
            method.after_step(model)
        method.on_epoch_end(model, epoch)
    qmodel = method.finalize(model)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from weightshare.core.errors import ConfigError
from weightshare.core.quantized import QuantizedModel

__all__ = ["Method", "PlainTraining", "require_epochs"]


def require_epochs(epochs: int, needed: int, schedule: str, detail: str) -> None:
    """Refuse train epochs that differ from what a method's schedule of rounds needs.

    >>> require_epochs(6, 7, "the Deep Compression schedule", "2 x 3 + 1")
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'epochs' is 6 but the Deep Compression schedule needs 7 (2 x 3 + 1)
    """
    if epochs != needed:
        raise ConfigError(f"setting 'epochs' is {epochs} but {schedule} needs {needed} ({detail})")


class Method:
    """Base class: every hook does nothing, so ``Method()`` is plain training."""

    name = "plain"

    def parameters(self) -> list[dict[str, Any]]:
        """Extra optimizer parameter groups (each a dict with ``params`` and ``lr``)."""
        return []

    def model_lr(self) -> float | None:
        """Learning rate for the model's own parameters, if the method sets one."""
        return None

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The model parameters the optimizer should update (default: all)."""
        return [p for p in model.parameters() if p.requires_grad]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the mean task loss of each mini-batch, or None."""
        return None

    def extra_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor
    ) -> torch.Tensor | None:
        """A batch-dependent term (e.g. knowledge distillation from the pretrained model), or None."""
        return None

    def check_train(self, train: Any) -> None:
        """Refuse training settings the method cannot work with (e.g. epochs that miss its schedule)."""

    def summary(self) -> dict[str, Any]:
        """Method-specific results for report.json (e.g. learned per-layer bit widths)."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Projections / masks applied after each optimizer step."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Schedules (warm-ups, pruning or fixing rounds) at the end of an epoch."""

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """Extra columns for metrics.csv at the end of an epoch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-able values needed to resume (see train checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def finalize(self, model: nn.Module) -> QuantizedModel:
        raise NotImplementedError(f"method {self.name!r} does not produce a QuantizedModel")


class PlainTraining(Method):
    """No penalty, no projection: pretraining."""
