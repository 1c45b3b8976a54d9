"""Codebooks whose entry 0 is the exact zero: the one way weightshare builds and trains them.

Every method ends with, per tensor (or per model), a codebook ``[0.0, c_1, ..., c_K]``
and one index per weight; index 0 is a pruned weight. A value that no weight uses
costs 32 bits in the file and encodes nothing, so codebooks are always built from
the values in use:

* :func:`compact_codebook`: candidate values + per-weight assignments -> codebook + indices
  (:func:`shared_codebook` does the same for one codebook over several tensors);
* :func:`distinct_codebook`: tensors that already hold their final values -> codebook + indices.

Stages that keep every assignment fixed and move only the shared values (Han, Mao & Dally
2016, Sec. 3.3: Deep Compression's centroid fine-tuning, codebook fine-tuning after any
method, ADMM's straight-through fine-tuning) share :class:`SharedWeights`, the per-tensor
codebook/index bookkeeping with ``W = C[I]`` written into the model, and
:class:`TiedCodebooks`, which trains the codebooks through gradient hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["SharedWeights", "TiedCodebooks", "compact_codebook", "distinct_codebook", "shared_codebook"]


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


# --- weights that are C[I] ---------------------------------------------------------------------------------------
class SharedWeights:
    """Weights that are ``C[I]``: per weight an index tensor into one of a few named codebooks (entry 0 = 0.0).

    ``codebook_of`` maps a weight to its codebook's key (default: a codebook per weight, under the
    weight's own name). ``zero_slot``: each stored codebook holds entry 0 itself (True), or only the
    values 1..K, the zero being implied (False; Deep Compression's centroids). Codebooks are plain
    tensors here, replaced at will (ADMM's fine-tuning refreshes them by Lloyd steps);
    :class:`TiedCodebooks` trains them as parameters.

    >>> w = nn.Parameter(torch.zeros(2, 2))
    >>> shared = SharedWeights({"w": w}, {"w": torch.tensor([0.0, -1.0, 2.0])}, {"w": torch.tensor([[0, 1], [2, 2]])})
    >>> shared.write()
    >>> w.detach()
    tensor([[ 0., -1.],
            [ 2.,  2.]])
    """

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        codebooks: Mapping[str, torch.Tensor],
        indices: Mapping[str, torch.Tensor] | None = None,
        codebook_of: Mapping[str, str] | None = None,
        *,
        zero_slot: bool = True,
    ) -> None:
        self.weights, self.zero_slot = dict(weights), zero_slot
        self.codebook_of = {n: (codebook_of or {}).get(n, n) for n in self.weights}
        missing = sorted({k for k in self.codebook_of.values() if k not in codebooks})
        if missing:
            raise KeyError(f"weights point to codebooks that were not given: {missing}")
        self.codebooks = {k: self._own(c) for k, c in codebooks.items()}
        self.indices = {n: torch.zeros_like(w, dtype=torch.int64) for n, w in self.weights.items()}
        self.set_indices(indices or {})

    def _own(self, codebook: torch.Tensor) -> torch.Tensor:
        if codebook.dim() != 1:
            raise ValueError(f"a codebook must be 1-D, got shape {tuple(codebook.shape)}")
        return codebook.detach()

    def set_codebook(self, key: str, values: torch.Tensor) -> None:
        """Replace codebook ``key`` (laid out as ``zero_slot`` says)."""
        self.codebooks[key] = self._own(values).to(self.codebooks[key].device)

    def set_indices(self, indices: Mapping[str, torch.Tensor]) -> None:
        """Set the indices of the named weights (each shaped like its weight, within its codebook)."""
        for name, index in indices.items():
            shape = tuple(self.weights[name].shape)
            if tuple(index.shape) != shape:
                raise ValueError(f"{name}: indices of shape {tuple(index.shape)} for a weight of shape {shape}")
            if index.dtype.is_floating_point or index.dtype == torch.bool:
                raise ValueError(f"{name}: indices must be an integer tensor, got {index.dtype}")
            size = self.codebooks[self.codebook_of[name]].numel() + (0 if self.zero_slot else 1)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
                raise ValueError(f"{name}: indices must lie in [0, {size}) for its codebook")
            self.indices[name] = index.to(device=self.weights[name].device, dtype=torch.int64)

    def codebook(self, name: str) -> torch.Tensor:
        """The codebook of weight ``name``, entry 0 = 0.0 (detached)."""
        codebook = self.codebooks[self.codebook_of[name]].detach()
        return codebook if self.zero_slot else torch.cat([codebook.new_zeros(1), codebook])

    def value(self, name: str) -> torch.Tensor:
        """Weight ``name`` as ``C[I]``."""
        return self.codebook(name)[self.indices[name]]

    @torch.no_grad()
    def write(self) -> None:
        """Put ``W = C[I]`` into every weight, in place."""
        for name, weight in self.weights.items():
            weight.copy_(self.value(name))

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix}codebook.<key>`` and ``{prefix}index.<weight>``, for checkpoints."""
        state = {f"{prefix}codebook.{k}": c.detach() for k, c in self.codebooks.items()}
        return state | {f"{prefix}index.{n}": i for n, i in self.indices.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Restore what :meth:`state_dict` returned."""
        for key in self.codebooks:
            self.set_codebook(key, state[f"{prefix}codebook.{key}"])
        self.set_indices({n: state[f"{prefix}index.{n}"] for n in self.weights})


class TiedCodebooks(SharedWeights):
    """Trainable codebooks, every assignment fixed: the weights are tied to ``C[I]``.

    Deep Compression's centroid fine-tuning (Han, Mao & Dally 2016, Sec. 3.3, Fig. 3): the gradient of a
    shared value is the sum of the gradients of the weights that use it,
    ``dL/dC_k = sum over {I == k} of dL/dW``. After :meth:`tie`, each weight's gradient hook adds dL/dW
    into its codebook's gradient and hands the weight a zero gradient; entry 0, the exact zero, gets
    none, so pruned weights stay pruned. After each optimizer step :meth:`write` puts ``W = C[I]`` back
    (momentum or weight decay may have moved the weights).

    With ``zero_slot`` (the default), entry 0 of each codebook parameter is reset to 0.0 on every write.

    >>> net = nn.Linear(2, 1, bias=False)
    >>> tied = TiedCodebooks({"weight": net.weight}, {"weight": torch.tensor([0.0, 0.5])},
    ...                      {"weight": torch.tensor([[1, 1]])})
    >>> tied.tie()
    >>> net(torch.tensor([[1.0, 2.0]])).sum().backward()
    >>> tied.codebooks["weight"].grad, net.weight.grad
    (tensor([0., 3.]), tensor([[0., 0.]]))
    """

    codebooks: dict[str, nn.Parameter]
    _hooks: tuple[RemovableHandle, ...] = ()  # set by tie(): a tuple, so no instance shares a list

    def _own(self, codebook: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(super()._own(codebook).clone())

    @torch.no_grad()
    def set_codebook(self, key: str, values: torch.Tensor) -> None:
        """Fill codebook ``key`` in place (the optimizer holds the parameter); missing trailing values are 0."""
        codebook = self.codebooks[key]
        if values.dim() != 1 or values.numel() > codebook.numel():
            raise ValueError(f"codebook {key}: {tuple(values.shape)} values for {codebook.numel()} slots")
        codebook.zero_()
        codebook[: values.numel()] = values

    def parameters(self) -> list[nn.Parameter]:
        return list(self.codebooks.values())

    @property
    def tied(self) -> bool:
        return bool(self._hooks)

    def tie(self) -> None:
        """Install the gradient hooks (once) and write ``W = C[I]``."""
        if not self._hooks:
            self._hooks = tuple(w.register_hook(self._grad_hook(n)) for n, w in self.weights.items())
        self.write()

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        key, offset = self.codebook_of[name], 0 if self.zero_slot else 1

        def hook(grad: torch.Tensor) -> torch.Tensor:
            codebook = self.codebooks[key]
            index = self.indices[name].reshape(-1)
            summed = grad.new_zeros(codebook.numel() + offset).index_add_(0, index, grad.reshape(-1))
            summed[0] = 0.0  # the exact zero is no shared value: pruned weights stay pruned
            summed = summed[offset:]
            codebook.grad = summed if codebook.grad is None else codebook.grad + summed
            return torch.zeros_like(grad)  # W is C[I]; write() puts it back after the step

        return hook

    @torch.no_grad()
    def write(self) -> None:
        if self.zero_slot:
            for codebook in self.codebooks.values():
                codebook[0] = 0.0
        super().write()

    def remove_hooks(self) -> None:
        """Untie: the weights get their plain gradients again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = ()
