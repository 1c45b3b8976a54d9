"""Codebooks with entry 0 = 0.0: the one constructor."""

from __future__ import annotations

import math

import pytest
import torch

from weightshare.core.codebook import compact_codebook, distinct_codebook, shared_codebook

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
