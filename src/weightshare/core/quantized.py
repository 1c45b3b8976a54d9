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
* ``dense``: ordered ``name -> tensor`` for everything left uncompressed (biases,
  norms, a skipped last layer, every buffer), each in its own dtype (float32/16,
  bfloat16, int64 such as BatchNorm's ``num_batches_tracked``, bool ...).
* ``aliases``: ``second name -> first name`` of tensors a model reaches under several
  names (an embedding tied to the output layer): stored once, shared again by
  :meth:`QuantizedModel.load_into`.

A quantized tensor is a *weight* unless ``meta[NOT_WEIGHTS]`` lists it: the float
parameters a finishing stage quantized after the method (biases, norms; finish/densequant.py)
are stored like weights but counted with the biases by every "weights only" figure
(docs/methods.md#accounting-paper-style).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from weightshare.core.errors import FormatError
from weightshare.core.io import atomic_write_bytes

__all__ = ["NOT_WEIGHTS", "QuantizedModel", "QuantizedTensor", "load_quantized", "save_quantized"]

NOT_WEIGHTS = "not_weights"
"""``meta`` key: the names of the quantized tensors that are not weights (see the module docstring)."""


@dataclass(frozen=True)
class QuantizedTensor:
    """One weight-shared tensor: ``value = codebooks[codebook][indices]``, in the model's ``dtype``."""

    indices: torch.Tensor
    codebook: int = 0
    dtype: torch.dtype = torch.float32

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
    aliases: dict[str, str] = field(default_factory=dict)

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
        self.dense = {k: torch.as_tensor(v).detach().cpu().clone() for k, v in self.dense.items()}
        overlap = set(self.quantized) & set(self.dense)
        if overlap:
            raise ValueError(f"tensors both quantized and dense: {sorted(overlap)}")
        self.aliases = dict(self.aliases)
        for alias, target in self.aliases.items():
            if alias in self.quantized or alias in self.dense or target not in self.quantized | self.dense:
                raise ValueError(f"alias {alias!r}: must be a new name for a stored tensor, not {target!r}")

    def _check_tensor(self, name: str, qt: QuantizedTensor) -> None:
        if not 0 <= qt.codebook < len(self.codebooks):
            raise ValueError(f"{name}: codebook {qt.codebook} does not exist ({len(self.codebooks)} codebooks)")
        if qt.indices.dtype.is_floating_point or qt.indices.dtype == torch.bool:
            raise ValueError(f"{name}: indices must be an integer tensor, got {qt.indices.dtype}")
        if not qt.dtype.is_floating_point:
            raise ValueError(f"{name}: a quantized tensor takes codebook values, so its dtype must be floating")
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
        quantized (indices into ``codebooks[codebook_of[name]]``, default 0, in the tensor's dtype);
        every other entry is kept dense as it is, in state-dict order. An entry that is the same
        tensor as an earlier one (``model.state_dict()`` lists a tied weight under each of its
        names) becomes an alias of it: stored once."""
        codebook_of = codebook_of or {}
        aliases = _shared_entries(state_dict)
        quantized, dense = {}, {}
        for name, tensor in state_dict.items():
            if name in aliases:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name}: state-dict entry of type {type(tensor).__name__} is not a tensor")
            if name in assignments:
                idx = assignments[name].to(torch.int64).reshape(tensor.shape)
                quantized[name] = QuantizedTensor(idx, codebook_of.get(name, 0), tensor.dtype)
            else:
                dense[name] = tensor
        missing = set(assignments) - set(quantized)
        if missing:
            raise KeyError(f"assignments for tensors not in the state dict (or second names of one): {sorted(missing)}")
        return cls(codebooks, quantized, dense, dict(meta or {}), aliases)

    @classmethod
    def from_trusted(
        cls,
        codebooks: list[torch.Tensor],
        quantized: dict[str, QuantizedTensor],
        dense: dict[str, torch.Tensor],
        meta: dict[str, object],
        aliases: dict[str, str] | None = None,
    ) -> QuantizedModel:
        """Build without re-validating, for a decoder that already guarantees every invariant
        (1-D float32 codebooks with entry 0 = +0.0 and finite values, int64 indices in range,
        disjoint names, aliases of stored tensors). Skips the O(#weights) checks of ``__init__``."""
        obj = cls.__new__(cls)
        obj.codebooks, obj.quantized, obj.dense, obj.meta = codebooks, quantized, dense, meta
        obj.aliases = dict(aliases or {})
        return obj

    # --- views ----------------------------------------------------------
    def dequantize(self, name: str) -> torch.Tensor:
        qt = self.quantized[name]
        return self.codebooks[qt.codebook][qt.indices]

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor in its dtype, quantized ones as their codebook values; a second name of a
        shared tensor is the same tensor object, as in ``model.state_dict()``."""
        out = {name: self.dequantize(name).to(qt.dtype) for name, qt in self.quantized.items()}
        out.update({name: t.clone() for name, t in self.dense.items()})
        out.update({alias: out[target] for alias, target in self.aliases.items()})
        return out

    def load_into(self, model: nn.Module, strict: bool = True) -> nn.Module:
        """Copy the weights into an ordinary ``nn.Module`` (no special layers) and return it.

        Tensors stored once under several names come back as one tensor object under every name.
        """
        own = model.state_dict()
        state = self.to_state_dict()
        for name, tensor in state.items():
            if name in own and tuple(own[name].shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{name}: shape {tuple(tensor.shape)} does not match the model's {tuple(own[name].shape)}"
                )
        # A file of format version 1 holds no integer buffers (BatchNorm's num_batches_tracked): keep the model's.
        for name, tensor in own.items():
            if name not in state and not tensor.dtype.is_floating_point:
                state[name] = tensor
        model.load_state_dict(state, strict=strict)
        for alias, target in self.aliases.items():
            _share(model, alias, target)
        return model

    def is_weight(self, name: str) -> bool:
        """Whether quantized tensor ``name`` counts as a weight (not a bias or norm quantized after the method)."""
        return name not in self.meta.get(NOT_WEIGHTS, ())

    def weights_only(self) -> QuantizedModel:
        """The model as the method left it, for "weights only" figures: the quantized tensors that are not
        weights back among the dense ones (as their codebook values), codebooks no weight uses dropped.

        >>> q = QuantizedModel([torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.1])],
        ...                    {"w": QuantizedTensor(torch.tensor([1, 0])), "b": QuantizedTensor(torch.tensor([1]), 1)},
        ...                    meta={NOT_WEIGHTS: ["b"]})
        >>> only = q.weights_only()
        >>> list(only.quantized), only.dense["b"], len(only.codebooks)
        (['w'], tensor([0.1000]), 1)
        """
        weights = {n: qt for n, qt in self.quantized.items() if self.is_weight(n)}
        if len(weights) == len(self.quantized):
            return self
        used = sorted({qt.codebook for qt in weights.values()})
        renumber = {old: new for new, old in enumerate(used)}
        quantized = {n: replace(qt, codebook=renumber[qt.codebook]) for n, qt in weights.items()}
        state = self.to_state_dict()
        dense = self.dense | {n: state[n] for n in self.quantized if n not in weights}
        meta = {k: v for k, v in self.meta.items() if k != NOT_WEIGHTS}
        return QuantizedModel.from_trusted([self.codebooks[i] for i in used], quantized, dense, meta, self.aliases)

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


def _storage_key(tensor: torch.Tensor) -> tuple[object, ...]:
    """Equal for two views of exactly the same memory as the same kind of tensor."""
    storage = tensor.untyped_storage().data_ptr()
    return storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype


def _shared_entries(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``later name -> first name`` of state-dict entries that are the same tensor (empty ones never are)."""
    first: dict[tuple[object, ...], str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            owner = first.setdefault(_storage_key(tensor), name)
            if owner != name:
                aliases[name] = owner
    return aliases


def _share(model: nn.Module, alias: str, target: str) -> None:
    """Make ``alias`` the very tensor object ``target`` is (a parameter or a buffer) in ``model``."""
    owner, _, attr = target.rpartition(".")
    source = model.get_submodule(owner)
    tensor = source._parameters.get(attr, source._buffers.get(attr))
    holder_name, _, slot = alias.rpartition(".")
    holder = model.get_submodule(holder_name)
    if isinstance(tensor, nn.Parameter):
        holder._parameters[slot] = tensor
    else:
        holder._buffers[slot] = tensor


# --- quantized checkpoint (safetensors + JSON metadata, never pickle) ---------
CHECKPOINT_FORMAT = "weightshare.quantized"  # a file-format id, not a module path: never changes
CHECKPOINT_VERSION = 2  # 2: quantized tensors record their dtype, dense ones keep theirs; aliases
READABLE_VERSIONS = ("1", "2")
_FLOAT_DTYPES = {
    str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
}


def _index_dtype(size: int) -> torch.dtype:
    """The smallest integer type that holds every index of a codebook of ``size`` entries."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if size - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def save_quantized(qmodel: QuantizedModel, path: str | os.PathLike) -> None:
    """Save a :class:`QuantizedModel` as a safetensors "quantized checkpoint" (written atomically).

    Tensor keys are ``codebook.<i>``, ``q.<name>`` (indices, smallest integer type) and
    ``d.<name>`` (in its own dtype); the metadata holds the tensor order, codebook references,
    dtypes, aliases and ``meta`` as JSON.
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
        "quantized": json.dumps([[name, qt.codebook, _dtype_name(qt.dtype)] for name, qt in qmodel.quantized.items()]),
        "dense": json.dumps(list(qmodel.dense)),
        "aliases": json.dumps(qmodel.aliases),
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
    if metadata.get("version") not in READABLE_VERSIONS:
        raise FormatError(
            f"{path}: checkpoint version {metadata.get('version')!r}, expected one of {', '.join(READABLE_VERSIONS)}"
        )
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
        quantized = {
            entry[0]: QuantizedTensor(tensors[f"q.{entry[0]}"].to(torch.int64), int(entry[1]), _dtype_of(entry[2:]))
            for entry in order
        }
        dense = {name: tensors[f"d.{name}"] for name in json.loads(metadata["dense"])}
        aliases = json.loads(metadata.get("aliases", "{}"))
        return QuantizedModel(codebooks, quantized, dense, json.loads(metadata["meta"]), aliases)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: inconsistent quantized checkpoint: {exc}") from exc


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(recorded: list[str]) -> torch.dtype:
    """The dtype a checkpoint records for a quantized tensor (version 1 records none: float32)."""
    if not recorded:
        return torch.float32
    if recorded[0] not in _FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {recorded[0]!r} of a quantized tensor")
    return _FLOAT_DTYPES[recorded[0]]
