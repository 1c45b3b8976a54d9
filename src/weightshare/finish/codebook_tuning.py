"""Fine-tune the shared values of a QuantizedModel, every assignment fixed.

This is Deep Compression's *trained quantization* (Han, Mao & Dally 2016, Sec. 3.3)
applied to any method's result, through the same tie as Deep Compression's centroids
(:class:`weightshare.core.codebook.TiedCodebooks`): the forward pass uses ``W = C[I]``,
and the gradient of a shared value is the sum of the gradients of the weights that use it,

    dL/dC_k = sum over {(i, j) : I_ij = k} of dL/dW_ij,

while the dense tensors (the biases) train as usual. Biases quantized by the stage before
(``[finish] dense_param_bits``, finish/densequant.py) are quantized tensors like any other:
their own codebooks train, their indices stay. Entry 0 of every codebook, the
exact zero, gets no gradient, so pruned weights stay pruned and no index changes: the
file's size does not grow (only the float values in it change).

Soft weight-sharing's paper ends at the hard assignment (Alg. 1): snapping each weight
to its component's mean costs accuracy (0.1 point on LeNet-5, benchmarks/RESULTS.md),
and a short fine-tuning of the few shared values and the biases wins most of it back.
It is therefore an explicit finishing stage (``[finish] codebook_epochs``), off by default
and usable after any method; soft weight-sharing's ``lenet5`` preset uses 3 epochs
(benchmarks/RESULTS.md shows the error with and without).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from weightshare.core.codebook import TiedCodebooks
from weightshare.core.quantized import QuantizedModel
from weightshare.data.datasets import DataBundle
from weightshare.train.config import TrainConfig
from weightshare.train.hooks import TrainContext, TrainingHooks
from weightshare.train.loop import fit

__all__ = ["CodebookTuning", "tune_codebooks"]


class CodebookTuning(TrainingHooks):
    """Train ``qmodel``'s codebooks and dense tensors inside ``model``; the indices stay fixed.

    Building it loads ``qmodel`` into ``model`` and ties every quantized weight to its codebook.

    >>> import torch
    >>> net = nn.Linear(2, 1)
    >>> cb = torch.tensor([0.0, 0.5])
    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([cb], {"weight": QuantizedTensor(torch.tensor([[1, 0]]))}, {"bias": torch.zeros(1)})
    >>> tuning = CodebookTuning(net, q, lr=0.1)
    >>> opt = torch.optim.SGD([{"params": tuning.trainable(net)}, *tuning.parameters()], lr=0.1)
    >>> net(torch.ones(1, 2)).sum().backward()
    >>> opt.step()
    >>> tuning.after_step(net, TrainContext(opt))
    >>> tuned = tuning.finalize(net)
    >>> [round(v, 3) for v in tuned.codebooks[0].tolist()], round(float(tuned.dense["bias"]), 3)
    ([0.0, 0.4], -0.1)
    """

    def __init__(self, model: nn.Module, qmodel: QuantizedModel, lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"codebook_lr must be > 0, got {lr}")
        qmodel.load_into(model)
        params = dict(model.named_parameters())
        missing = [n for n in qmodel.quantized if n not in params]
        if missing:
            raise KeyError(f"quantized tensors that are not parameters of the model: {missing}")
        self.qmodel, self.lr = qmodel, lr
        self.tied = TiedCodebooks(
            {n: params[n] for n in qmodel.quantized},
            {str(k): c for k, c in enumerate(qmodel.codebooks)},
            {n: qt.indices for n, qt in qmodel.quantized.items()},
            {n: str(qt.codebook) for n, qt in qmodel.quantized.items()},
        )
        self.tied.tie()
        self.codebooks = self.tied.parameters()  # in qmodel's order: codebooks[k] is qmodel.codebooks[k]

    def model_lr(self) -> float:
        return self.lr

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """The dense parameters only: the tied weights move through their codebook."""
        tied = {id(p) for p in self.tied.weights.values()}
        return [p for p in model.parameters() if p.requires_grad and id(p) not in tied]

    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": self.codebooks, "lr": self.lr}]

    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        self.tied.write()

    def remove_hooks(self) -> None:
        self.tied.remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return self.tied.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tied.load_state_dict(state)

    def finalize(self, model: nn.Module) -> QuantizedModel:
        """The tuned codebooks with the original indices, and the model's current dense tensors."""
        self.remove_hooks()
        state = model.state_dict()
        dense = {name: state[name].detach().clone() for name in self.qmodel.dense}
        codebooks = [c.detach().clone() for c in self.codebooks]
        return QuantizedModel(
            codebooks, dict(self.qmodel.quantized), dense, dict(self.qmodel.meta), self.qmodel.aliases
        )


def tune_codebooks(
    model: nn.Module,
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
