"""The Gaussian-mixture prior of soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017).

p(w) = prod_i sum_j pi_j N(w_i | mu_j, 1/lambda_j) over every covered weight (paper eq. 5).
Component 0 is the pruning spike: mu_0 = 0 is a buffer (never trained) and pi_0 is fixed
(0.999 in the paper) or learned under a Beta hyper-prior. The other mixing weights are
pi_j = (1 - pi_0) softmax(rho)_j with rho initialised equal (docs/methods.md#sws-mixture).
Precisions are optimised in log space (docs/methods.md#sws-init) under Gamma hyper-priors
(docs/methods.md#sws-hyper-priors).

After retraining, :meth:`MixturePrior.merged` merges redundant components (paper Sec. 4.3,
eq. 8) and :meth:`MixturePrior.quantize` sets every weight to the mean of its MAP component
(Algorithm 1), giving one global codebook whose entry 0 is the exact zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightshare.core.codebook import shared_codebook
from weightshare.core.coverage import covered_parameters
from weightshare.core.quantized import QuantizedModel
from weightshare.core.settings import setting
from weightshare.methods.sws.kernels.exact import mixture_nll, mixture_nll_naive
from weightshare.methods.sws.kernels.grid import mixture_nll_grid

__all__ = ["MixtureConfig", "MixturePrior", "MergedMixture"]

_ASSIGN_CHUNK = 65536
_KERNELS = {"grid": mixture_nll_grid, "fast": mixture_nll, "naive": mixture_nll_naive}


@dataclass
class MixtureConfig:
    """Every knob of the mixture prior (defaults: the paper / tutorial values).

    ``pi0_beta_a`` / ``pi0_beta_b`` parametrise the Beta(a, b) hyper-prior on a learnable pi_0;
    the defaults (a=1000, b=2) put its mode (a-1)/(a+b-2) at 0.999, the paper's fixed value.
    Gamma(alpha, beta) (shape, rate) hyper-priors act on each precision lambda_j; both default
    modes (alpha-1)/beta sit near lambda = 2500, i.e. sigma = 0.02 (docs/methods.md#sws-hyper-priors).

    >>> MixtureConfig(num_components=1).validate()
    Traceback (most recent call last):
    ...
    ValueError: num_components must be >= 2 (the zero component plus at least one), got 1
    """

    num_components: int = setting(17, "mixture components J, the zero spike included")
    pi0: float = setting(0.999, "mixing weight of the zero component (pruning spike)")
    learn_pi0: bool = setting(False, "learn pi0 under a Beta(pi0_beta_a, pi0_beta_b) hyper-prior")
    pi0_beta_a: float = setting(1000.0, "Beta hyper-prior on a learnable pi0: a")
    pi0_beta_b: float = setting(2.0, "Beta hyper-prior on a learnable pi0: b")
    init_means: str = setting(
        "weights",
        "initial means: evenly over the pretrained weights' range, or a fixed range",
        choices=("weights", "fixed"),
    )
    init_range_min: float = setting(-0.6, "init_means=fixed: lowest initial mean (tutorial: -0.6)")
    init_range_max: float = setting(0.6, "init_means=fixed: highest initial mean (tutorial: 0.6)")
    init_sigma: float = setting(0.25, "initial standard deviation of every component")
    hyperprior: bool = setting(True, "Gamma hyper-priors on the precisions (off: the paper's first experiment)")
    gamma_alpha: float = setting(250.0, "Gamma hyper-prior shape, non-zero components")
    gamma_beta: float = setting(0.1, "Gamma hyper-prior rate, non-zero components")
    gamma_alpha_zero: float = setting(5000.0, "Gamma hyper-prior shape, zero component")
    gamma_beta_zero: float = setting(2.0, "Gamma hyper-prior rate, zero component")
    # "grid" (default): tabulated kernel, compiled where numba runs (mixture_grid_jit); a LeNet-300-100
    # step takes about half as long as with "fast" (benchmarks/RESULTS.md); error <= 1e-6 per weight in
    # natural units, as accurate as the exact float32 kernel (tested against a float64 reference);
    # "fast": the exact chunked kernel; "naive": autograd logsumexp (the reference).
    kernel: str = setting(
        "grid",
        "complexity-loss kernel: grid (tabulated, default), fast (exact), naive",
        choices=("grid", "fast", "naive"),
    )

    def validate(self) -> MixtureConfig:
        """Raise ``ValueError`` naming the first bad setting and its allowed range."""
        if self.num_components < 2:
            raise ValueError(
                f"num_components must be >= 2 (the zero component plus at least one), got {self.num_components}"
            )
        if not 0.0 < self.pi0 < 1.0:
            raise ValueError(f"pi0 must lie in the open interval (0, 1), got {self.pi0}")
        positive = ("pi0_beta_a", "pi0_beta_b", "init_sigma", "gamma_alpha", "gamma_beta")
        for name in (*positive, "gamma_alpha_zero", "gamma_beta_zero"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.init_means not in ("weights", "fixed"):
            raise ValueError(f"init_means must be 'weights' or 'fixed', got {self.init_means!r}")
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be 'grid', 'fast' (exact) or 'naive', got {self.kernel!r}")
        if not self.init_range_min < self.init_range_max:
            raise ValueError(
                f"init_range_min must be < init_range_max, got {self.init_range_min} >= {self.init_range_max}"
            )
        return self


@dataclass(frozen=True)
class MergedMixture:
    """A (merged) mixture as plain float64 tensors, component 0 (mu = 0) first."""

    means: torch.Tensor
    variances: torch.Tensor
    pis: torch.Tensor

    def __len__(self) -> int:
        return int(self.means.numel())


def _sym_kl(means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """Symmetric KL, (KL(i||j) + KL(j||i)) / 2, between all pairs of 1-D Gaussians (J x J)."""
    dm2 = (means[:, None] - means[None, :]).square()
    vi, vj = variances[:, None], variances[None, :]
    # The log terms cancel in the symmetric sum.
    return 0.25 * ((vi + dm2) / vj + (vj + dm2) / vi) - 0.5


def merge_mixture(mix: MergedMixture, kl_threshold: float) -> MergedMixture:
    """Repeatedly merge the closest pair (smallest symmetric KL) while it is below the threshold.

    Merged parameters follow paper eq. 8: pi = pi_i + pi_j, mu and sigma^2 pi-weighted averages.
    A merge into component 0 keeps index 0 and mu = 0 exactly (it stays the pruning spike).

    >>> mix = MergedMixture(torch.tensor([0.0, 0.5, 0.5]), torch.full((3,), 0.01), torch.tensor([0.5, 0.2, 0.3]))
    >>> merge_mixture(mix, 1e-10).pis.tolist()
    [0.5, 0.5]
    """
    means, variances, pis = mix.means.clone(), mix.variances.clone(), mix.pis.clone()
    while means.numel() > 1:
        kl = _sym_kl(means, variances)
        kl.fill_diagonal_(math.inf)
        best = int(torch.argmin(kl))
        i, j = divmod(best, means.numel())
        if not kl[i, j] < kl_threshold:
            break
        i, j = min(i, j), max(i, j)  # keep the lower index, so component 0 stays first
        total = pis[i] + pis[j]
        means[i] = 0.0 if i == 0 else (pis[i] * means[i] + pis[j] * means[j]) / total
        variances[i] = (pis[i] * variances[i] + pis[j] * variances[j]) / total
        pis[i] = total
        keep = torch.arange(means.numel(), device=means.device) != j
        means, variances, pis = means[keep], variances[keep], pis[keep]
    return MergedMixture(means, variances, pis)


def assign_components(weight: torch.Tensor, mix: MergedMixture, rule: str = "map") -> torch.Tensor:
    """Index of each weight's most responsible component (LongTensor shaped like ``weight``).

    ``rule="map"`` maximises log pi_k + log N(w | mu_k, sigma_k^2) (paper Alg. 1). ``rule="ml"``
    drops pi_k; it fails when a trained component sits near 0 with a variance smaller than the
    zero component's: it out-scores the spike on the near-zero weights, they are no longer
    pruned and sparsity vanishes (docs/methods.md#sws-assignment). Computed in chunks,
    so memory stays O(N).

    >>> mix = MergedMixture(torch.tensor([0.0, 1.0]), torch.tensor([0.01, 0.01]), torch.tensor([0.9, 0.1]))
    >>> assign_components(torch.tensor([0.02, 0.9]), mix).tolist()
    [0, 1]
    """
    if rule not in ("map", "ml"):
        raise ValueError(f"rule must be 'map' or 'ml', got {rule!r}")
    means, variances, pis = (t.to(weight.device) for t in (mix.means, mix.variances, mix.pis))
    bias = -0.5 * variances.log()
    if rule == "map":
        bias = bias + pis.log()
    flat = weight.detach().reshape(-1).to(torch.float64)
    out = torch.empty(flat.numel(), dtype=torch.int64, device=weight.device)
    for start in range(0, flat.numel(), _ASSIGN_CHUNK):
        w = flat[start : start + _ASSIGN_CHUNK, None]
        score = bias - 0.5 * (w - means).square() / variances
        out[start : start + _ASSIGN_CHUNK] = score.argmax(1)
    return out.view(weight.shape)


class MixturePrior(nn.Module):
    """Gaussian-mixture prior over a set of weight tensors (soft weight-sharing).

    >>> prior = MixturePrior([torch.linspace(-0.5, 0.5, 101)], MixtureConfig(num_components=5))
    >>> [round(m, 4) for m in prior.all_means().tolist()]
    [0.0, -0.5, -0.1667, 0.1667, 0.5]
    >>> round(float(prior.pis().sum().detach()), 6)
    1.0
    >>> prior.complexity_loss([torch.zeros(3)]).shape
    torch.Size([])
    """

    def __init__(
        self,
        init_weights: Sequence[torch.Tensor],
        config: MixtureConfig | None = None,
        *,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = replace(config) if config is not None else MixtureConfig()
        self.config.validate()
        self.names = list(names) if names is not None else None
        cfg, free = self.config, self.config.num_components - 1
        lo, hi = self._init_range(init_weights)
        self.register_buffer("zero_mean", torch.zeros(1))
        self.means = nn.Parameter(torch.linspace(lo, hi, free))
        self.log_precisions = nn.Parameter(torch.full((free + 1,), -2.0 * math.log(cfg.init_sigma)))
        self.mixing_logits = nn.Parameter(torch.zeros(free))
        logit = math.log(cfg.pi0) - math.log1p(-cfg.pi0)
        if cfg.learn_pi0:
            self.pi0_logit = nn.Parameter(torch.tensor(logit))
        else:
            self.register_buffer("pi0_logit", torch.tensor(logit, dtype=torch.float64))

    def _init_range(self, init_weights: Sequence[torch.Tensor]) -> tuple[float, float]:
        # Paper Sec. 4.2: means spread evenly over the range of the pretrained weights.
        if self.config.init_means == "fixed":
            return self.config.init_range_min, self.config.init_range_max
        values = [w.detach().reshape(-1) for w in init_weights if w.numel() > 0]
        if not values:
            raise ValueError("init_means='weights' needs at least one non-empty weight tensor")
        lo = min(float(v.min()) for v in values)
        hi = max(float(v.max()) for v in values)
        return (lo, hi) if lo < hi else (lo - 1.0, hi + 1.0)

    # --- constructors ----------------------------------------------------
    @classmethod
    def from_weights(
        cls, weights: Sequence[torch.Tensor], *, names: Sequence[str] | None = None, **config: Any
    ) -> MixturePrior:
        """Build from weight tensors, with config fields as keywords.

        >>> MixturePrior.from_weights([torch.randn(10)], num_components=3).all_means().numel()
        3
        """
        return cls(weights, MixtureConfig(**config), names=names)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        include_biases: bool = False,
        pattern: str | None = None,
        skip_last: bool = False,
        exclude: str | None = None,
        **config: Any,
    ) -> MixturePrior:
        """Build over the tensors :func:`~weightshare.core.coverage.covered_parameters` selects.

        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> MixturePrior.from_model(net).names
        ['0.weight', '2.weight']
        """
        covered = covered_parameters(
            model, include_biases=include_biases, pattern=pattern, skip_last=skip_last, exclude=exclude
        )
        return cls(list(covered.values()), MixtureConfig(**config), names=list(covered))

    # --- parametrisation ---------------------------------------------------
    def log_pis(self) -> torch.Tensor:
        """log pi for all J components, pi_0 first; pi_j = (1 - pi_0) softmax(rho)_j."""
        theta = self.pi0_logit.to(self.mixing_logits.dtype)
        # logsigmoid keeps log(1 - pi_0) accurate for pi_0 = 1 - 1e-9.
        rest = F.logsigmoid(-theta) + torch.log_softmax(self.mixing_logits, 0)
        return torch.cat([F.logsigmoid(theta).reshape(1), rest])

    def pis(self) -> torch.Tensor:
        return self.log_pis().exp()

    def all_means(self) -> torch.Tensor:
        return torch.cat([self.zero_mean, self.means])

    def precisions(self) -> torch.Tensor:
        return self.log_precisions.exp()

    def sigmas(self) -> torch.Tensor:
        return (-0.5 * self.log_precisions).exp()

    # --- the loss -------------------------------------------------------------
    def hyperprior_loss(self) -> torch.Tensor:
        """-log p(lambda, pi_0) up to constants (dropped: they do not affect gradients).

        Gamma(alpha, beta) on each lambda_j: sum_j (1 - alpha_j) log lambda_j + beta_j lambda_j;
        Beta(a, b) on a learnable pi_0: -(a - 1) log pi_0 - (b - 1) log(1 - pi_0).
        """
        cfg, loss = self.config, self.log_precisions.new_zeros(())
        if cfg.hyperprior:
            alpha = torch.full_like(self.log_precisions, cfg.gamma_alpha)
            beta = torch.full_like(self.log_precisions, cfg.gamma_beta)
            alpha[0], beta[0] = cfg.gamma_alpha_zero, cfg.gamma_beta_zero
            loss = loss + ((1.0 - alpha) * self.log_precisions + beta * self.log_precisions.exp()).sum()
        if cfg.learn_pi0:
            theta = self.pi0_logit
            loss = loss - (cfg.pi0_beta_a - 1) * F.logsigmoid(theta) - (cfg.pi0_beta_b - 1) * F.logsigmoid(-theta)
        return loss

    def complexity_loss(self, weights: Sequence[torch.Tensor] | nn.Module, mode: str | None = None) -> torch.Tensor:
        """L_C = -sum_i log p(w_i) - log p(hyper-priors), a differentiable scalar (paper eq. 6-7).

        ``weights`` is the covered tensors, or the model itself (then the tensors named in
        ``self.names``, as recorded by :meth:`from_model`). ``mode`` overrides ``config.kernel``.
        """
        if isinstance(weights, nn.Module):
            weights = self._covered(weights)
        mode = mode or self.config.kernel
        args = (self.all_means(), self.log_precisions, self.log_pis())
        if mode not in _KERNELS:
            raise ValueError(f"mode must be 'grid', 'fast' (exact) or 'naive', got {mode!r}")
        nll = _KERNELS[mode](list(weights), *args)
        return nll + self.hyperprior_loss().to(nll.dtype)

    def _covered(self, model: nn.Module) -> list[torch.Tensor]:
        if not self.names:
            raise ValueError("this prior does not know its tensors' names: build it with from_model or pass names=")
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"covered tensors not in the model: {missing}")
        return [params[n] for n in self.names]

    # --- post-processing (paper Sec. 4.3, Algorithm 1) --------------------
    @torch.no_grad()
    def mixture(self) -> MergedMixture:
        """The current mixture as float64 CPU tensors (means, variances, pis), component 0 first."""
        means = self.all_means().double().cpu()
        means[0] = 0.0
        return MergedMixture(means, (-self.log_precisions.double().cpu()).exp(), self.log_pis().double().cpu().exp())

    def merged(self, kl_threshold: float = 1e-10) -> MergedMixture:
        """The mixture after merging components closer than ``kl_threshold`` (symmetric KL)."""
        return merge_mixture(self.mixture(), kl_threshold)

    @torch.no_grad()
    def responsibilities(self, weight: torch.Tensor) -> torch.Tensor:
        """r_ik = pi_k N(w_i | mu_k) / sum_j pi_j N(w_i | mu_j), shape (numel, J), float64."""
        mix = self.mixture()
        w = weight.detach().reshape(-1, 1).double().cpu()
        logits = mix.pis.log() - 0.5 * mix.variances.log() - 0.5 * (w - mix.means).square() / mix.variances
        return torch.softmax(logits, dim=1)

    def assign(
        self, weights: Sequence[torch.Tensor], rule: str = "map", mixture: MergedMixture | None = None
    ) -> list[torch.Tensor]:
        """Component index of every weight, one LongTensor per tensor (see :func:`assign_components`)."""
        mix = mixture if mixture is not None else self.mixture()
        return [assign_components(w, mix, rule) for w in weights]

    @torch.no_grad()
    def quantize(
        self,
        model: nn.Module,
        *,
        rule: str = "map",
        kl_threshold: float = 1e-10,
        names: Sequence[str] | None = None,
    ) -> QuantizedModel:
        """Merge, assign every covered weight to a component and build ONE global codebook.

        Codebook entry 0 is 0.0 (component 0: those weights become exactly zero); then the
        merged non-zero means that are actually used, in increasing order. Tensors not covered
        stay dense.
        """
        names = list(names) if names is not None else self.names
        if not names:
            raise ValueError("quantize needs the covered tensor names: build with from_model or pass names=")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # a QuantizedModel lives on the CPU
        missing = [n for n in names if n not in state]
        if missing:
            raise KeyError(f"tensors not in the model: {missing}")
        mix = self.merged(kl_threshold)
        comps = {n: assign_components(state[n], mix, rule) for n in names}
        # Component k >= 1 is the candidate mean k; component 0, the pruning spike, is the codebook's zero.
        codebook, assignments = shared_codebook(mix.means[1:], comps)
        meta = {"method": "sws"}  # the file stores meta: keep it tiny (settings live in report.json)
        return QuantizedModel.from_assignments(state, assignments, [codebook.float()], meta=meta)

    # --- serialisation ---------------------------------------------------------
    @torch.no_grad()
    def to_json(self) -> dict[str, Any]:
        """Plain lists (component 0 first) plus the config and covered names."""
        return {
            "means": self.all_means().tolist(),
            "sigmas": self.sigmas().tolist(),
            "precisions": self.precisions().tolist(),
            "pis": self.pis().tolist(),
            "names": self.names,
            "config": asdict(self.config),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MixturePrior:
        """Rebuild a prior saved with :meth:`to_json`.

        >>> p = MixturePrior.from_weights([torch.randn(50)], num_components=4, learn_pi0=True)
        >>> q = MixturePrior.from_json(p.to_json())
        >>> torch.allclose(q.pis(), p.pis()) and torch.allclose(q.all_means(), p.all_means())
        True
        """
        known = {f.name for f in fields(MixtureConfig)}
        config = MixtureConfig(**{k: v for k, v in data.get("config", {}).items() if k in known})
        config.num_components = len(data["means"])
        prior = cls([], replace(config, init_means="fixed"), names=data.get("names"))
        prior.config = config
        with torch.no_grad():
            pis = torch.tensor(data["pis"], dtype=torch.float64)
            prior.means.copy_(torch.tensor(data["means"][1:]))
            prior.log_precisions.copy_(torch.tensor(data["precisions"]).log())
            prior.mixing_logits.copy_(pis[1:].log() - pis[1:].log().mean())
            prior.pi0_logit.copy_(pis[0].log() - torch.log1p(-pis[0]))
        return prior
