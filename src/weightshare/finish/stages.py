"""The finishing stages in order: QuantizedModel (+ model, data) -> QuantizedModel, after any method.

A method's ``finalize`` ends in the common result; what follows belongs to the pipeline,
not to the method, and is driven by the ``[finish]`` section (:class:`FinishConfig`):

1. dead-weight removal (lossless: the network computes exactly the same function);
2. codebook fine-tuning with every index fixed (Han et al. 2016, Sec. 3.3).

>>> import torch
>>> from torch import nn
>>> from weightshare.core.quantized import QuantizedModel
>>> net = nn.Linear(2, 1)
>>> codebook, index = torch.tensor([0.0, 0.5]), torch.tensor([[1, 0]])
>>> q = QuantizedModel.from_assignments(net.state_dict(), {"weight": index}, [codebook])
>>> finished = run_finishing(net, q, None, FinishConfig(), None)
>>> finished.qmodel is q, finished.summary()
(True, {})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from weightshare.core.quantized import QuantizedModel
from weightshare.data.datasets import DataBundle
from weightshare.finish.codebook_tuning import tune_codebooks
from weightshare.finish.config import FinishConfig
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.train.config import TrainConfig
from weightshare.train.loop import evaluate_model

__all__ = ["Finished", "run_finishing"]


@dataclass
class Finished:
    """What the finishing stages made: the final QuantizedModel and what each stage did."""

    qmodel: QuantizedModel
    removed: dict[str, int] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. "snapped": before fine-tuning
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows, fine-tuning epochs included

    def summary(self) -> dict[str, Any]:
        """The stages' entries of report.json's ``method_summary``."""
        return {"dead_weights_removed": self.removed} if self.removed else {}


def run_finishing(
    model: nn.Module,
    qmodel: QuantizedModel,
    data: DataBundle | None,
    config: FinishConfig,
    train: TrainConfig | None,
    *,
    batch_size: int = 128,
    progress: bool = False,
    history: list[dict[str, Any]] | None = None,
) -> Finished:
    """Run every stage ``config`` turns on, in order, on ``qmodel`` (loaded into ``model`` as needed)."""
    finished = Finished(qmodel)
    if config.remove_dead:
        finished.qmodel, finished.removed = remove_dead_weights(model, finished.qmodel, data.train.x[:1])
    if config.codebook_epochs:
        finished.errors["snapped"] = evaluate_model(finished.qmodel.load_into(model), data)
        # Short, so it keeps no checkpoint of its own: an interrupted run resumes from the retraining's.
        finished.qmodel, finished.rows = tune_codebooks(
            model, finished.qmodel, data, train, epochs=config.codebook_epochs, lr=config.codebook_lr,
            batch_size=batch_size, progress=progress, history=history,
        )  # fmt: skip
    return finished
