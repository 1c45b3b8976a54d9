"""Sparsity-quantization joint learning (Yang, Gui, Zhu & Liu, CVPR 2020) as a Method.

The covered weights W (all conv / linear weights) must satisfy, at the end, a model-size budget
``sum_l b_l * nnz_l <= S`` with ``S = bit_budget * sum_l ceil(nnz_budget * n_l)`` bits, where each
layer's non-zeros take at most 2^b_l distinct values and b_l is in {bwlb..bwub}; per-layer sparsity and
bit widths are learned. ADMM splits W (trained, sparse) from V (its quantized duplicate) with the
scaled dual U (docs/methods.md#admm-algorithm, as the authors' ``train.py`` runs it):

* **start** (pretrained model): one sparse projection, one quantization projection + dual update;
* **sparse projection** every ``projint`` batches (0 = at the last batch of each epoch): keep the
  weights with the largest w²/b_l while sum of b_l <= S (:func:`weightshare.methods.admm.knapsack.prune_to_budget`);
  pruned weights are not masked afterwards, they may regrow until the next projection (as in the code);
* **quantization projection** every ``dualint`` batches (same default): for every layer and every b,
  k-means of the non-zeros of X = W + U into 2^b free centres plus a fixed 0 gives the distortion
  D_l(b); the greedy multiple-choice knapsack (:func:`weightshare.methods.admm.knapsack.mckp_greedy`) picks b_l under
  ``sum_l b_l * nnz_l <= S``; then V = Q(X) and U += W - V;
* **primal step**: the loop's SGD step on the task loss, with the augmented term rho/2 ||W - V + U||²
  added to the loss (:meth:`ADMM.penalty`) or, with ``prox``, applied in closed form after the step:
  W <- (W + lr·rho·(V - U)) / (1 + lr·rho). The loop's weight decay acts on every trainable tensor; the
  reference decays only ``*.weight`` tensors (biases of LeNets: a negligible difference);
* optional **fine-tuning** in the last ``finetune_epochs`` epochs with the mask and bit widths fixed (the
  authors' ``finetune.py``; see :class:`_FineTune`).

:meth:`ADMM.finalize` gives one codebook per layer (entry 0 = 0.0) with at most 2^b_l non-zero values.
The paper counts only those values (``values_only_cr`` in report.json); the file-based rate counts the
positions too, which dominate at 0.5 % density (docs/methods.md#accounting-why). The loop's per-epoch
``val_error`` is that of W (sparse, not yet quantized); the reference evaluates a re-quantized copy instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from weightshare.core.codebook import SharedWeights, compact_codebook
from weightshare.core.coverage import CoverageRule
from weightshare.core.errors import ConfigError
from weightshare.core.quantized import QuantizedModel
from weightshare.methods.admm.config import AdmmConfig
from weightshare.methods.admm.knapsack import prune_to_budget
from weightshare.methods.admm.quant import (
    masked_codebook,
    masked_quantize,
    quantization_projection,
    refine_codebook,
    refine_masked_codebook,
    zero_codebook,
    zero_quantize,
)
from weightshare.methods.base import Method, TrainContext
from weightshare.train.config import TrainConfig

__all__ = ["ADMM", "model_size_budget"]

# finetune.py refreshes the codebooks with 5 Lloyd iterations from the current centres.
REFRESH_ITERS = 5


# --- budget and per-layer quantization ----------------------------------------------------------------------------
def model_size_budget(numels: list[int], nnz_budget: float, bit_budget: float) -> float:
    """The model-size budget S in bits: ``bit_budget * sum_l ceil(nnz_budget * n_l)`` (Yang's train.py).

    >>> model_size_budget([430, 1000], 0.01, 3)  # ceil(4.3) + ceil(10) = 15 non-zeros x 3 bits
    45.0
    """
    return float(bit_budget) * sum(math.ceil(nnz_budget * n) for n in numels)


class _FineTune:
    """Fine-tuning with fixed mask and bit widths (Yang's ``finetune.py``), straight-through.

    The model's parameter holds the quantized layer C[I] for the forward pass; the float shadow weights
    live here. After each optimizer step the step's change is moved onto the shadow (straight-through:
    the gradient taken at C[I] updates the float weights), the shadow is re-masked and re-quantized.
    Weight decay therefore acts on C[I], not on the shadow as in the reference: lr·wd·(quantization error)
    per step, far below the step itself.

    As in the reference, a weight of the mask whose nearest level is the fixed 0 is stored as 0: on LeNet-5 at
    2-3 bits about a quarter of the budget's non-zeros end there, unused. With ``keep_nonzeros`` the codebook
    has no centre at 0 for them (k-means of the masked weights alone) and each keeps its nearest non-zero level,
    so the fine-tuned model spends the whole budget."""

    def __init__(
        self,
        covered: dict[str, nn.Parameter],
        masks: dict[str, torch.Tensor],
        shadow: dict[str, torch.Tensor],
        codebooks: dict[str, torch.Tensor],
        keep_nonzeros: bool = False,
    ) -> None:
        self.masks, self.shadow, self.keep_nonzeros = masks, shadow, keep_nonzeros
        # Per layer its codebook [0, centres] and indices, and W = C[I] into the model: the bookkeeping of every
        # fixed-assignment stage. The codebooks are not trained as parameters (no tie): they follow the shadow.
        self.shared = SharedWeights(covered, codebooks)

    @classmethod
    def start(
        cls, covered: dict[str, nn.Parameter], bits: dict[str, int], max_iter: int, keep_nonzeros: bool = False
    ) -> _FineTune:
        """Fix the current non-zeros and bit widths; codebooks by k-means of the non-zeros (fixed 0)."""
        masks = {n: p.detach() != 0 for n, p in covered.items()}
        if keep_nonzeros:
            codebooks = {n: masked_codebook(p, masks[n], bits[n], max_iter) for n, p in covered.items()}
        else:
            codebooks = {n: zero_codebook(p, bits[n], max_iter) for n, p in covered.items()}
        tune = cls(covered, masks, {n: p.detach().clone() for n, p in covered.items()}, codebooks, keep_nonzeros)
        tune.write()
        return tune

    @classmethod
    def from_state(
        cls, state: dict[str, Any], covered: dict[str, nn.Parameter], keep_nonzeros: bool = False
    ) -> _FineTune:
        masks = {n: state[f"finetune.mask.{n}"].to(p.device).bool() for n, p in covered.items()}
        shadow = {n: state[f"finetune.shadow.{n}"].to(p.device) for n, p in covered.items()}
        tune = cls(covered, masks, shadow, {n: p.new_zeros(1) for n, p in covered.items()}, keep_nonzeros)
        tune.shared.load_state_dict(state, prefix="finetune.")
        return tune

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"finetune.mask.{n}": m for n, m in self.masks.items()}
        state.update({f"finetune.shadow.{n}": t for n, t in self.shadow.items()})
        return state | self.shared.state_dict(prefix="finetune.")

    @torch.no_grad()
    def write(self) -> None:
        """Quantize the shadow weights and put C[I] into the model."""
        for n, codebook in self.shared.codebooks.items():
            if self.keep_nonzeros:
                self.shared.indices[n] = masked_quantize(self.shadow[n], codebook, self.masks[n])
            else:
                self.shared.indices[n] = zero_quantize(self.shadow[n], codebook)
        self.shared.write()

    @torch.no_grad()
    def step(self) -> None:
        """Move the optimizer's change of C[I] onto the re-masked shadow weights."""
        for n, p in self.shared.weights.items():
            self.shadow[n].add_(p.detach() - self.shared.value(n)).masked_fill_(~self.masks[n], 0.0)
        self.write()

    def refresh(self, iters: int) -> None:
        """A few Lloyd steps from the current centres on the shadow's non-zeros, then re-quantize."""
        for n, codebook in self.shared.codebooks.items():
            if self.keep_nonzeros:
                refined = refine_masked_codebook(self.shadow[n], self.masks[n], codebook, iters)
            else:
                refined = refine_codebook(self.shadow[n], codebook, iters)
            self.shared.set_codebook(n, refined)
        self.write()


class ADMM(Method):
    """Sparsity-quantization joint learning under a model-size budget (see the module docstring).

    Building the method projects the (pretrained) model once: afterwards it keeps exactly
    ``sum_l ceil(nnz_budget * n_l)`` weights.

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> admm = ADMM(net, AdmmConfig(nnz_budget=0.25, bit_budget=2))
    >>> admm.budget, sum(admm.nnz.values())  # (32 + 8 non-zeros) x 2 bits
    (80.0, 40)
    >>> q = admm.finalize(net)
    >>> all(len(cb) - 1 <= 2 ** admm.bits[n] for n, cb in zip(q.quantized, q.codebooks))
    True
    """

    name = "admm"
    progress_keys = ("sparsity",)

    def __init__(self, model: nn.Module, config: AdmmConfig, n_train: int = 0) -> None:
        self.config = c = config  # checked once, by settings.validate (compress calls it)
        self.coverage = CoverageRule(pattern=c.cover_pattern, exclude=c.cover_exclude).select(model)
        self.covered = self.coverage.covered
        numels = [p.numel() for p in self.covered.values()]
        self.budget = model_size_budget(numels, c.nnz_budget, c.bit_budget)
        start_bits = min(math.floor(c.bit_budget), c.bwub)  # the reference's floor(bit_budget), under the cap
        self.bits = {n: start_bits for n in self.covered}
        self.nnz = {n: p.numel() for n, p in self.covered.items()}
        self.dup = {n: p.detach().clone() for n, p in self.covered.items()}  # V
        self.dual = {n: torch.zeros_like(p.detach()) for n, p in self.covered.items()}  # U
        self.finetune: _FineTune | None = None
        self.epochs_done, self.steps_per_epoch = 0, 0
        self.total_epochs: int | None = None
        self._batch, self._done_at_batch = 0, (False, False)
        # Start from the pretrained model as train.py does with --pretrain (after its first batch): the first
        # sparse projection uses floor(bit_budget) bits everywhere (its model_size_lb; at most bwub here), so it
        # keeps exactly the budget's sum_l ceil(nnz_budget * n_l) weights; then V, U are set.
        self._sparse_projection(model_size_budget(numels, c.nnz_budget, start_bits))
        self._dual_update()

    # --- the two projections --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _sparse_projection(self, budget: float) -> None:
        weights = list(self.covered.values())
        masks = prune_to_budget(weights, [self.bits[n] for n in self.covered], budget)
        for (n, p), mask in zip(self.covered.items(), masks, strict=True):
            p.masked_fill_(~mask, 0.0)
            self.nnz[n] = int((p != 0).sum())

    @torch.no_grad()
    def _dual_update(self) -> None:
        c = self.config
        xs = {n: p.detach() + self.dual[n] for n, p in self.covered.items()}
        self.bits, self.dup = quantization_projection(xs, self.nnz, self.budget, c.bwlb, c.kmeans_iter, c.bwub)
        for n, p in self.covered.items():
            self.dual[n].add_(p.detach() - self.dup[n])

    def check_train(self, train: TrainConfig) -> None:
        """Learn the training length, so fine-tuning runs in the last ``finetune_epochs`` (call before training)."""
        if self.config.finetune_epochs > train.epochs:
            raise ConfigError(
                f"setting 'finetune_epochs' is {self.config.finetune_epochs} but training runs only "
                f"{train.epochs} epochs (setting 'epochs')"
            )
        self.total_epochs = train.epochs
        self._maybe_start_finetune()

    def _maybe_start_finetune(self) -> None:
        tune = self.config.finetune_epochs
        due = tune and self.total_epochs is not None and self.epochs_done >= self.total_epochs - tune
        if self.finetune is None and due:
            c = self.config
            self.finetune = _FineTune.start(self.covered, self.bits, c.kmeans_iter, c.finetune_keep_nonzeros)

    # --- hooks ----------------------------------------------------------------------------------------------------
    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        if self.config.prox or self.finetune is not None:
            return None
        terms = [((p - self.dup[n] + self.dual[n]) ** 2).sum() for n, p in self.covered.items()]
        return 0.5 * self.config.rho * torch.stack(terms).sum()

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        if self.config.finetune_epochs and self.total_epochs is None:
            raise RuntimeError(
                "ADMM fine-tuning needs the number of training epochs: call "
                "method.check_train(train_config) before training"
            )
        self._batch += 1
        if self.finetune is not None:
            self._finetune_step()
            return
        c = self.config
        if c.prox:
            # The closed-form ADMM step at the learning rate the covered weights just moved with.
            beta = ctx.lr_of(next(iter(self.covered.values()))) * c.rho
            for n, p in self.covered.items():
                p.add_(self.dup[n] - self.dual[n], alpha=beta).div_(1.0 + beta)
        self._done_at_batch = (
            bool(c.projint) and self._batch % c.projint == 0,
            bool(c.dualint) and self._batch % c.dualint == 0,
        )
        if self._done_at_batch[0]:
            self._sparse_projection(self.budget)
        if self._done_at_batch[1]:
            self._dual_update()

    def _finetune_step(self) -> None:
        """Straight-through step; codebook refreshes ``finetune_refresh`` times per epoch (finetune.py: 20)."""
        self.finetune.step()
        every = max(1, round(self.steps_per_epoch / self.config.finetune_refresh)) if self.steps_per_epoch else 0
        refresh = bool(every) and self._batch % every == 0
        if refresh:
            self.finetune.refresh(REFRESH_ITERS)
        self._done_at_batch = (refresh, refresh)

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        # The epoch's last batch always projects (train.py: "... or batch_idx == len(train_loader) - 1").
        if self.finetune is not None:
            if not self._done_at_batch[0]:
                self.finetune.refresh(REFRESH_ITERS)
        else:
            if not self._done_at_batch[0]:
                self._sparse_projection(self.budget)
            if not self._done_at_batch[1]:
                self._dual_update()
        self.steps_per_epoch, self._batch, self._done_at_batch = self._batch, 0, (False, False)
        self.epochs_done = ctx.epoch + 1
        self._maybe_start_finetune()

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        total = sum(p.numel() for p in self.covered.values())
        nnz = {n: int((p != 0).sum()) for n, p in self.covered.items()}
        size = sum(self.bits[n] * k for n, k in nnz.items())
        residual = sum(float(((p - self.dup[n]) ** 2).sum()) for n, p in self.covered.items())
        return {
            "sparsity": 1.0 - sum(nnz.values()) / max(total, 1),
            "bits_mean": size / max(sum(nnz.values()), 1),
            "budget_used": size / self.budget,
            "admm_residual": residual / max(total, 1),
            "finetuning": float(self.finetune is not None),
        }

    def summary(self) -> dict[str, Any]:
        """The budget and the learned per-layer bit widths and non-zeros (for report.json)."""
        total = sum(p.numel() for p in self.covered.values())
        layers = [
            {"name": n, "numel": p.numel(), "nnz": int((p != 0).sum()), "bits": self.bits[n]}
            for n, p in self.covered.items()
        ]
        return {
            "nnz_budget": self.config.nnz_budget,
            "bit_budget": self.config.bit_budget,
            "budget_bits": self.budget,
            "target_values_only_cr": 32.0 * total / self.budget,
            "size_bits": sum(row["bits"] * row["nnz"] for row in layers),
            "layers": layers,
        }

    def divergence_hint(self) -> str:
        return "Likely cause: a learning rate or rho that is too high for SGD; lower --lr or --rho."

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "bits": dict(self.bits),
            "nnz": dict(self.nnz),
            "epochs_done": self.epochs_done,
            "steps_per_epoch": self.steps_per_epoch,
            "total_epochs": self.total_epochs,
            "finetuning": self.finetune is not None,
        }
        state.update({f"dup.{n}": t for n, t in self.dup.items()})
        state.update({f"dual.{n}": t for n, t in self.dual.items()})
        if self.finetune is not None:
            state.update(self.finetune.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bits = {n: int(state["bits"][n]) for n in self.covered}
        self.nnz = {n: int(state["nnz"][n]) for n in self.covered}
        self.epochs_done, self.steps_per_epoch = int(state["epochs_done"]), int(state["steps_per_epoch"])
        if state.get("total_epochs") is not None:
            self.total_epochs = int(state["total_epochs"])
        for n, p in self.covered.items():
            self.dup[n] = state[f"dup.{n}"].to(device=p.device, dtype=p.dtype)
            self.dual[n] = state[f"dual.{n}"].to(device=p.device, dtype=p.dtype)
        keep = self.config.finetune_keep_nonzeros
        self.finetune = _FineTune.from_state(state, self.covered, keep) if state["finetuning"] else None

    # --- result ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module) -> QuantizedModel:
        """Per layer a codebook [0, at most 2^b_l values] and indices: the fine-tuned codebook, or (as
        Yang's evaluation) a fresh k-means of the layer's non-zeros with its b_l free centres and a fixed 0."""
        codebooks, assignments, codebook_of = [], {}, {}
        for i, (n, p) in enumerate(self.covered.items()):
            if self.finetune is not None:
                codebook, index = self.finetune.shared.codebooks[n], self.finetune.shared.indices[n]
            else:
                codebook = zero_codebook(p, self.bits[n], self.config.kmeans_iter)
                index = zero_quantize(p, codebook)
            # Drop the centres no weight uses, in slot order (sort=False): the files stay as they were even
            # where Lloyd steps from a given start left the centres unsorted.
            codebook, index = compact_codebook(codebook[1:], index, sort=False)
            codebooks.append(codebook)
            assignments[n] = index
            codebook_of[n] = i
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return QuantizedModel.from_assignments(state, assignments, codebooks, codebook_of)
