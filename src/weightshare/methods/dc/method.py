"""Deep Compression (Han, Mao & Dally, ICLR 2016) as a Method: prune, share, fine-tune the centroids.

One ``fit()`` run walks through the paper's first two stages (pruning, Sec. 2; trained quantization, Sec. 3;
docs/methods.md#dc-algorithm);
the third, entropy coding, is the codec's job (``model.wsz``), and the paper's
own size estimate is :func:`weightshare.report.accounting.deep_compression_estimate`.

Epoch schedule (``prune_rounds`` = R, ``prune_epochs`` = E, ``quant_epochs`` = Q;
the training loop must run exactly R·E + Q epochs, :attr:`DCConfig.total_epochs`,
which every preset sets; :meth:`DeepCompression.check_train` checks it):

1. **Iterative pruning** (Sec. 2, after Han 2015b). Round 1 prunes when the method
   is built (on the pretrained model); round r + 1 prunes at the end of epoch r·E.
   Each round is followed by E retraining epochs of the survivors: the gradient of
   a pruned weight is zeroed by a tensor hook and ``after_step`` re-applies the mask,
   so neither Adam/SGD momentum nor weight decay can move a pruned weight off 0.
2. **Trained quantization** (Sec. 3) at the end of epoch R·E: per layer, 1-D k-means
   (:func:`weightshare.core.kmeans.kmeans1d`, linear init by default, Sec. 3.2) on the
   non-zero weights with 2^b clusters (``bits_conv`` / ``bits_fc``, Sec. 5). For the
   Q remaining epochs the weights are tied to C[I]
   (:class:`weightshare.core.codebook.TiedCodebooks`): the weight's gradient hook adds
   dL/dW into the centroid gradient, ``dL/dC_k = sum of dL/dW over {I == k}`` (Sec.
   3.3, Fig. 3), and hands the weight a zero gradient; ``after_step`` writes
   W = C[I] back. Indices and mask stay frozen; biases keep training.

The metrics row of an epoch that ends a pruning round (or the pruning phase) is
evaluated *after* the next pruning (or k-means) step, so the curves show the damage
each step does and how retraining recovers it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from weightshare.core.codebook import TiedCodebooks, compact_codebook
from weightshare.core.coverage import CoverageRule
from weightshare.core.errors import ConfigError
from weightshare.core.kmeans import kmeans1d
from weightshare.core.quantized import QuantizedModel
from weightshare.methods.base import Method, TrainContext, require_epochs
from weightshare.methods.dc.config import DCConfig
from weightshare.methods.dc.pruning import (
    kept_schedule,
    magnitude_mask,
    per_layer,
    quality_schedule,
    threshold_mask,
)
from weightshare.train.config import TrainConfig

__all__ = ["DeepCompression", "quantize_layer", "layer_bits"]


def layer_bits(weight: torch.Tensor, config: DCConfig) -> int:
    """Index bits of a covered tensor: conv weights (ndim >= 3) use ``bits_conv``, the rest ``bits_fc``.

    >>> layer_bits(torch.zeros(20, 1, 5, 5), DCConfig(bits_conv=8, bits_fc=5))
    8
    """
    return config.bits_conv if weight.dim() >= 3 else config.bits_fc


def quantize_layer(
    weight: torch.Tensor, mask: torch.Tensor, bits: int, *, init: str = "linear", max_iter: int = 100, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the kept weights into at most 2^bits centroids (Sec. 3); pruned weights are no cluster.

    Returns ``(centroids, index)``: ``index`` is shaped like ``weight``, 0 where pruned and ``j + 1``
    for centroid ``j``, so ``cat([0], centroids)[index]`` is the quantized layer.

    >>> c, i = quantize_layer(torch.tensor([0.0, 1.0, 1.1, -2.0]), torch.tensor([False, True, True, True]), 1)
    >>> c, i
    (tensor([-2.0000,  1.0500]), tensor([0, 2, 2, 1]))
    """
    index = torch.zeros_like(weight, dtype=torch.int64)
    values = weight.detach()[mask]
    if values.numel() == 0:
        return weight.new_zeros(0), index
    result = kmeans1d(values, 2**bits, init=init, max_iter=max_iter, seed=seed)
    index[mask] = result.labels.reshape(-1) + 1
    return result.centroids.to(weight.dtype), index


class DeepCompression(Method):
    """Iterative magnitude pruning, then per-layer k-means weight sharing with trained centroids.

    Building the method prunes round 1 of the model in place (see the module docstring). The final
    codebooks hold 0 plus the used centroids (at most 2^b; here the small layer leaves one cluster empty).

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> dc = DeepCompression(net, DCConfig(kept=[0.5], prune_rounds=1, prune_epochs=0, bits_fc=2))
    >>> q = dc.finalize(net)
    >>> [round(row["nnz"] / row["numel"], 2) for row in q.summary()], [len(cb) for cb in q.codebooks]
    ([0.5, 0.5], [5, 4])
    """

    name = "dc"
    progress_keys = ("sparsity",)

    def __init__(self, model: nn.Module, config: DCConfig, n_train: int = 0) -> None:
        self.config = config  # checked once, by settings.validate (compress calls it)
        self.coverage = CoverageRule(pattern=config.cover_pattern, exclude=config.cover_exclude).select(model)
        self.covered = self.coverage.covered
        names = list(self.covered)
        self.bits = {n: layer_bits(p, config) for n, p in self.covered.items()}
        self.targets = per_layer(config.kept, names, "kept") if config.prune_by == "kept" else {}
        self.qualities = per_layer(config.quality, names, "quality") if config.prune_by == "std" else {}
        # Han 2015b: the threshold is s * std of the layer's (pretrained) weights, fixed for all rounds.
        self.stds = {n: float(p.detach().std()) if p.numel() > 1 else 0.0 for n, p in self.covered.items()}
        self.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.covered.items()}
        # The centroids (zero implied: index 0 is a pruned weight) are created up front so the one optimizer
        # of the loop knows them; they get no gradient (so no update) until the quantization epoch ties them.
        centroids = {n: p.new_zeros(2 ** self.bits[n]) for n, p in self.covered.items()}
        self.tied = TiedCodebooks(self.covered, centroids, zero_slot=False)
        self.epochs_done, self.rounds_done, self.quantized = 0, 0, False
        self._hooks = [p.register_hook(self._mask_hook(n)) for n, p in self.covered.items()]
        self._advance()

    @property
    def centroids(self) -> dict[str, nn.Parameter]:
        """Per layer its 2^b centroids as one trainable parameter; the layer is ``[0, C][I]``."""
        return self.tied.codebooks

    @property
    def index(self) -> dict[str, torch.Tensor]:
        """Per layer the index of every weight: 0 where pruned, ``j + 1`` for centroid ``j``."""
        return self.tied.indices

    # --- schedule -------------------------------------------------------------------------
    def _advance(self) -> None:
        """Run every pruning round / the quantization that is due after ``epochs_done`` epochs."""
        c = self.config
        while self.rounds_done < c.prune_rounds and self.epochs_done >= self.rounds_done * c.prune_epochs:
            self._prune_round(self.rounds_done)
            self.rounds_done += 1
        pruning_done = self.rounds_done == c.prune_rounds and self.epochs_done >= c.prune_rounds * c.prune_epochs
        if pruning_done and not self.quantized:
            self._quantize()

    @torch.no_grad()
    def _prune_round(self, r: int) -> None:
        c = self.config
        for n, p in self.covered.items():
            if c.prune_by == "kept":
                mask = magnitude_mask(p, kept_schedule(self.targets[n], c.prune_rounds)[r], self.masks[n])
            else:
                s = quality_schedule(self.qualities[n], c.prune_rounds)[r]
                mask = threshold_mask(p, s * self.stds[n], self.masks[n])
            self.masks[n] = mask
            p.masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def _quantize(self) -> None:
        c = self.config
        for n, p in self.covered.items():
            centroids, index = quantize_layer(
                p, self.masks[n], self.bits[n], init=c.kmeans_init, max_iter=c.kmeans_iter, seed=c.kmeans_seed
            )
            self.tied.set_codebook(n, centroids)
            self.tied.set_indices({n: index})
        self.tied.tie()
        self.quantized = True

    def check_train(self, train: TrainConfig) -> None:
        """Refuse a training length that does not match the schedule (call before training)."""
        check_epochs(self.config, train)

    # --- hooks ----------------------------------------------------------------------------------------------
    def _mask_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        # Pruned connections get no gradient (Han 2015b Sec. 3.3). Once quantized, the tie's hook runs after
        # this one and gives the weight a zero gradient anyway; the pruned weights are index 0, no cluster.
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return torch.where(self.masks[name], grad, torch.zeros_like(grad))

        return hook

    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": self.tied.parameters(), "lr": self.config.lr_centroids}]

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        # The optimizer may have moved masked / tied weights (momentum, weight decay): project back.
        if self.quantized:
            self.tied.write()
            return
        for n, p in self.covered.items():
            p.masked_fill_(~self.masks[n], 0.0)

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        epoch = ctx.epoch
        self.epochs_done = epoch + 1
        self._advance()

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return {
            "sparsity": 1.0 - kept / max(total, 1),
            "prune_round": float(self.rounds_done),
            "quantized": float(self.quantized),
        }

    def remove_hooks(self) -> None:
        """Detach the gradient hooks from the model (e.g. to train it further without the method)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.tied.remove_hooks()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epochs_done": self.epochs_done,
            "rounds_done": self.rounds_done,
            "quantized": self.quantized,
            "stds": dict(self.stds),
            **self.tied.state_dict(),
        }
        state.update({f"mask.{n}": self.masks[n] for n in self.covered})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.rounds_done = int(state["rounds_done"])
        self.quantized = bool(state["quantized"])
        self.stds = {n: float(v) for n, v in state["stds"].items()}
        for n, p in self.covered.items():
            self.masks[n] = state[f"mask.{n}"].to(device=p.device, dtype=torch.bool)
        # Checkpoints written before the centroids moved into TiedCodebooks call them "centroids.<layer>".
        old = {f"centroids.{n}": f"codebook.{n}" for n in self.covered}
        self.tied.load_state_dict({old.get(k, k): v for k, v in state.items()})
        if self.quantized:
            self.tied.tie()

    # --- result ---------------------------------------------------------------------------------------------------
    def finalize(self, model: nn.Module) -> QuantizedModel:
        """One codebook per layer: entry 0 is the exact zero, then the layer's *used* centroids."""
        if not self.quantized:
            raise ConfigError(
                f"Deep Compression stopped before its quantization step: the schedule needs "
                f"{self.config.total_epochs} epochs (prune_rounds x prune_epochs + quant_epochs) but training ran "
                f"{self.epochs_done}; set the train setting 'epochs' to {self.config.total_epochs}"
            )
        codebooks, assignments, codebook_of = [], {}, {}
        for i, n in enumerate(self.covered):
            # Slot order, not value order (sort=False): trained centroids may cross, and files keep their order.
            codebook, index = compact_codebook(self.centroids[n], self.index[n], sort=False)
            codebooks.append(codebook)
            assignments[n] = index
            codebook_of[n] = i
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return QuantizedModel.from_assignments(state, assignments, codebooks, codebook_of)


def check_epochs(config: DCConfig, train: TrainConfig) -> None:
    """The train epochs must equal the schedule's R·E + Q.

    >>> schedule = DCConfig(prune_rounds=2, prune_epochs=3, quant_epochs=1)
    >>> check_epochs(schedule, TrainConfig(epochs=6))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'epochs' is 6 but the Deep Compression schedule needs 7 (...)
    """
    detail = (
        f"prune_rounds {config.prune_rounds} x prune_epochs {config.prune_epochs} + quant_epochs {config.quant_epochs}"
    )
    require_epochs(train.epochs, config.total_epochs, "the Deep Compression schedule", detail)
