"""The greedy knapsack projections of the ADMM method: budgets, importance order, optimality where it holds."""

import itertools
import random

import pytest
import torch

from weightshare.methods.admm.knapsack import efficient_options, greedy_keep, mckp_greedy, prune_to_budget

# --- 0-1 knapsack (sparse projection) ----------------------------------------------------------------------------


def test_sparse_projection_keeps_the_most_important_weights_on_a_hand_made_example():
    # layer a at 2 bits, layer b at 4 bits; importance = w^2 / b
    a = torch.tensor([3.0, -0.1, 1.0, -2.0])  # 4.5, 0.005, 0.5, 2.0
    b = torch.tensor([4.0, 0.5, -3.0])  # 4.0, 0.0625, 2.25
    # ranking: a0 (2 bits), b0 (4), b2 (4), a3 (2), a2 (2), b1 (4), a1 (2): cumulative bits 2 6 10 12 14 18 20
    masks = prune_to_budget([a, b], [2, 4], 10)
    assert masks[0].tolist() == [True, False, False, False]
    assert masks[1].tolist() == [True, False, True]
    assert [m.tolist() for m in prune_to_budget([a, b], [2, 4], 11)] == [m.tolist() for m in masks]  # a3 needs 2
    masks = prune_to_budget([a, b], [2, 4], 12)  # now a3 fits exactly
    assert masks[0].tolist() == [True, False, False, True] and masks[1].tolist() == [True, False, True]
    # 16 bits: a2 is in (14), b1 (4 bits) is not; a1 would fit but the greedy keeps a prefix of the ranking
    masks = prune_to_budget([a, b], [2, 4], 16)
    assert masks[0].tolist() == [True, False, True, True] and masks[1].tolist() == [True, False, True]


@pytest.mark.parametrize("seed", range(5))
def test_sparse_projection_fills_the_budget_exactly_and_by_importance(seed):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(n, generator=gen) for n in (300, 120, 40)]
    bits = [3, 1, 5]
    budget = 200.0 + seed * 37
    masks = prune_to_budget(weights, bits, budget)
    spent = sum(b * int(m.sum()) for m, b in zip(masks, bits, strict=True))
    assert spent <= budget
    scores = [w**2 / b for w, b in zip(weights, bits, strict=True)]
    kept = torch.cat([s[m] for s, m in zip(scores, masks, strict=True)])
    dropped = torch.cat([s[~m] for s, m in zip(scores, masks, strict=True)])
    assert float(kept.min()) >= float(dropped.max())
    # the best dropped weight would not have fitted
    best = int(torch.argmax(torch.cat([torch.where(m, -1.0, s) for s, m in zip(scores, masks, strict=True)])))
    layer = 0 if best < 300 else 1 if best < 420 else 2
    assert spent + bits[layer] > budget


def test_equal_costs_keep_exactly_floor_budget_over_cost():
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    keep = greedy_keep(values, torch.full((1000,), 3.0), 3 * 54 + 2)
    assert int(keep.sum()) == 54 and float(values[keep].min()) >= float(values[~keep].max())


def test_greedy_keep_refuses_bad_input():
    with pytest.raises(ValueError, match="positive costs"):
        greedy_keep(torch.ones(2), torch.tensor([1.0, 0.0]), 3)
    with pytest.raises(ValueError, match="2 values but 3 costs"):
        greedy_keep(torch.ones(2), torch.ones(3), 3)


# --- multiple-choice knapsack (bit allocation) ----------------------------------------------------------------------


def test_dominated_and_non_convex_options_are_dropped():
    costs = [1, 2, 3, 4, 5]
    losses = [10.0, 9.5, 4.0, 4.0, 3.9]  # option 1 is above the hull (0 -> 2 saves 3/bit), 3 is dominated
    assert efficient_options(costs, losses) == [0, 2, 4]
    assert efficient_options([2, 1, 1], [1.0, 5.0, 3.0]) == [2, 0]  # equal cost: the smaller loss wins


def test_greedy_upgrades_by_saving_per_bit_and_skips_dominated_options():
    # layer 0: 100 non-zeros, layer 1: 10 non-zeros, bits 1..3
    costs = [[100, 200, 300], [10, 20, 30]]
    losses = [[5.0, 4.0, 3.5], [9.0, 1.0, 1.0]]  # layer 1's third bit gains nothing
    assert mckp_greedy(costs, losses, 130) == [0, 1]  # 0.8/bit for layer 1 first; layer 0's +100 bits do not fit
    assert mckp_greedy(costs, losses, 220) == [1, 1]
    assert mckp_greedy(costs, losses, 10_000) == [2, 1]  # never pays for the useless third bit


def test_infeasible_budget_is_refused():
    with pytest.raises(ValueError, match="cheapest options cost 15, more than the budget 14"):
        mckp_greedy([[10, 20], [5]], [[1.0, 0.5], [0.0]], 14)


def _brute_force(costs, losses, budget):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        cost = sum(c[j] for c, j in zip(costs, pick, strict=True))
        loss = sum(v[j] for v, j in zip(losses, pick, strict=True))
        if cost <= budget and (best is None or loss < best):
            best = loss
    return best


@pytest.mark.parametrize("seed", range(40))
def test_bit_allocation_matches_brute_force_on_convex_equal_size_layers(seed):
    # Quantization distortion falls about 4x per extra bit; with equal non-zeros every upgrade costs the
    # same, and for separable convex losses the greedy marginal allocation is optimal.
    rng = random.Random(seed)
    bits = range(1, 9)
    nnz = rng.randint(5, 50)
    layers = 3
    scales = [(rng.uniform(0.5, 5.0), rng.uniform(3.0, 5.0)) for _ in range(layers)]
    losses = [[a * r**-b for b in bits] for a, r in scales]
    costs = [[b * nnz for b in bits] for _ in range(layers)]
    budget = rng.randint(layers * nnz, 8 * layers * nnz + 5)
    pick = mckp_greedy(costs, losses, budget)
    assert sum(c[j] for c, j in zip(costs, pick, strict=True)) <= budget
    assert sum(v[j] for v, j in zip(losses, pick, strict=True)) == pytest.approx(_brute_force(costs, losses, budget))


@pytest.mark.parametrize("seed", range(40))
def test_bit_allocation_never_exceeds_the_budget(seed):
    rng = random.Random(seed)
    layers = rng.randint(1, 5)
    costs, losses = [], []
    for _ in range(layers):
        nnz = rng.randint(0, 40)
        costs.append([b * nnz for b in range(1, 9)])
        losses.append([rng.uniform(0, 10) for _ in range(8)])  # anything: non-monotone, non-convex
    budget = sum(c[0] for c in costs) + rng.randint(0, 200)
    pick = mckp_greedy(costs, losses, budget)
    assert sum(c[j] for c, j in zip(costs, pick, strict=True)) <= budget
    best = _brute_force(costs, losses, budget)
    greedy = sum(v[j] for v, j in zip(losses, pick, strict=True))
    assert greedy >= best - 1e-12  # sanity: never "better" than the optimum
