"""Codebooks whose entry 0 is the exact zero: the one way weightshare builds them.

Every method ends with, per tensor (or per model), a codebook ``[0.0, c_1, ..., c_K]``
and one index per weight; index 0 is a pruned weight. A value that no weight uses
costs 32 bits in the file and encodes nothing, so codebooks are always built from
the values in use:

* :func:`compact_codebook`: candidate values + per-weight assignments -> codebook + indices
  (:func:`shared_codebook` does the same for one codebook over several tensors);
* :func:`distinct_codebook`: tensors that already hold their final values -> codebook + indices.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["compact_codebook", "distinct_codebook", "shared_codebook"]


# --- construction -----------------------------------------------------------------------------------------------
def _check_assignments(values: torch.Tensor, assignments: torch.Tensor) -> None:
    if values.dim() != 1:
        raise ValueError(f"candidate values must be 1-D, got shape {tuple(values.shape)}")
    if assignments.dtype.is_floating_point or assignments.dtype.is_complex or assignments.dtype == torch.bool:
        raise ValueError(f"assignments must be an integer tensor, got {assignments.dtype}")
    if assignments.numel() and (int(assignments.min()) < 0 or int(assignments.max()) > values.numel()):
        raise ValueError(f"assignments must lie in [0, {values.numel()}] (0 = the zero, k = values[k - 1])")


def compact_codebook(
    values: torch.Tensor, assignments: torch.Tensor, *, sort: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The codebook ``[0.0, used values...]`` and each weight's index into it.

    ``values`` (1-D, K) are the candidates: assignment k >= 1 means ``values[k - 1]``, assignment 0
    the exact zero. Values no weight uses are dropped (an empty k-means cluster costs 32 bits and
    encodes nothing). The kept values are sorted ascending (a stable sort), or keep the candidates'
    order with ``sort=False``. ``codebook[indices] == cat([0], values)[assignments]`` exactly;
    ``indices`` is int64 and shaped like ``assignments``, ``codebook`` has the dtype of ``values``.

    >>> compact_codebook(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[1, 0], [2, 1]]))
    (tensor([ 0.0000, -1.0000,  0.5000]), tensor([[2, 0],
            [1, 2]]))
    >>> compact_codebook(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1, 0, 2, 1]), sort=False)[0]
    tensor([ 0.0000,  0.5000, -1.0000])
    """
    _check_assignments(values, assignments)
    values = values.detach()
    used = torch.unique(assignments[assignments > 0]).to(torch.int64)  # ascending slots
    if sort:
        used = used[torch.argsort(values[used - 1], stable=True)]
    remap = torch.zeros(values.numel() + 1, dtype=torch.int64, device=assignments.device)
    remap[used] = torch.arange(1, used.numel() + 1, device=assignments.device)
    codebook = torch.cat([values.new_zeros(1), values[used - 1]])
    return codebook, remap[assignments.to(torch.int64)]


def _split(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``flat`` cut back into tensors named and shaped like those of ``like`` (own storage each)."""
    parts = flat.split([t.numel() for t in like.values()]) if like else ()
    return {name: part.reshape(t.shape).clone() for (name, t), part in zip(like.items(), parts, strict=True)}


def _flat(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([t.detach().reshape(-1) for t in tensors.values()])


def shared_codebook(
    values: torch.Tensor, assignments: Mapping[str, torch.Tensor], *, sort: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`compact_codebook` for ONE codebook shared by several tensors (a value is kept if any uses it).

    >>> shared_codebook(torch.tensor([0.3, -0.2, 0.9]), {"a": torch.tensor([2, 0]), "b": torch.tensor([2])})
    (tensor([ 0.0000, -0.2000]), {'a': tensor([1, 0]), 'b': tensor([1])})
    """
    codebook, index = compact_codebook(values, _flat(assignments, torch.int64), sort=sort)
    return codebook, _split(index, assignments)


def distinct_codebook(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ONE codebook for tensors that already hold their final values: 0.0, then every other distinct value
    ascending; zeros get index 0. ``codebook[index[name]]`` equals ``tensors[name]`` exactly.

    >>> distinct_codebook({"a": torch.tensor([0.5, 0.0, -0.25]), "b": torch.tensor([0.5])})
    (tensor([ 0.0000, -0.2500,  0.5000]), {'a': tensor([2, 0, 1]), 'b': tensor([2])})
    """
    flat = _flat(tensors, torch.float32)
    nonzero = flat != 0
    values, inverse = torch.unique(flat[nonzero], return_inverse=True)
    assignments = torch.zeros(flat.shape, dtype=torch.int64, device=flat.device)
    assignments[nonzero] = inverse + 1
    codebook, index = compact_codebook(values, assignments)
    return codebook, _split(index, tensors)
