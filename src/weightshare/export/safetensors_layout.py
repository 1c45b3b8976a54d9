"""The safetensors codebook layout: codebooks + bit-packed indices + one JSON entry saying how to expand them.

A file anyone can read with safetensors and torch alone (README, "Export for deployment"; the layout is
documented in docs/export.md#safetensors):

* ``codebook:<i>``: each codebook, float32, entry 0 = +0.0;
* ``indices:<name>``: the indices of each covered tensor as one uint8 bit stream, ``bits`` =
  ``max(1, ceil(log2 K))`` bits per index, least significant bit first, row-major: index ``j`` is bits
  ``j*bits .. (j+1)*bits - 1``, bit ``i`` of the stream being bit ``i % 8`` of byte ``i // 8``;
* every other tensor under its own name, in its own dtype;
* metadata ``"weightshare"``: JSON ``{"format", "version", "codebooks", "quantized": {name: {"indices",
  "codebook", "shape", "bits", "dtype"}}, "dense", "aliases", "meta"}``; ``aliases`` maps the second
  name of a tensor the model reaches under two names (a tied weight) to the stored one.

Fixed-width packing costs ``bits`` per weight whatever the values: no entropy coding, so the file sits
between ``.wsz`` and the dense float32 weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import nn

from weightshare.core.errors import FormatError
from weightshare.core.io import atomic_write_bytes
from weightshare.core.quantized import QuantizedModel, QuantizedTensor
from weightshare.export.dense import Source, check_fits, quantized_of

__all__ = [
    "LAYOUT_FORMAT",
    "LAYOUT_KEY",
    "LAYOUT_VERSION",
    "export_safetensors",
    "index_bits",
    "load_safetensors_layout",
    "pack_indices",
    "safetensors_bytes",
    "unpack_indices",
]

LAYOUT_KEY = "weightshare"  # the metadata entry holding the layout JSON
LAYOUT_FORMAT = "weightshare.codebooks"  # a format id, not a module path: never changes
LAYOUT_VERSION = 1


def index_bits(codebook_size: int) -> int:
    """Bits per index for a codebook of ``codebook_size`` entries (at least 1, so every index has a place).

    >>> [index_bits(k) for k in (1, 2, 3, 16, 17, 256, 257)]
    [1, 1, 2, 4, 5, 8, 9]
    """
    return max(1, (codebook_size - 1).bit_length())


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """The indices, row-major, as a uint8 bit stream of ``bits`` bits each, least significant bit first.

    >>> pack_indices(torch.tensor([1, 2, 3]), 2)  # 01 10 11 -> bits 1,0,0,1,1,1 -> 0b111001
    tensor([57], dtype=torch.uint8)
    """
    flat = indices.detach().cpu().reshape(-1).numpy().astype(np.int64)
    stream = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The ``count`` int64 indices of :func:`pack_indices`'s stream.

    >>> unpack_indices(torch.tensor([57], dtype=torch.uint8), 2, 3)
    tensor([1, 2, 3])
    """
    stream = np.unpackbits(packed.numpy(), bitorder="little")[: count * bits].astype(np.int64)
    return torch.from_numpy(stream.reshape(count, bits) @ (1 << np.arange(bits, dtype=np.int64)))


def _layout(qmodel: QuantizedModel) -> dict[str, Any]:
    """The metadata JSON: where each tensor lies and how to expand it."""
    return {
        "format": LAYOUT_FORMAT,
        "version": LAYOUT_VERSION,
        "codebooks": [f"codebook:{i}" for i in range(len(qmodel.codebooks))],
        "quantized": {
            name: {
                "indices": f"indices:{name}",
                "codebook": f"codebook:{qt.codebook}",
                "shape": list(qt.shape),
                "bits": index_bits(qmodel.codebooks[qt.codebook].numel()),
                "dtype": str(qt.dtype).removeprefix("torch."),
            }
            for name, qt in qmodel.quantized.items()
        },
        "dense": list(qmodel.dense),
        "aliases": qmodel.aliases,  # second name -> the stored tensor (a tied weight is stored once)
        "meta": qmodel.meta,
    }


def safetensors_bytes(source: Source, model: nn.Module | None = None) -> bytes:
    """The codebook layout of ``source`` as safetensors bytes; with ``model``, refused unless it fits."""
    qmodel = quantized_of(source)
    if model is not None:
        check_fits(qmodel, model, source)
    layout = _layout(qmodel)
    tensors = {key: cb.contiguous() for key, cb in zip(layout["codebooks"], qmodel.codebooks, strict=True)}
    for name, entry in layout["quantized"].items():
        tensors[entry["indices"]] = pack_indices(qmodel.quantized[name].indices, entry["bits"])
    clash = sorted(set(tensors) & set(qmodel.dense))
    if clash:  # the layout's own keys cannot also name a model tensor
        raise FormatError(f"tensor {clash[0]!r} has the name of a key of the codebook layout")
    tensors |= {name: t.contiguous() for name, t in qmodel.dense.items()}
    meta = json.dumps(layout, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return save(tensors, metadata={LAYOUT_KEY: meta})


def export_safetensors(source: Source, path: str | os.PathLike, model: nn.Module | None = None) -> int:
    """Write the codebook layout (module docstring) atomically; returns the bytes written.

    >>> import tempfile, os
    >>> q = QuantizedModel([torch.tensor([0.0, -1.0, 1.0])], {"w": QuantizedTensor(torch.tensor([[1, 0, 2]]))},
    ...                    {"b": torch.tensor([0.5])})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nbytes = export_safetensors(q, os.path.join(d, "q.safetensors"))
    ...     load_safetensors_layout(os.path.join(d, "q.safetensors")).to_state_dict()["w"]
    tensor([[-1.,  0.,  1.]])
    """
    data = safetensors_bytes(source, model)
    atomic_write_bytes(path, data)
    return len(data)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The layout JSON and every tensor of ``path``; a foreign or unreadable file is a :class:`FormatError`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a safetensors file: {exc}") from None
    try:
        layout = json.loads(metadata[LAYOUT_KEY])
    except (KeyError, json.JSONDecodeError):
        raise FormatError(f"{path}: no valid {LAYOUT_KEY!r} metadata: not a weightshare codebook layout") from None
    if not isinstance(layout, dict) or layout.get("format") != LAYOUT_FORMAT:
        raise FormatError(f"{path}: metadata format {layout.get('format')!r}, expected {LAYOUT_FORMAT!r}")
    if layout.get("version") != LAYOUT_VERSION:
        raise FormatError(f"{path}: layout version {layout.get('version')!r}, expected {LAYOUT_VERSION}")
    return layout, tensors


def _quantized_tensor(name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], codebook: int):
    shape, bits = [int(d) for d in entry["shape"]], int(entry["bits"])
    packed = tensors[entry["indices"]]
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(count * bits / 8):
        raise ValueError(f"{entry['indices']}: {packed.numel()} {packed.dtype} bytes, not {count} x {bits} bits")
    dtype = getattr(torch, str(entry.get("dtype", "float32")))
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name}: dtype {entry.get('dtype')!r} is not a floating-point type")
    return QuantizedTensor(unpack_indices(packed, bits, count).reshape(shape), codebook, dtype)


def load_safetensors_layout(path: str | os.PathLike) -> QuantizedModel:
    """Read a file of :func:`export_safetensors` back into the :class:`QuantizedModel` it was written from."""
    path = Path(path)
    layout, tensors = _read(path)
    try:
        keys = list(layout["codebooks"])
        codebooks = [tensors[key] for key in keys]
        quantized = {
            name: _quantized_tensor(name, entry, tensors, keys.index(entry["codebook"]))
            for name, entry in layout["quantized"].items()
        }
        dense = {name: tensors[name] for name in layout["dense"]}
        return QuantizedModel(codebooks, quantized, dense, dict(layout["meta"]), dict(layout.get("aliases", {})))
    except (KeyError, TypeError, ValueError) as exc:  # QuantizedModel refuses bad codebooks and indices
        raise FormatError(f"{path}: inconsistent codebook layout: {exc}") from None
