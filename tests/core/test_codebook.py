"""Codebooks with entry 0 = 0.0: the one constructor, and weights tied to C[I] (Han et al. 2016, Sec. 3.3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightshare.core.codebook import (
    SharedWeights,
    TiedCodebooks,
    compact_codebook,
    distinct_codebook,
    shared_codebook,
)

# --- the constructor ------------------------------------------------------------------------------------------


def test_compact_codebook_on_a_hand_made_example() -> None:
    values = torch.tensor([0.5, -1.0, 2.0, 7.0])  # 2.0 (assignment 3) is used by no weight
    assignments = torch.tensor([[1, 0, 2], [1, 4, 0]])
    codebook, index = compact_codebook(values, assignments)
    assert codebook.tolist() == [0.0, -1.0, 0.5, 7.0]
    assert index.tolist() == [[2, 0, 1], [2, 3, 0]] and index.dtype == torch.int64
    codebook, index = compact_codebook(values, assignments, sort=False)  # the candidates' order
    assert codebook.tolist() == [0.0, 0.5, -1.0, 7.0]
    assert index.tolist() == [[1, 0, 2], [1, 3, 0]]


def _reference(values: list[float], assignments: list[int]) -> tuple[list[float], list[int]]:
    """0.0, then the used values ascending; each weight's position of its value in that list."""
    used = sorted({a for a in assignments if a > 0}, key=lambda a: values[a - 1])
    position = {a: i + 1 for i, a in enumerate(used)}
    return [0.0] + [values[a - 1] for a in used], [position.get(a, 0) for a in assignments]


@pytest.mark.parametrize("seed", range(5))
def test_compact_codebook_matches_a_simple_reference_on_random_data(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = 40
    values = torch.randn(k, generator=gen)
    # Few weights for many candidates: several values stay unused, and index 0 is frequent.
    assignments = torch.randint(0, k + 1, (7, 5), generator=gen)
    assignments[assignments % 3 == 0] = 0
    codebook, index = compact_codebook(values, assignments)
    ref_codebook, ref_index = _reference(values.tolist(), assignments.reshape(-1).tolist())
    assert codebook.tolist() == ref_codebook and index.reshape(-1).tolist() == ref_index
    assert codebook[0].item() == 0.0 and math.copysign(1.0, codebook[0].item()) > 0
    assert bool((codebook[2:] > codebook[1:-1]).all())  # ascending
    assert set(index.unique().tolist()) - {0} == set(range(1, codebook.numel()))  # no unused entry
    assert torch.equal(codebook[index], torch.cat([torch.zeros(1), values])[assignments])  # exact


def test_shared_codebook_is_compact_codebook_over_all_tensors() -> None:
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(12, dtype=torch.float64, generator=gen)
    parts = {"a": torch.randint(0, 13, (4, 3), generator=gen), "b": torch.randint(0, 5, (6,), generator=gen)}
    codebook, index = shared_codebook(values, parts)
    whole, flat = compact_codebook(values, torch.cat([parts["a"].reshape(-1), parts["b"]]))
    assert torch.equal(codebook, whole) and codebook.dtype == torch.float64
    assert torch.equal(index["a"], flat[:12].reshape(4, 3)) and torch.equal(index["b"], flat[12:])


def test_distinct_codebook_reproduces_the_values_exactly() -> None:
    gen = torch.Generator().manual_seed(4)
    levels = torch.tensor([0.0, -0.375, 0.125, 0.5, -2.0])
    tensors = {"a": levels[torch.randint(0, 5, (8, 8), generator=gen)], "b": torch.tensor([0.5, -0.0, 3.0])}
    codebook, index = distinct_codebook(tensors)
    assert codebook.tolist() == [0.0, -2.0, -0.375, 0.125, 0.5, 3.0]
    for name, t in tensors.items():
        assert torch.equal(codebook[index[name]], t) and bool((index[name] == 0).eq(t == 0).all())


@pytest.mark.parametrize(
    ("values", "assignments", "message"),
    [
        (torch.zeros(2, 2), torch.tensor([0]), "must be 1-D"),
        (torch.zeros(3), torch.tensor([0.0, 1.0]), "integer tensor"),
        (torch.zeros(3), torch.tensor([0, 4]), r"must lie in \[0, 3\]"),
        (torch.zeros(3), torch.tensor([-1, 2]), r"must lie in \[0, 3\]"),
    ],
)
def test_compact_codebook_refuses_bad_input(values: torch.Tensor, assignments: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compact_codebook(values, assignments)


# --- weights tied to C[I] -------------------------------------------------------------------------------------


def _tied_linear(zero_slot: bool) -> tuple[nn.Linear, TiedCodebooks, torch.Tensor]:
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    index = torch.tensor([[1, 0, 2, 3, 1, 0], [0, 3, 3, 2, 1, 0], [2, 2, 0, 1, 3, 1], [0, 0, 1, 3, 2, 2]])
    codebook = torch.tensor([0.0, -0.5, 0.25, 0.75])
    stored = {"w": codebook if zero_slot else codebook[1:]}
    tied = TiedCodebooks({"weight": layer.weight}, stored, {"weight": index}, {"weight": "w"}, zero_slot=zero_slot)
    tied.tie()
    return layer, tied, index


@pytest.mark.parametrize("zero_slot", [True, False])
def test_one_sgd_step_trains_the_codebook_by_the_summed_gradient(zero_slot: bool) -> None:
    layer, tied, index = _tied_linear(zero_slot)
    assert torch.equal(layer.weight.detach(), torch.tensor([0.0, -0.5, 0.25, 0.75])[index])  # tie() writes C[I]
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    # The gradient of a plain dense copy of W = C[I], summed by hand over each index.
    dense = layer.weight.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(x, dense, layer.bias.detach()), y).backward()
    by_hand = torch.stack([torch.tensor(0.0)] + [dense.grad[index == k].sum() for k in (1, 2, 3)])
    # Weight decay and momentum act on every parameter: write() must undo what they do to the tied weight.
    opt = torch.optim.SGD([*layer.parameters(), *tied.parameters()], lr=0.1, momentum=0.9, weight_decay=0.1)
    F.cross_entropy(layer(x), y).backward()
    got = tied.codebooks["w"].grad
    assert torch.allclose(got, by_hand if zero_slot else by_hand[1:], atol=1e-7, rtol=1e-6)
    assert float(by_hand.abs().sum()) > 0 and torch.equal(layer.weight.grad, torch.zeros(4, 6))
    opt.step()
    tied.write()
    full = tied.codebook("weight")
    assert full[0].item() == 0.0 and full.numel() == 4  # the exact zero got no gradient and stays 0
    expected = torch.tensor([0.0, -0.5, 0.25, 0.75]) * (1 - 0.1 * 0.1) - 0.1 * by_hand
    assert torch.allclose(full, expected, atol=1e-7)
    assert torch.equal(layer.weight.detach(), full[index])  # W = C[I] exactly
    assert bool((layer.weight.detach()[index == 0] == 0).all())  # pruned weights stay 0


def test_removing_the_hooks_restores_plain_gradients() -> None:
    layer, tied, _ = _tied_linear(zero_slot=True)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    plain = layer.weight.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(x, plain, layer.bias.detach()), y).backward()
    assert tied.tied
    tied.remove_hooks()
    assert not tied.tied
    F.cross_entropy(layer(x), y).backward()
    assert torch.allclose(layer.weight.grad, plain.grad) and float(plain.grad.abs().sum()) > 0
    assert tied.codebooks["w"].grad is None  # nothing reached the codebook


def test_state_round_trip_fills_the_same_parameters_in_place() -> None:
    layer, tied, index = _tied_linear(zero_slot=False)
    with torch.no_grad():
        tied.codebooks["w"].add_(0.125)
    state = tied.state_dict()
    assert set(state) == {"codebook.w", "index.weight"}
    again = TiedCodebooks({"weight": layer.weight}, {"w": torch.zeros(3)}, codebook_of={"weight": "w"}, zero_slot=False)
    param = again.codebooks["w"]
    again.load_state_dict(state)
    assert again.codebooks["w"] is param and torch.equal(param.detach(), torch.tensor([-0.375, 0.375, 0.875]))
    assert torch.equal(again.indices["weight"], index) and not again.tied


def test_shared_weights_write_c_of_i_and_check_shapes() -> None:
    weights = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    shared = SharedWeights(weights, {"cb": torch.tensor([0.0, 1.5, -2.0])}, codebook_of={"a": "cb", "b": "cb"})
    shared.set_indices({"a": torch.tensor([[1, 0, 2], [2, 2, 0]]), "b": torch.tensor([0, 1, 1, 2])})
    shared.write()
    assert weights["a"].tolist() == [[1.5, 0.0, -2.0], [-2.0, -2.0, 0.0]] and weights["b"].tolist() == [0, 1.5, 1.5, -2]
    with pytest.raises(ValueError, match="indices of shape"):
        shared.set_indices({"b": torch.zeros(2, 2, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        shared.set_indices({"b": torch.tensor([0, 1, 2, 3])})
    with pytest.raises(KeyError, match="codebooks that were not given"):
        SharedWeights(weights, {"cb": torch.zeros(1)})
