"""The finishing stages in order: QuantizedModel (+ model, data) -> QuantizedModel, after any method.

A method's ``finalize`` ends in the common result; what follows belongs to the pipeline,
not to the method, and is driven by the ``[finish]`` section (:class:`FinishConfig`):

1. dead-weight removal (lossless: the network computes exactly the same function);
2. quantization of the float parameters left dense (biases, norms), each into a codebook of its own;
3. codebook fine-tuning with every index fixed (Han et al. 2016, Sec. 3.3), which then trains
   those codebooks too;
4. float16 storage: the codebook values and float32 dense tensors rounded as the file's float16 flag
   stores them, so that the model handed on is exactly the one the file gives back.

When data is given, the model is evaluated before the lossy stages (``errors["snapped"]``: the
method's hard assignment) and after the quantization of step 2 (``errors["dense_quantized"]``),
so the cost of each is visible beside the decoded model's error. ``errors["pruned"]`` splits the hard
assignment's cost in two: the trained float network with only its zero-assigned weights set to zero. A
large step from retrained to pruned means the network still uses weights the assignment calls zero (the
zero spike is too wide for it); from pruned to snapped, that the surviving weights sit far from their
shared values.

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

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from weightshare.codec import float16_rounded
from weightshare.core.quantized import QuantizedModel
from weightshare.data.datasets import DataBundle
from weightshare.finish.codebook_tuning import tune_codebooks
from weightshare.finish.config import FinishConfig
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.finish.densequant import quantize_dense_params
from weightshare.train.config import TrainConfig
from weightshare.train.loop import evaluate_model

__all__ = ["Finished", "pruned_error", "run_finishing"]


@dataclass
class Finished:
    """What the finishing stages made: the final QuantizedModel and what each stage did."""

    qmodel: QuantizedModel
    removed: dict[str, int] = field(default_factory=dict)
    dense_quantized: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> values, levels, change
    dense_param_bits: int = 0
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # "pruned", "snapped", "dense_quantized"
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows, fine-tuning epochs included

    def summary(self) -> dict[str, Any]:
        """The stages' entries of report.json's ``method_summary``."""
        out: dict[str, Any] = {"dead_weights_removed": self.removed} if self.removed else {}
        if self.dense_param_bits:
            out["dense_params_quantized"] = {"bits": self.dense_param_bits, "tensors": self.dense_quantized}
        return out


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
    if data is not None:
        finished.errors["pruned"] = pruned_error(model, qmodel, data)
    if config.remove_dead:
        finished.qmodel, finished.removed = remove_dead_weights(model, finished.qmodel, data.train.x[:1])
    if data is not None and (config.dense_param_bits or config.codebook_epochs):
        finished.errors["snapped"] = evaluate_model(finished.qmodel.load_into(model), data)
    if config.dense_param_bits:
        finished.dense_param_bits = config.dense_param_bits
        finished.qmodel, finished.dense_quantized = quantize_dense_params(
            model, finished.qmodel, config.dense_param_bits
        )
        if data is not None:
            finished.errors["dense_quantized"] = evaluate_model(finished.qmodel.load_into(model), data)
    if config.codebook_epochs:
        # Short, so it keeps no checkpoint of its own: an interrupted run resumes from the retraining's.
        finished.qmodel, finished.rows = tune_codebooks(
            model, finished.qmodel, data, train, epochs=config.codebook_epochs, lr=config.codebook_lr,
            batch_size=batch_size, progress=progress, history=history,
        )  # fmt: skip
    if config.float16:
        finished.qmodel = float16_rounded(finished.qmodel)
    return finished


@torch.no_grad()
def pruned_error(model: nn.Module, qmodel: QuantizedModel, data: DataBundle) -> dict[str, float]:
    """Errors of ``model`` as trained, but with every weight that ``qmodel`` assigns to zero set to zero.

    A copy is pruned (as export's ``decoded_copy`` does), so ``model`` is left as it was.
    """
    pruned = copy.deepcopy(model)
    state = pruned.state_dict()
    for name, qt in qmodel.quantized.items():
        state[name].mul_((qt.indices != 0).to(state[name].dtype))
    return evaluate_model(pruned, data)
