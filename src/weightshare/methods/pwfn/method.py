"""Probabilistic weight fixing (PWFN; Subia-Waud & Dasmahapatra, NeurIPS 2023) as a Method.

The model (docs/methods.md#pwfn-model): every covered weight is a Gaussian N(mu, sigma^2). mu *is* the
model's own parameter; sigma is a tensor per covered weight owned by this method (its optimizer group).
In training mode a forward pre-hook swaps ``module.weight`` for ``mu + sigma * eps`` (eps ~ N(0, 1),
drawn every forward) and a forward hook swaps mu back; in eval mode nothing happens, so evaluation uses
mu. We use hooks rather than ``torch.nn.utils.parametrize`` because parametrize renames the state-dict
keys (``parametrizations.weight.original``), which the checkpoints, ``model_final.safetensors`` and the
plots read; with hooks the model stays an ordinary ``nn.Module`` throughout and :meth:`finalize`
removes them.

* sigma starts at the paper's prior (:func:`weightshare.methods.pwfn.pow2.prior_sigma`), or ``1e-4``
  with ``prior`` off, as the reference code does.
* Regulariser (reference ``reg_function=linear``, a gradient edit ``grad_sigma -= reg·relu(0.05 -
  sigma)·|eps|`` after backward): here the loss term ``reg/2 · sum |eps|·relu(0.05 - sigma)^2`` over
  the unfixed weights, returned by :meth:`penalty`. Its gradient is exactly that edit, and its value is
  >= 0 and 0 once sigma saturates at 0.05, so the logged loss stays readable.
* Fixing rounds (docs/methods.md#pwfn-fixing): after ``first_epochs`` and then every ``rest_epochs``
  epochs, the cumulative fraction ``schedule[r]`` of the covered weights is fixed to power-of-two
  centres, the most certain first (:func:`weightshare.methods.pwfn.pow2.assign_centres`); fixed weights
  never move again (zero gradient and a re-snap after every step, so momentum and weight decay cannot
  move them), and their sigma is joined per ``sigma_join``. The per-round records are
  :attr:`ProbabilisticWeightFixing.rounds`.
* :meth:`finalize` builds ONE network-wide codebook (entry 0 = 0.0, then the values in use).

Deviations from the reference code, all deliberate:

* Fixed weights are not re-assigned in later rounds (the reference re-runs the assignment over all
  weights and "normally" re-captures them); the paper describes them as frozen, and this keeps them so.
* The zero centre is found by value (the reference takes the middle index, wrong once a centre is gone).
* ``mean_sigma`` joins to 1/sqrt(mean(1/sigma^2)), the sigma of the group's mean precision
  (docs/methods.md#pwfn-sigma-join: the reference code, read literally, gives 1/sqrt(mean sigma^2),
  which would be ~100 for sigma ~ 0.01).
* The first round trains whole epochs (the reference: 5% of one ImageNet epoch); ``first_epochs = 0``
  fixes the first fraction on the pretrained weights. One optimizer for the whole run (the reference
  restarts it per round, resetting momentum); sigma gets no weight decay and gradients are not clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from weightshare.core.codebook import distinct_codebook
from weightshare.core.coverage import CoverageRule
from weightshare.core.errors import ConfigError
from weightshare.core.quantized import QuantizedModel
from weightshare.methods.base import Method, TrainContext, require_epochs
from weightshare.methods.pwfn.config import SIGMA_JOINS, PWFNConfig
from weightshare.methods.pwfn.pow2 import SIGMA_MAX, SIGMA_MIN, assign_centres, prior_sigma
from weightshare.train.config import TrainConfig

__all__ = [
    "ProbabilisticWeightFixing",
    "check_epochs",
    "join_sigma",
]

FLAT_SIGMA = 1e-4  # the reference's sigma without --prior


def check_epochs(config: PWFNConfig, train: TrainConfig) -> None:
    """The train epochs must equal the fixing schedule's first + (rounds - 1) x rest.

    >>> check_epochs(PWFNConfig(schedule=[0.5, 1.0], first_epochs=1, rest_epochs=3), TrainConfig(epochs=5))
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'epochs' is 5 but the PWFN fixing schedule needs 4 (...)
    """
    detail = f"first_epochs {config.first_epochs} + ({len(config.schedule)} rounds - 1) x rest_epochs"
    require_epochs(train.epochs, config.total_epochs, "the PWFN fixing schedule", f"{detail} {config.rest_epochs}")


# --- joining the sigmas of a fixed group ------------------------------------------------------------


def join_sigma(rule: str, mu: torch.Tensor, sigma: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The sigma each newly fixed weight keeps, from its group (weights fixed to one centre together).

    >>> join_sigma("std_mu", torch.tensor([1.0, 3.0, 5.0]), torch.ones(3), torch.tensor([0, 0, 1])).tolist()
    [1.0, 1.0, 9.313225746154785e-10]
    """
    if rule in ("allow_retraining", "divide_by_10"):
        return sigma / 10 if rule == "divide_by_10" else sigma.clone()
    n = int(group.max()) + 1 if group.numel() else 0
    size = torch.zeros(n, dtype=mu.dtype).index_add_(0, group, torch.ones_like(mu))
    if rule == "std_mu":  # the paper: fixed weights keep injecting the spread their group had
        mean = torch.zeros(n, dtype=mu.dtype).index_add_(0, group, mu) / size
        var = torch.zeros(n, dtype=mu.dtype).index_add_(0, group, (mu - mean[group]) ** 2) / size
        joined = var.sqrt()
    elif rule == "mean_sigma":
        precision = torch.zeros(n, dtype=mu.dtype).index_add_(0, group, sigma.clamp(min=SIGMA_MIN) ** -2) / size
        joined = precision.rsqrt()
    else:
        raise ConfigError(f"setting 'sigma_join' must be one of {', '.join(SIGMA_JOINS)}; got {rule!r}")
    return joined[group].clamp(min=SIGMA_MIN)


# --- the method -----------------------------------------------------------------------------------------


def _readers(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Modules whose parameters another module's forward reads: an attention's out_proj -> the attention."""
    return {m.out_proj: m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


class ProbabilisticWeightFixing(Method):
    """Learned per-weight uncertainties; weights fixed to power-of-two centres round by round.

    With ``first_epochs = rest_epochs = 0`` every round fixes at once, on the pretrained weights:

    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> pw = ProbabilisticWeightFixing(net, PWFNConfig(schedule=[0.5, 1.0], first_epochs=0, rest_epochs=0, b=4))
    >>> pw.fixed_fraction()
    1.0
    >>> q = pw.finalize(net)
    >>> q.codebooks[0][0].item(), sorted(q.quantized), q.unique_values() <= len(q.codebooks[0])
    (0.0, ['0.weight', '2.weight'], True)
    """

    name = "pwfn"
    progress_keys = ("sparsity",)

    def __init__(self, model: nn.Module, config: PWFNConfig, n_train: int = 0) -> None:
        self.config = config  # checked once, by settings.validate (compress calls it)
        self.fractions = list(config.schedule)
        self.coverage = CoverageRule(config.include_biases, config.cover_pattern, exclude=config.cover_exclude).select(
            model
        )
        self.covered = self.coverage.covered
        self.sigma = {n: nn.Parameter(self._initial_sigma(p)) for n, p in self.covered.items()}
        self.fixed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.covered.items()}
        self.value = {n: torch.zeros_like(p.detach()) for n, p in self.covered.items()}
        self.frozen_sigma = {n: torch.zeros_like(p.detach()) for n, p in self.covered.items()}
        self.epochs_done, self.rounds_done = 0, 0
        self.rounds: list[dict[str, Any]] = []
        self._eps: dict[str, torch.Tensor] = {}
        self._saved: dict[tuple[int, str], torch.Tensor] = {}
        self._noisy: dict[str, torch.Tensor] = {}  # this forward's noisy weights, one sample per weight
        self._handles = self._install_hooks(model)
        self._advance()

    def _initial_sigma(self, p: torch.Tensor) -> torch.Tensor:
        return prior_sigma(p.detach()) if self.config.prior else torch.full_like(p.detach(), FLAT_SIGMA)

    # --- noise in training mode only (forward hooks) ----------------------------------------
    def _install_hooks(self, model: nn.Module) -> list[Any]:
        """Noise on every covered weight for each forward, through hooks on the modules that read it.

        A weight is found by identity, so a tied weight is noisy under each of its names, with one
        sample per forward (the root's pre-hook starts a new one). ``nn.MultiheadAttention`` reads its
        ``out_proj.weight`` without calling ``out_proj``: that weight is swapped by the attention's hooks.
        """
        name_of = {id(p): n for n, p in self.covered.items()}
        slots: dict[nn.Module, list[tuple[nn.Module, str, str]]] = {}
        handles = [model.register_forward_pre_hook(lambda module, args: self._noisy.clear())]
        readers = _readers(model)
        for _, module in model.named_modules():
            reader = readers.get(module, module)
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in name_of:
                    slots.setdefault(reader, []).append((module, pname, name_of[id(p)]))
        for reader, slot in slots.items():
            handles.append(reader.register_forward_pre_hook(self._add_noise(slot)))
            handles.append(reader.register_forward_hook(self._restore(slot), always_call=True))
        for name, p in self.covered.items():
            handles.append(p.register_hook(self._freeze_grad(name)))
            if self.config.sigma_join != "allow_retraining":
                handles.append(self.sigma[name].register_hook(self._freeze_grad(name)))
        return handles

    def _add_noise(self, slots: list[tuple[nn.Module, str, str]]) -> Callable[..., None]:
        def hook(reader: nn.Module, args: Any) -> None:
            if not reader.training:
                return  # evaluation uses mu
            for module, pname, full in slots:
                mu = module._parameters[pname]
                if full not in self._noisy:
                    eps = torch.randn_like(mu)
                    self._eps[full] = eps
                    # Reparameterisation w = mu + sigma * eps: gradients reach mu and sigma
                    # (docs/methods.md#pwfn-model). Written into _parameters directly (as
                    # torch.func.functional_call swaps tensors) for this one forward.
                    self._noisy[full] = mu + self.sigma[full] * eps
                self._saved[(id(module), pname)] = mu
                module._parameters[pname] = self._noisy[full]

        return hook

    def _restore(self, slots: list[tuple[nn.Module, str, str]]) -> Callable[..., None]:
        def hook(reader: nn.Module, args: Any, output: Any) -> None:
            for module, pname, _ in slots:
                mu = self._saved.pop((id(module), pname), None)
                if mu is not None:
                    module._parameters[pname] = mu

        return hook

    def _freeze_grad(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad.masked_fill(self.fixed[name], 0.0)

        return hook

    def remove_hooks(self) -> None:
        """Detach every hook: the model is plain again (mu in training mode too)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # --- loop hooks ---------------------------------------------------------------------------
    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": list(self.sigma.values()), "lr": self.config.lr_sigma}]

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """reg/2 · sum |eps|·relu(0.05 - sigma)^2 over the sigmas that still learn (noise of the last forward)."""
        eps, self._eps = self._eps, {}
        if not eps or self.config.reg == 0:
            return None
        retrain = self.config.sigma_join == "allow_retraining"
        total = sum(
            (e.abs() * torch.relu(SIGMA_MAX - self.sigma[n]).square())
            .masked_fill(self.fixed[n] & (not retrain), 0.0)
            .sum()
            for n, e in eps.items()
        )
        return 0.5 * self.config.reg * total

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: TrainContext) -> None:
        # Momentum and weight decay move even zero-gradient entries: snap the fixed ones back.
        for n, p in self.covered.items():
            p.copy_(torch.where(self.fixed[n], self.value[n], p))
            s = self.sigma[n].clamp_(min=SIGMA_MIN)
            if self.config.sigma_join != "allow_retraining":
                s.copy_(torch.where(self.fixed[n], self.frozen_sigma[n], s))

    def on_epoch_end(self, model: nn.Module, ctx: TrainContext) -> None:
        epoch = ctx.epoch
        self.epochs_done = epoch + 1
        if self.epochs_done > self.config.total_epochs:
            raise ConfigError(
                f"setting 'epochs' is larger than the PWFN fixing schedule: every weight was fixed "
                f"after epoch {self.config.total_epochs}; set 'epochs' to {self.config.total_epochs}"
            )
        self._advance()

    def _advance(self) -> None:
        """Run every fixing round that is due after ``epochs_done`` epochs."""
        c = self.config
        while (
            self.rounds_done < len(self.fractions)
            and self.epochs_done >= c.first_epochs + self.rounds_done * c.rest_epochs
        ):
            self.fix_round(self.rounds_done)
            self.rounds_done += 1

    @torch.no_grad()
    def fix_round(self, r: int) -> dict[str, Any]:
        """Fix weights until the fraction ``schedule[r]`` of all covered weights is fixed; return its record.

        The round works on all covered tensors at once: one network-wide centre set (docs/methods.md#pwfn-overview).
        """
        names = list(self.covered)
        mu = torch.cat([self.covered[n].detach().reshape(-1) for n in names]).double()
        sigma = torch.cat([self.sigma[n].detach().reshape(-1) for n in names]).double()
        fixed = torch.cat([self.fixed[n].reshape(-1) for n in names])
        free = (~fixed).nonzero().reshape(-1)
        need = math.ceil(round(self.fractions[r] * mu.numel(), 6)) - int(fixed.sum())
        c = self.config
        a = assign_centres(
            mu[free], sigma[free], need, b=c.b, max_terms=c.max_terms, delta=c.delta, inc=c.inc, zero_fix=c.zero_fix
        )
        where = free[a.position]
        sigma[where] = join_sigma(self.config.sigma_join, mu[where], sigma[where], a.group)
        mu[where] = a.centre
        fixed[where] = True
        self._scatter(names, mu, sigma, fixed)
        row = {
            "round": r + 1,
            "fraction": self.fractions[r],
            "fixed": int(fixed.sum()),
            "newly_fixed": len(where),
            "groups": int(a.group.max()) + 1 if a.group.numel() else 0,
            "delta": a.delta,
            "terms": a.terms,
            "unique_values": int(torch.unique(mu[fixed]).numel()),
        }
        self.rounds.append(row)
        return row

    def _scatter(self, names: list[str], mu: torch.Tensor, sigma: torch.Tensor, fixed: torch.Tensor) -> None:
        """Write flat results back: mu := centre and frozen sigma where fixed."""
        offset = 0
        for n in names:
            p, size = self.covered[n], self.covered[n].numel()
            part = slice(offset, offset + size)
            self.fixed[n] = fixed[part].reshape(p.shape).to(p.device)
            self.value[n] = torch.where(self.fixed[n], mu[part].reshape(p.shape).to(p), 0.0)
            self.frozen_sigma[n] = torch.where(self.fixed[n], sigma[part].reshape(p.shape).to(p), 0.0)
            p.copy_(torch.where(self.fixed[n], self.value[n], p))
            self.sigma[n].copy_(torch.where(self.fixed[n], self.frozen_sigma[n], self.sigma[n]))
            offset += size

    # --- progress -----------------------------------------------------------------------------
    def fixed_fraction(self) -> float:
        total = sum(f.numel() for f in self.fixed.values())
        return sum(int(f.sum()) for f in self.fixed.values()) / max(total, 1)

    @torch.no_grad()
    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        fixed_values = torch.cat([self.value[n][self.fixed[n]] for n in self.covered])
        free_sigma = torch.cat([self.sigma[n].detach()[~self.fixed[n]] for n in self.covered])
        total = sum(f.numel() for f in self.fixed.values())
        return {
            "fixed_fraction": self.fixed_fraction(),
            "fix_round": float(self.rounds_done),
            "unique_values": float(torch.unique(fixed_values).numel()),
            "sparsity": int((fixed_values == 0).sum()) / max(total, 1),
            "sigma_mean": float(free_sigma.mean()) if free_sigma.numel() else 0.0,
        }

    def check_train(self, train: TrainConfig) -> None:
        """Refuse a training length that does not match the fixing schedule (call before training)."""
        check_epochs(self.config, train)

    def records(self) -> dict[str, Any]:
        """One entry per fixing round: the fraction fixed, the centres used, the sigmas (paper Alg. 1)."""
        return {"pwfn_rounds.json": self.rounds} if self.rounds else {}

    def divergence_hint(self) -> str:
        return "Likely cause: a learning rate too high for the noisy weights; lower the train 'lr' or 'lr_sigma'."

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epochs_done": self.epochs_done,
            "rounds_done": self.rounds_done,
            "rounds": list(self.rounds),
        }
        for n in self.covered:
            state[f"sigma.{n}"] = self.sigma[n].detach().clone()
            state[f"fixed.{n}"] = self.fixed[n].clone()
            state[f"value.{n}"] = self.value[n].clone()
            state[f"frozen_sigma.{n}"] = self.frozen_sigma[n].clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
        self.rounds_done = int(state["rounds_done"])
        self.rounds = [dict(row) for row in state.get("rounds", [])]
        for n, p in self.covered.items():
            self.sigma[n].copy_(state[f"sigma.{n}"])  # in place: the optimizer holds this Parameter
            self.fixed[n] = state[f"fixed.{n}"].to(device=p.device, dtype=torch.bool)
            self.value[n] = state[f"value.{n}"].to(p)
            self.frozen_sigma[n] = state[f"frozen_sigma.{n}"].to(p)

    # --- result -------------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model: nn.Module) -> QuantizedModel:
        """ONE network-wide codebook: 0.0, then every other value in use, ascending."""
        if self.rounds_done < len(self.fractions):
            raise ConfigError(
                f"PWFN stopped before its last fixing round ({self.rounds_done} of {len(self.fractions)} done after "
                f"{self.epochs_done} epochs); set the train setting 'epochs' to {self.config.total_epochs}"
            )
        self.remove_hooks()
        codebook, assignments = distinct_codebook({n: self.value[n].detach().cpu() for n in self.covered})
        for n, p in self.covered.items():
            p.copy_(self.value[n])
        state = {k: v.detach() for k, v in model.state_dict().items()}
        return QuantizedModel.from_assignments(state, assignments, [codebook.float()])
