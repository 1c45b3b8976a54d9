"""The compiled grid kernel's pieces: node tables, occupied-cell restriction, left-over weights, dispatch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import weightshare.methods.sws.kernels.grid_jit as jit
from weightshare.methods.sws.kernels.exact import mixture_nll_naive
from weightshare.methods.sws.kernels.grid import _grid_values, grid_spec, mixture_nll_grid

pytestmark = pytest.mark.skipif(not jit.jit_available(torch.float32), reason="numba is not installed")


def _params(k: int = 5, sigma: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = np.linspace(-0.4, 0.4, k)
    mu[k // 2] = 0.0
    return mu, np.full(k, -2.0 * math.log(sigma)), np.log(np.full(k, 1.0 / k))


def test_node_tables_equal_the_torch_tables() -> None:
    mu, lp, lpi = _params()
    nodes = np.array([0, 3, 4, 100, 401])
    value, slope = np.zeros((5, 17)), np.zeros((5, 17))
    jit._node_tables(nodes, -0.5, 1e-3, mu, lp, lpi, value, slope, np.zeros((5, 1), np.uint64))
    x = torch.tensor(-0.5 + 1e-3 * nodes, dtype=torch.float64)
    want_v, want_s = _grid_values(x, *(torch.from_numpy(a) for a in (mu, lp, lpi)))
    np.testing.assert_allclose(value, want_v.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(slope, want_s.numpy(), rtol=1e-12, atol=1e-9)


def test_only_the_nodes_of_occupied_cells_are_evaluated() -> None:
    # Two tight clusters at the ends of a wide range: 8,000 cells, a few dozen of them occupied.
    gen = torch.Generator().manual_seed(0)
    w = torch.cat([-0.4 + 1e-3 * torch.randn(5000, generator=gen), 0.4 + 1e-3 * torch.randn(5000, generator=gen)])
    mu, lp, lpi = _params(sigma=0.0016)
    x0, delta, cells = grid_spec(float(w.min()), float(w.max()), 0.0016, 16.0, torch.float32)
    grid = jit.CompiledGrid(x0, delta, cells, (mu, lp, lpi), 1e-6)
    grid.mark(w)
    grid.build()
    occupied = int(grid.occupied.sum())
    assert cells > 7000 and occupied < 200
    runs = int(grid.occupied[0]) + int((grid.occupied[1:] & ~grid.occupied[:-1]).sum())
    assert grid.value.shape[0] <= occupied + 3 * runs  # each run of occupied cells adds <= 3 nodes
    alone = int((grid.counts == 1).sum())  # the tails: weights alone in their cell go to the exact kernel
    assert grid.interpolate(w, torch.empty_like(w)) == alone < 100
    want = -torch.logsumexp(
        torch.from_numpy(lpi + 0.5 * lp - 0.5 * math.log(2 * math.pi))
        - 0.5 * torch.from_numpy(np.exp(lp)) * (w.double().unsqueeze(1) - torch.from_numpy(mu)) ** 2,
        1,
    ).sum()
    assert abs(grid.sums()[0] - float(want)) <= 1e-6 * abs(float(want))


def _reference(w: torch.Tensor, mu, lp, lpi) -> tuple[float, torch.Tensor]:
    ws = [w.double().clone().requires_grad_()]
    value = mixture_nll_naive(ws, *(torch.from_numpy(a) for a in (mu, lp, lpi)))
    value.backward()
    return float(value.detach()), ws[0].grad


def test_weights_outside_the_grid_or_alone_in_a_cell_are_evaluated_exactly() -> None:
    mu, lp, lpi = _params(sigma=0.1)
    grid = jit.CompiledGrid(-0.5, 1e-3, 1000, (mu, lp, lpi), 1e-6)
    # three weights in one cell (tabulated), one alone in its cell, two outside the grid
    w = torch.tensor([0.0001, 0.0002, 0.0003, -0.6, 0.7, 0.1], dtype=torch.float64)
    grad = torch.empty_like(w)
    grid.mark(w)
    grid.build()
    assert jit.MIN_COUNT == 2 and grid.interpolate(w, grad) == 3
    value, want_grad = _reference(w, mu, lp, lpi)
    assert abs(grid.sums()[0] - value) <= 6e-6
    assert torch.allclose(grad, want_grad, rtol=1e-9, atol=1e-6)


def test_a_nan_weight_makes_the_sum_nan() -> None:
    grid = jit.CompiledGrid(-0.5, 1e-3, 1000, _params(sigma=0.1), 1e-6)
    w = torch.tensor([0.0, 0.0, float("nan")])
    grid.mark(w)
    grid.build()
    assert grid.interpolate(w, torch.empty(3)) == 1
    assert np.isnan(grid.sums()[0])


def test_bad_tensors_are_refused() -> None:
    grid = jit.CompiledGrid(-0.5, 1e-2, 100, _params(), 1e-6)
    with pytest.raises(ValueError, match="1-D contiguous"):
        grid.mark(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="float16"):
        grid.mark(torch.zeros(4, dtype=torch.float16))


def test_switch_and_dtypes(monkeypatch) -> None:
    assert not jit.jit_available(torch.float16)
    monkeypatch.setenv("WEIGHTSHARE_JIT", "0")
    assert not jit.jit_available(torch.float32)


def test_the_grid_kernel_uses_the_compiled_pass(monkeypatch) -> None:
    built = []
    original = jit.CompiledGrid.build
    monkeypatch.setattr(jit.CompiledGrid, "build", lambda self: built.append(1) or original(self))
    w = [torch.linspace(-0.3, 0.3, 2001, dtype=torch.float64)]
    params = [torch.from_numpy(a) for a in _params(sigma=0.05)]
    got = mixture_nll_grid(w, *params)
    assert built == [1]
    assert abs(float(got) - float(mixture_nll_naive(w, *params))) <= 2001 * 1e-6  # N x tol (GRID_TOL)
