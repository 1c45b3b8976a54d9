"""The common result of every method: a codebook and one index per weight.

Every compression method ends in a :class:`QuantizedModel`; the codec, the
accounting, the report and the plots start from it and never need to know which
method produced it (docs/methods.md#pipeline-quantizedmodel).

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

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from weightshare.core.errors import FormatError
from weightshare.core.io import atomic_write_bytes

__all__ = ["QuantizedModel", "QuantizedTensor", "load_quantized", "save_quantized"]


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
        # Own copies: a dense tensor taken from model.state_dict() would otherwise follow the model's training.
        self.dense = {k: torch.as_tensor(v).detach().cpu().float().clone() for k, v in self.dense.items()}
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

    @classmethod
    def from_trusted(
        cls,
        codebooks: list[torch.Tensor],
        quantized: dict[str, QuantizedTensor],
        dense: dict[str, torch.Tensor],
        meta: dict[str, object],
    ) -> QuantizedModel:
        """Build without re-validating, for a decoder that already guarantees every invariant
        (1-D float32 codebooks with entry 0 = +0.0 and finite values, int64 indices in range,
        float32 dense tensors, disjoint names). Skips the O(#weights) checks of ``__init__``."""
        obj = cls.__new__(cls)
        obj.codebooks, obj.quantized, obj.dense, obj.meta = codebooks, quantized, dense, meta
        return obj

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
                raise ValueError(
                    f"{name}: shape {tuple(tensor.shape)} does not match the model's {tuple(own[name].shape)}"
                )
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


# --- quantized checkpoint (safetensors + JSON metadata, never pickle) ---------
CHECKPOINT_FORMAT = "weightshare.quantized"  # a file-format id, not a module path: never changes
CHECKPOINT_VERSION = 1


def _index_dtype(size: int) -> torch.dtype:
    """The smallest integer type that holds every index of a codebook of ``size`` entries."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if size - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike) -> None:
    """Save a :class:`QuantizedModel` as a safetensors "quantized checkpoint" (written atomically).

    Tensor keys are ``codebook.<i>``, ``q.<name>`` (indices, smallest integer type) and
    ``d.<name>``; the metadata holds the tensor order, codebook references and ``meta`` as JSON.
    """
    tensors = {f"codebook.{i}": cb.contiguous() for i, cb in enumerate(qmodel.codebooks)}
    for name, qt in qmodel.quantized.items():
        dtype = _index_dtype(qmodel.codebooks[qt.codebook].numel())
        tensors[f"q.{name}"] = qt.indices.detach().cpu().to(dtype).contiguous()
    tensors |= {f"d.{name}": t.contiguous() for name, t in qmodel.dense.items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "codebooks": str(len(qmodel.codebooks)),
        "quantized": json.dumps([[name, qt.codebook] for name, qt in qmodel.quantized.items()]),
        "dense": json.dumps(list(qmodel.dense)),
        "meta": json.dumps(qmodel.meta, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _checkpoint_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a safetensors file: {exc}") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{path}: not a weightshare quantized checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") != str(CHECKPOINT_VERSION):
        raise FormatError(f"{path}: checkpoint version {metadata.get('version')!r}, expected {CHECKPOINT_VERSION}")
    return metadata


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """Load a checkpoint written by :func:`save_quantized` (indices come back as int64).

    >>> import tempfile, os
    >>> q = QuantizedModel([torch.tensor([0.0, 0.5])], {"w": QuantizedTensor(torch.tensor([1, 0]))}, meta={"m": 1})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_quantized(q, os.path.join(d, "q.safetensors"))
    ...     back = load_quantized(os.path.join(d, "q.safetensors"))
    >>> back.quantized["w"].indices, back.meta
    (tensor([1, 0]), {'m': 1})
    """
    path = Path(path)
    metadata = _checkpoint_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: unreadable safetensors data: {exc}") from exc
    try:
        n_codebooks = int(metadata["codebooks"])
        order = json.loads(metadata["quantized"])
        codebooks = [tensors[f"codebook.{i}"] for i in range(n_codebooks)]
        quantized = {name: QuantizedTensor(tensors[f"q.{name}"].to(torch.int64), int(cb)) for name, cb in order}
        dense = {name: tensors[f"d.{name}"] for name in json.loads(metadata["dense"])}
        return QuantizedModel(codebooks, quantized, dense, json.loads(metadata["meta"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: inconsistent quantized checkpoint: {exc}") from exc
