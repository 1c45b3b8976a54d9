"""The two greedy knapsack solvers behind the ADMM method's projections (Yang, Gui, Zhu & Liu, CVPR 2020).

Yang et al. cast both projections of their ADMM splitting as knapsack problems and solve them greedily
(docs/methods.md#admm-knapsacks; the authors' ``util.py``: ``quantized_sparsify`` and ``mckp_greedy``):

* **Sparse projection = 0-1 knapsack** (:func:`greedy_keep`, :func:`prune_to_budget`). An item is one
  weight with value w² and cost b_l, the bit width of its layer; the capacity is the model-size budget
  S bits. Items are ranked by value per cost, w²/b_l, and the longest prefix of that ranking whose cost
  fits is kept. (The reference keeps one item fewer than fits, an off-by-one we do not copy.)
* **Bit allocation = multiple-choice knapsack** (:func:`mckp_greedy`). A group is one layer and its
  options are the candidate bit widths b, with cost b·nnz_l and loss D_l(b), the quantization
  distortion. Options that are dominated (no less loss for more cost) or lie above the lower convex
  hull of (cost, loss) are dropped; every group starts at its cheapest option; upgrades are applied in
  order of loss saved per extra cost, each while it still fits; a group whose next upgrade does not fit
  is closed (its later upgrades need that one first), the others continue.

For separable convex losses with equal upgrade costs the greedy allocation is optimal (the marginal
allocation argument); in general it is the LP-relaxation's solution without its one fractional item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["greedy_keep", "prune_to_budget", "efficient_options", "mckp_greedy"]


# --- 0-1 knapsack: the sparse projection ----------------------------------------------------------------------------
def greedy_keep(values: torch.Tensor, costs: torch.Tensor, budget: float) -> torch.Tensor:
    """Boolean mask of the items kept by the greedy 0-1 knapsack: rank by value / cost (ties: earlier
    item first) and keep the longest prefix of the ranking whose summed cost is <= ``budget``.

    >>> greedy_keep(torch.tensor([4.0, 1.0, 9.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]), 2)
    tensor([ True, False,  True, False])
    >>> greedy_keep(torch.tensor([4.0, 3.0]), torch.tensor([4.0, 1.0]), 4.5)  # 3/1 ranks first; 4 more bits do not fit
    tensor([False,  True])
    """
    values, costs = values.reshape(-1), costs.reshape(-1)
    if values.numel() != costs.numel():
        raise ValueError(f"{values.numel()} values but {costs.numel()} costs")
    if costs.numel() and float(costs.min()) <= 0:
        raise ValueError("greedy_keep needs positive costs")
    order = torch.argsort(values.to(torch.float64) / costs.to(torch.float64), descending=True, stable=True)
    spent = torch.cumsum(costs.to(torch.float64)[order], 0)
    n_keep = int(torch.searchsorted(spent, torch.tensor([float(budget)], dtype=torch.float64), right=True))
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    keep[order[:n_keep]] = True
    return keep


def prune_to_budget(weights: Sequence[torch.Tensor], bits: Sequence[float], budget: float) -> list[torch.Tensor]:
    """Yang's sparse projection over a whole network: one keep-mask per tensor, maximising the kept
    sum of w² while sum over kept weights of their layer's bit width stays <= ``budget`` (greedily, by w²/b_l).

    >>> w = [torch.tensor([0.1, -3.0, 0.5]), torch.tensor([2.0, 0.2])]
    >>> [m.tolist() for m in prune_to_budget(w, [1, 2], 3)]  # w²/b: 0.01 9 0.25 | 2 0.02; -3 and 2 cost 1 + 2 bits
    [[False, True, False], [True, False]]
    """
    if len(weights) != len(bits):
        raise ValueError(f"{len(weights)} tensors but {len(bits)} bit widths")
    values = torch.cat([w.detach().reshape(-1).to(torch.float64) ** 2 for w in weights])
    costs = torch.cat(
        [torch.full((w.numel(),), float(b), dtype=torch.float64) for w, b in zip(weights, bits, strict=True)]
    )
    keep = greedy_keep(values, costs, budget)
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start : start + w.numel()].reshape(w.shape).to(w.device))
        start += w.numel()
    return masks


# --- multiple-choice knapsack: the bit allocation -------------------------------------------------------------------
def _saving_rate(costs: Sequence[float], losses: Sequence[float], a: int, b: int) -> float:
    """Loss saved per extra unit of cost when moving from option ``a`` to the costlier option ``b``."""
    return (losses[a] - losses[b]) / (costs[b] - costs[a])


def efficient_options(costs: Sequence[float], losses: Sequence[float]) -> list[int]:
    """Indices of the options worth considering, cheapest first: the lower convex hull of (cost, loss).

    An option is dropped if a cheaper (or equally cheap) one has no more loss (dominated), or if a
    later upgrade saves at least as much loss per extra cost (not convex, as in ``mckp_greedy``).
    Along the result, costs rise, losses fall and the saving per extra cost strictly falls.

    >>> efficient_options([1, 2, 3, 4], [10.0, 9.0, 2.0, 2.0])  # 2 bits lies above the hull, 4 is dominated
    [0, 2]
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], losses[i], i))
    frontier: list[int] = []
    for i in order:
        if not frontier or losses[i] < losses[frontier[-1]]:
            frontier.append(i)  # sorted by cost then loss, so an equal cost never gets here with less loss
    hull: list[int] = []
    for i in frontier:
        while len(hull) >= 2 and _saving_rate(costs, losses, hull[-2], hull[-1]) <= _saving_rate(
            costs, losses, hull[-1], i
        ):
            hull.pop()
        hull.append(i)
    return hull


def mckp_greedy(costs: Sequence[Sequence[float]], losses: Sequence[Sequence[float]], budget: float) -> list[int]:
    """Choose one option per group so that the summed cost stays <= ``budget``, greedily minimising the
    summed loss (see the module docstring). Returns the chosen option's index in each group.

    Raises ValueError when even the cheapest options exceed the budget.

    >>> costs = [[10, 20, 30], [5, 10, 15]]           # two layers, 1-3 bits, 10 and 5 non-zeros
    >>> losses = [[8.0, 2.0, 1.0], [4.0, 1.0, 0.5]]
    >>> mckp_greedy(costs, losses, 35)  # saved/bit 0.6 0.1 | 0.6 0.1; a 3rd bit fits layer 1 only
    [1, 2]
    """
    if len(costs) != len(losses) or any(len(c) != len(v) or not c for c, v in zip(costs, losses, strict=False)):
        raise ValueError("every group needs as many losses as costs, and at least one option")
    hulls = [efficient_options(c, v) for c, v in zip(costs, losses, strict=True)]
    position = [0] * len(hulls)
    spent = sum(costs[g][hull[0]] for g, hull in enumerate(hulls))
    if spent > budget:
        raise ValueError(f"the cheapest options cost {spent:g}, more than the budget {budget:g}")
    upgrades = [
        (_saving_rate(costs[g], losses[g], hull[k - 1], hull[k]), g, k)
        for g, hull in enumerate(hulls)
        for k in range(1, len(hull))
    ]
    upgrades.sort(key=lambda u: -u[0])  # stable: ties keep group order; within a group rates strictly fall
    closed: set[int] = set()
    for _, g, k in upgrades:
        if g in closed:
            continue
        extra = costs[g][hulls[g][k]] - costs[g][hulls[g][k - 1]]
        if spent + extra > budget:
            closed.add(g)  # Yang's mckp_greedy: this group's later upgrades need this one first
            continue
        position[g], spent = k, spent + extra
    return [hull[p] for hull, p in zip(hulls, position, strict=True)]
