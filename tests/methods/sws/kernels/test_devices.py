"""The mixture prior on any device: the torch kernels run where the weights are; the compiled one on CPU only.

Every test that computes runs on the CPU and, where a GPU is present, on CUDA. Without a GPU,
``test_torch_path_makes_every_tensor_on_the_weights_device`` still proves that no buffer of the torch
path is made on a fixed device: with the default device set to ``meta``, a tensor made without
``device=`` would be a meta tensor, and using it with the weights' CPU tensors would fail.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

import weightshare.methods.sws.kernels.grid as grid_mod
import weightshare.methods.sws.kernels.grid_jit as grid_jit
from weightshare.methods.sws.config import SWSConfig
from weightshare.methods.sws.kernels.exact import mixture_nll, mixture_nll_naive
from weightshare.methods.sws.kernels.grid import mixture_nll_grid
from weightshare.methods.sws.method import SoftWeightSharing

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
KERNELS = {"grid": mixture_nll_grid, "fast": mixture_nll, "naive": mixture_nll_naive}
# The tolerance test_grid.py holds the float32 kernels to against the float64 reference.
VALUE_RTOL, GRAD_RTOL = 1e-6, 1e-4


def _problem() -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Trained-like weights (most near 0, clusters elsewhere) and a 9-component mixture, float64 on the CPU."""
    gen = torch.Generator().manual_seed(3)
    k = 9
    means = torch.linspace(-0.4, 0.4, k, dtype=torch.float64)
    means[0] = 0.0
    sigma = torch.full((k,), 0.03, dtype=torch.float64)
    comp = torch.randint(0, k, (5000,), generator=gen)
    w = means[comp] + sigma[comp] * torch.randn(5000, generator=gen, dtype=torch.float64)
    pis = torch.full((k,), 0.5 / (k - 1), dtype=torch.float64)
    pis[0] = 0.5
    return [w[:3000].reshape(60, 50), w[3000:]], (means, -2.0 * sigma.log(), pis.log())


def _value_and_grads(fn, weights, params, dtype, device):
    ws = [w.detach().to(device=device, dtype=dtype).clone().requires_grad_() for w in weights]
    ps = [p.detach().to(device=device, dtype=dtype).clone().requires_grad_() for p in params]
    value = fn(ws, *ps)
    value.backward()
    assert value.device.type == torch.device(device).type
    return value.detach().double().cpu(), [t.grad.double().cpu() for t in ws + ps]


def _assert_matches_reference(kernel: str, device: str, default_device: str | None = None) -> None:
    weights, params = _problem()
    ref, ref_grads = _value_and_grads(mixture_nll_naive, weights, params, torch.float64, "cpu")
    weights, params = [w.float() for w in weights], [p.float() for p in params]
    with torch.device(default_device) if default_device else contextlib.nullcontext():
        val, grads = _value_and_grads(KERNELS[kernel], weights, params, torch.float32, device)
    assert abs(float(val - ref)) <= VALUE_RTOL * abs(float(ref)) + 1e-3
    for got, want in zip(grads, ref_grads, strict=True):
        assert float((got - want).abs().max()) <= GRAD_RTOL * float(want.abs().max()) + 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_torch_kernels_match_the_float64_reference_on_each_device(kernel, device, monkeypatch):
    monkeypatch.setenv("WEIGHTSHARE_JIT", "0")  # on the CPU too: the torch path every other device takes
    _assert_matches_reference(kernel, device)


@pytest.mark.parametrize("kernel", ["grid", "fast"])
def test_torch_path_makes_every_tensor_on_the_weights_device(kernel, monkeypatch):
    monkeypatch.setenv("WEIGHTSHARE_JIT", "0")
    for cache in (grid_mod._WORKSPACES, grid_mod._GRAD_BUFFERS):
        cache.clear()  # buffers made earlier would hide a missing device=
    _assert_matches_reference(kernel, "cpu", default_device="meta")


def test_compiled_kernel_is_chosen_for_cpu_tensors_only(monkeypatch):
    if not grid_jit.jit_available(torch.float32):
        pytest.skip("numba is not installed")
    monkeypatch.setenv("WEIGHTSHARE_JIT", "1")
    assert grid_mod._compiled([torch.zeros(4)]) and not grid_mod._compiled([torch.zeros(4, device="meta")])
    built = []
    build = grid_jit.CompiledGrid.build
    monkeypatch.setattr(grid_jit.CompiledGrid, "build", lambda self: built.append(self) or build(self))
    weights, params = _problem()
    mixture_nll_grid([w.float() for w in weights], *(p.float() for p in params))
    assert len(built) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_soft_weight_sharing_trains_and_finalizes_on_each_device(device):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(device)
    sws = SoftWeightSharing(net, SWSConfig(num_components=5), n_train=100)
    assert {p.device.type for p in sws.prior.parameters()} == {torch.device(device).type}
    opt = torch.optim.Adam([{"params": net.parameters()}, *sws.parameters()], lr=1e-3)
    before = sws.prior.means.detach().clone()
    penalty = sws.penalty(net)
    penalty.backward()
    opt.step()
    assert math.isfinite(float(penalty.detach())) and not torch.equal(sws.prior.means.detach(), before)
    assert 0.0 <= sws.epoch_metrics(net)["sparsity"] <= 1.0
    q = sws.finalize(net)
    assert q.codebooks[0][0].item() == 0.0 and all(t.device.type == "cpu" for t in q.codebooks)
