"""The fast complexity-loss kernel against a float64 straightforward reference."""

from __future__ import annotations

import math

import pytest
import torch

from weightshare.methods.sws.kernels.exact import mixture_nll, mixture_nll_naive


def _random_mixture(k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    means = torch.randn(k, generator=gen, dtype=torch.float64) * 0.3
    means[0] = 0.0
    log_prec = math.log(100.0) + 2.0 * torch.randn(k, generator=gen, dtype=torch.float64)
    log_pis = torch.log_softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    return means, log_prec, log_pis


def _value_and_grads(fn, weights, params, dtype):
    ws = [w.detach().to(dtype).clone().requires_grad_() for w in weights]
    ps = [p.detach().to(dtype).clone().requires_grad_() for p in params]
    value = fn(ws, *ps)
    value.backward()
    return value.detach().double(), [t.grad.double() for t in ws + ps]


@pytest.mark.parametrize("shapes", [[(7,)], [(300, 40), (33,), (5, 4, 3)], [(70000,)]])
@pytest.mark.parametrize("k", [2, 17])
def test_matches_float64_reference(shapes: list[tuple[int, ...]], k: int) -> None:
    gen = torch.Generator().manual_seed(k + len(shapes))
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.2 for s in shapes]
    params = _random_mixture(k, gen)
    ref, ref_grads = _value_and_grads(mixture_nll_naive, weights, params, torch.float64)
    val, grads = _value_and_grads(mixture_nll, weights, params, torch.float32)
    assert torch.allclose(val, ref, rtol=1e-5, atol=1e-3)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-6)


def test_float64_weights_give_float64_exact_result() -> None:
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(5000, generator=gen, dtype=torch.float64) * 0.2]
    params = _random_mixture(9, gen)
    ref, ref_grads = _value_and_grads(mixture_nll_naive, weights, params, torch.float64)
    val, grads = _value_and_grads(mixture_nll, weights, params, torch.float64)
    assert torch.allclose(val, ref, rtol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_chunk_size_does_not_change_the_result() -> None:
    w = [torch.randn(1000, requires_grad=True)]
    params = [p.float() for p in _random_mixture(5, torch.Generator().manual_seed(0))]
    a = mixture_nll(w, *params, chunk_size=7)
    b = mixture_nll(w, *params, chunk_size=4096)
    assert torch.allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize(
    ("weights", "log_prec", "pi0"),
    [
        (torch.tensor([50.0, -80.0, 0.0]), [0.0, 0.0, 0.0], 0.5),  # far from every component
        (torch.tensor([0.3, 1e-5, -2.0]), [math.log(1e8)] * 3, 0.5),  # very narrow components
        (torch.tensor([0.3, 100.0, -2.0]), [math.log(1e-4)] * 3, 0.5),  # very wide components
        (torch.tensor([0.3, 1e-3, 0.0]), [math.log(2500.0)] * 3, 1 - 1e-9),  # pi_0 almost 1
    ],
)
def test_stable_for_extreme_mixtures(weights: torch.Tensor, log_prec: list[float], pi0: float) -> None:
    rest = math.log1p(-pi0) - math.log(2)
    log_pis = torch.tensor([math.log(pi0), rest, rest], requires_grad=True)
    means = torch.tensor([0.0, -0.3, 0.3], requires_grad=True)
    lp = torch.tensor(log_prec, requires_grad=True)
    w = weights.clone().requires_grad_()
    value = mixture_nll([w], means, lp, log_pis)
    value.backward()
    for t in (value, w.grad, means.grad, lp.grad, log_pis.grad):
        assert torch.isfinite(t).all()
    ref = mixture_nll_naive([w.double()], means.double(), lp.double(), log_pis.double())
    assert torch.allclose(value.double(), ref, rtol=1e-5)


def test_weight_gradient_skipped_when_not_needed() -> None:
    w = torch.randn(100)
    means = torch.tensor([0.0, 0.5], requires_grad=True)
    value = mixture_nll([w], means, torch.zeros(2), torch.log(torch.tensor([0.5, 0.5])))
    value.backward()
    assert w.grad is None and means.grad is not None


def test_empty_weights_give_zero() -> None:
    means = torch.zeros(2, requires_grad=True)
    value = mixture_nll([torch.zeros(0)], means, torch.zeros(2), torch.zeros(2))
    assert float(value.detach()) == 0.0
