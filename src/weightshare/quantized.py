"""The common result of every method: a codebook and one index per weight.

Every compression method ends in a :class:`QuantizedModel`; the codec, the
accounting, the report and the plots start from it and never need to know which
method produced it (DESIGN.md, "The common result").

Layout:

* ``codebooks``: a list of 1-D float32 tensors; entry 0 of each is exactly 0.0,
  so pruning is the special case "index 0".
* ``quantized``: ordered ``name -> QuantizedTensor`` (indices shaped like the
  weight, plus which codebook they point into). One shared codebook (soft
  weight-sharing, weight fixing) or one per tensor (Deep Compression, ADMM).
* ``dense``: ordered ``name -> float32 tensor`` for everything left
  uncompressed (biases, norms, a skipped last layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["QuantizedModel", "QuantizedTensor"]


@dataclass(frozen=True)
class QuantizedTensor:
    """One weight-shared tensor: ``value = codebooks[codebook][indices]``."""

    indices: torch.Tensor
    codebook: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    @property
    def numel(self) -> int:
        return self.indices.numel()

    @property
    def nnz(self) -> int:
        """Non-zeros, counted from the indices themselves (index 0 is the exact zero)."""
        return int((self.indices != 0).sum())


@dataclass
class QuantizedModel:
    """Per-tensor codebooks + indices, plus the tensors kept dense.

    >>> cb = torch.tensor([0.0, -0.5, 0.5])
    >>> q = QuantizedModel([cb], {"fc.weight": QuantizedTensor(torch.tensor([[0, 1], [2, 0]]))},
    ...                    {"fc.bias": torch.zeros(2)})
    >>> q.to_state_dict()["fc.weight"]
    tensor([[ 0.0000, -0.5000],
            [ 0.5000,  0.0000]])
    >>> q.nnz, q.num_quantized
    (2, 4)
    """

    codebooks: list[torch.Tensor]
    quantized: dict[str, QuantizedTensor]
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codebooks = [torch.as_tensor(c, dtype=torch.float32).detach().cpu().reshape(-1) for c in self.codebooks]
        for i, cb in enumerate(self.codebooks):
            if cb.numel() == 0 or cb[0].item() != 0.0 or math.copysign(1.0, cb[0].item()) < 0:
                raise ValueError(f"codebook {i}: entry 0 must be exactly +0.0, got {cb[:1].tolist()}")
            if not torch.isfinite(cb).all():
                raise ValueError(f"codebook {i}: values must be finite")
        for name, qt in self.quantized.items():
            self._check_tensor(name, qt)
        self.dense = {k: torch.as_tensor(v).detach().cpu().float() for k, v in self.dense.items()}
        overlap = set(self.quantized) & set(self.dense)
        if overlap:
            raise ValueError(f"tensors both quantized and dense: {sorted(overlap)}")

    def _check_tensor(self, name: str, qt: QuantizedTensor) -> None:
        if not 0 <= qt.codebook < len(self.codebooks):
            raise ValueError(f"{name}: codebook {qt.codebook} does not exist ({len(self.codebooks)} codebooks)")
        if qt.indices.dtype.is_floating_point or qt.indices.dtype == torch.bool:
            raise ValueError(f"{name}: indices must be an integer tensor, got {qt.indices.dtype}")
        size = self.codebooks[qt.codebook].numel()
        if qt.indices.numel() and (int(qt.indices.min()) < 0 or int(qt.indices.max()) >= size):
            raise ValueError(f"{name}: indices must lie in [0, {size}) for codebook {qt.codebook}")

    # --- construction -------------------------------------------------
    @classmethod
    def from_assignments(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        assignments: Mapping[str, torch.Tensor],
        codebooks: list[torch.Tensor],
        codebook_of: Mapping[str, int] | None = None,
        meta: dict[str, object] | None = None,
    ) -> QuantizedModel:
        """Build from a model's state dict: tensors named in ``assignments`` become
        quantized (indices into ``codebooks[codebook_of[name]]``, default 0); every
        other floating-point tensor is kept dense, in state-dict order."""
        codebook_of = codebook_of or {}
        quantized, dense = {}, {}
        for name, tensor in state_dict.items():
            if name in assignments:
                idx = assignments[name].to(torch.int64).reshape(tensor.shape)
                quantized[name] = QuantizedTensor(idx, codebook_of.get(name, 0))
            elif tensor.dtype.is_floating_point:
                dense[name] = tensor
        missing = set(assignments) - set(quantized)
        if missing:
            raise KeyError(f"assignments for tensors not in the state dict: {sorted(missing)}")
        return cls(codebooks, quantized, dense, dict(meta or {}))

    # --- views ----------------------------------------------------------
    def dequantize(self, name: str) -> torch.Tensor:
        qt = self.quantized[name]
        return self.codebooks[qt.codebook][qt.indices]

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors as float32, quantized ones replaced by their codebook values."""
        out = {name: self.dequantize(name) for name in self.quantized}
        out.update({name: t.clone() for name, t in self.dense.items()})
        return out

    def load_into(self, model: nn.Module, strict: bool = True) -> nn.Module:
        """Copy the weights into an ordinary ``nn.Module`` (no special layers) and return it."""
        own = model.state_dict()
        state = self.to_state_dict()
        for name, tensor in state.items():
            if name in own and tuple(own[name].shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match the model's {tuple(own[name].shape)}")
        # Buffers that are not parameters (e.g. BatchNorm's num_batches_tracked) stay as they are.
        for name, tensor in own.items():
            if name not in state and not tensor.dtype.is_floating_point:
                state[name] = tensor
        model.load_state_dict(state, strict=strict)
        return model

    # --- statistics (always counted from the indices themselves) --------
    @property
    def num_quantized(self) -> int:
        return sum(qt.numel for qt in self.quantized.values())

    @property
    def num_dense(self) -> int:
        return sum(t.numel() for t in self.dense.values())

    @property
    def nnz(self) -> int:
        return sum(qt.nnz for qt in self.quantized.values())

    def unique_values(self, name: str | None = None) -> int:
        """Distinct values in one quantized tensor, or across all of them (zero included)."""
        names = [name] if name is not None else list(self.quantized)
        values = [self.dequantize(n).reshape(-1) for n in names]
        return int(torch.unique(torch.cat(values)).numel()) if values else 0

    def summary(self) -> list[dict[str, object]]:
        """One row per quantized tensor: shape, size, non-zeros, distinct values."""
        return [
            {
                "name": name,
                "shape": list(qt.shape),
                "numel": qt.numel,
                "nnz": qt.nnz,
                "unique": self.unique_values(name),
                "codebook": qt.codebook,
            }
            for name, qt in self.quantized.items()
        ]
