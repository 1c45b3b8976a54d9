"""Soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017) as a Method.

Retraining minimises, per mini-batch (docs/methods.md#sws-loss)::

    loss = mean cross-entropy + (tau / N) * L_C,   L_C = -log p(w) - log p(hyper-priors)

with N the number of training examples and L_C evaluated on *all* covered
weights at every step.

How tau maps to the published values. Multiplying the mini-batch loss by N gives
the full-data objective -log p(T|X,w) + tau·L_C, which is the paper's eq. 6 with
the likelihood summed over the training set: our tau *is* the paper's tau, for
any batch size and data-set size. The Keras tutorial uses exactly this form
(Keras ``loss_weights`` of tau/N with tau = 0.003, N = 60,000); the ATDL2
reproduction tuned tau to 4.4e-3 to 5e-3 in the same form. The paper's text
says "tau = 0.05, similar to Nowlan & Hinton" without stating how the likelihood
is normalised: read with a summed likelihood it is ``--tau 0.05`` here (a 10x
stronger prior than the reproductions: more pruning, more error); read with a
per-example mean likelihood it would be 0.05/N here, too weak to prune anything.
The default, 5e-3, is the value the reproductions of Table 1 converge on.

The mixture's own parameters get their own Adam groups (paper Sec. 4.2; tutorial
rates): weights 5e-4, means 1e-4, log-precisions 3e-3, mixing logits 3e-3.
After retraining, :meth:`SoftWeightSharing.finalize` merges near-identical
components (paper eq. 8) and sets each weight to the mean of its most
responsible component (MAP, paper Alg. 1); component 0 becomes the exact zero.
The prior prunes weights one at a time, so it leaves some that can never matter
(e.g. fc2 weights reading fc1 units with no input left); ``remove_dead`` has the
compression pipeline drop them, which leaves the network's function unchanged
(:func:`weightshare.finish.deadweights.remove_dead_weights`; not in the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from weightshare.core.coverage import CoverageRule
from weightshare.core.quantized import QuantizedModel
from weightshare.methods.base import FigureSpec, Method, TrainContext
from weightshare.methods.sws.config import SWSConfig
from weightshare.methods.sws.prior import MixtureConfig, MixturePrior

__all__ = ["SoftWeightSharing"]


# The records a soft weight-sharing run leaves in its run directory (its figures read them back).
MIXTURE_FINAL = "mixture_final.json"
MIXTURE_MERGED = "mixture_merged.json"
MIXTURE_EPOCHS = "mixture_epochs"
_TRACKED = ("means", "sigmas", "precisions", "pis")  # what each epoch's record keeps of the mixture


def mixture_epoch_record(epoch: int) -> str:
    """The record name of the mixture after retraining epoch ``epoch`` (1-based; 0 = before).

    >>> mixture_epoch_record(7)
    'mixture_epochs/epoch_0007.json'
    """
    return f"{MIXTURE_EPOCHS}/epoch_{epoch:04d}.json"


class SoftWeightSharing(Method):
    """A Gaussian-mixture prior learned jointly with the weights, then hard quantization.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sws = SoftWeightSharing(net, SWSConfig(num_components=5), n_train=100)
    >>> float(sws.penalty(net).detach()) != 0.0
    True
    >>> q = sws.finalize(net)
    >>> sorted(q.quantized), q.codebooks[0][0].item()
    (['0.weight', '2.weight'], 0.0)
    """

    name = "sws"
    progress_keys = ("sparsity", "tau")

    def __init__(self, model: nn.Module, config: SWSConfig, n_train: int) -> None:
        if n_train <= 0:
            raise ValueError(f"n_train must be positive, got {n_train}")
        self.config = config
        self.n_train = n_train
        self.coverage = CoverageRule(config.include_biases, config.cover_pattern, exclude=config.cover_exclude).select(
            model
        )
        self.covered = self.coverage.covered
        mixture_fields = {f.name for f in dataclasses.fields(MixtureConfig)}
        mixture_cfg = MixtureConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k in mixture_fields})
        self.prior = MixturePrior([p.detach() for p in self.covered.values()], mixture_cfg)
        self.prior.to(next(iter(self.covered.values())).device)  # the mixture where the weights are
        self.prior.names = list(self.covered)
        self.epoch = 0
        self.history: list[torch.Tensor] = []  # per epoch: the mixture's _TRACKED rows (float64)

    # --- hooks ------------------------------------------------------------------------
    def model_lr(self) -> float:
        return self.config.lr_w

    def parameters(self) -> list[dict[str, Any]]:
        c = self.config
        groups = [
            {"params": [self.prior.means], "lr": c.lr_means},
            {"params": [self.prior.log_precisions], "lr": c.lr_precisions},
            {
                "params": [p for n, p in self.prior.named_parameters() if n not in ("means", "log_precisions")],
                "lr": c.lr_mixing,
            },
        ]
        return [g for g in groups if g["params"]]

    def tau_now(self) -> float:
        """tau with its linear warm-up over the first ``tau_warmup_epochs`` epochs."""
        warm = self.config.tau_warmup_epochs
        return self.config.tau * (min(1.0, (self.epoch + 1) / warm) if warm else 1.0)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        loss = self.prior.complexity_loss(list(self.covered.values()))
        return loss * (self.tau_now() / self.n_train)

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        epoch = ctx.epoch
        self.epoch = epoch + 1
        snapshot = self.prior.to_json()
        self.history.append(torch.tensor([snapshot[key] for key in _TRACKED], dtype=torch.float64))

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        weights = list(self.covered.values())
        assigned = self.prior.assign(weights, rule=self.config.assign)
        zeros = sum(int((a == 0).sum()) for a in assigned)
        total = sum(a.numel() for a in assigned)
        pis = self.prior.pis()
        return {
            "tau": self.tau_now(),
            "complexity_loss": float(self.prior.complexity_loss(weights)),
            "sparsity": zeros / max(total, 1),
            "components": int((pis[1:] > 1e-3).sum()) + 1,
        }

    def records(self) -> dict[str, Any]:
        """The mixture after every epoch, at the end, and merged as ``finalize`` uses it (paper eq. 8)."""
        out: dict[str, Any] = {
            mixture_epoch_record(epoch): {"epoch": epoch, **dict(zip(_TRACKED, row.tolist(), strict=True))}
            for epoch, row in enumerate(self.history, start=1)
        }
        out[MIXTURE_FINAL] = self.prior.to_json()
        merged = self.prior.merged(self.config.merge_kl)
        out[MIXTURE_MERGED] = {
            "means": merged.means.tolist(),
            "sigmas": merged.variances.sqrt().tolist(),
            "pis": merged.pis.tolist(),
        }
        return out

    @classmethod
    def figures(cls) -> dict[str, FigureSpec]:
        """The mixture and its dynamics, and the scatter coloured by mixture component (paper Figure 2)."""
        from weightshare.methods.sws.figures import MixtureFigures  # matplotlib: only when figures are drawn

        return MixtureFigures(final=MIXTURE_FINAL, epochs=MIXTURE_EPOCHS).specs()

    @classmethod
    def collapse_hint(cls) -> str:
        return (
            "the weights have not settled on the mixture components; retrain longer (--epochs), "
            "raise --tau, or start from a better pretrained model"
        )

    def divergence_hint(self) -> str:
        return (
            "Likely cause: mixture collapse (a component's variance went to 0); keep the Gamma hyper-priors on, "
            "lower --lr-precisions or --tau."
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"prior.{k}": v for k, v in self.prior.state_dict().items()}
        # The mixture history as one tensor: a checkpoint stays small however many epochs have run.
        k = self.prior.all_means().numel()
        history = torch.stack(self.history) if self.history else torch.zeros(0, len(_TRACKED), k, dtype=torch.float64)
        state.update({"epoch": self.epoch, "history": history})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("prior.")})
        self.epoch = int(state.get("epoch", 0))
        history = state.get("history")
        self.history = list(history.unbind(0)) if isinstance(history, torch.Tensor) else []

    def coverage_reasons(self) -> dict[str, str]:
        reasons = super().coverage_reasons()
        for name in set(self.covered) - set(self._quantized_names()):
            reasons[name] = "under the prior while training, the last covered layer left dense (quant_skip_last)"
        return reasons

    def _quantized_names(self) -> list[str]:
        names = list(self.covered)
        return names[: -self._last_layer_size(names)] if self.config.quant_skip_last else names

    def finalize(self, model: nn.Module) -> QuantizedModel:
        names = self._quantized_names()
        return self.prior.quantize(model, rule=self.config.assign, kl_threshold=self.config.merge_kl, names=names)

    def _last_layer_size(self, names: list[str]) -> int:
        """Number of covered tensors of the last covered module (weight, and bias if covered)."""
        last_module = names[-1].rsplit(".", 1)[0]
        return sum(1 for n in names if n.rsplit(".", 1)[0] == last_module)
