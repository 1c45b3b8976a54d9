"""The ``.wsz`` compressed file: :class:`QuantizedModel` <-> bytes, bit for bit.

Per quantized tensor the encoder codes both the dense index stream and a sparse
layout (gaps between non-zeros + their indices) with ANS and keeps the smaller.
Decoding gives back exactly the same indices, codebooks and dense tensors, so the
accuracy measured on a decoded file is the accuracy of that file. The layout is
documented byte by byte in ``docs/format.md``.

>>> import torch
>>> from weightshare.core.quantized import QuantizedModel, QuantizedTensor
>>> idx = torch.zeros(100, 100, dtype=torch.int64); idx[::7, ::3] = 2
>>> cb = torch.tensor([0.0, -0.1, 0.1])
>>> q = QuantizedModel([cb], {"fc.weight": QuantizedTensor(idx)}, {"fc.bias": torch.ones(100)})
>>> data = encode(q)  # the bias, 100 equal floats, costs only its four byte planes' tables
>>> len(data), torch.equal(decode(data).quantized["fc.weight"].indices, idx)
(100, True)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weightshare.codec.bitstream import Reader
from weightshare.codec.container import (
    DENSE,
    DTYPE_NAMES,
    MAX_CODEBOOK,
    MAX_ELEMENTS,
    DenseEntry,
    Header,
    QuantEntry,
    dense_array,
    parse_header,
)
from weightshare.codec.container import write_file as _write_file
from weightshare.codec.inspect import inspect
from weightshare.codec.layouts import decode_indices, encode_indices, encode_planes, stored_bytes
from weightshare.core.errors import FormatError
from weightshare.core.io import atomic_write_bytes
from weightshare.core.quantized import QuantizedModel, QuantizedTensor

__all__ = [
    "check_compatible",
    "decode",
    "encode",
    "entropy_bound_bytes",
    "float16_rounded",
    "load_compressed",
    "save_compressed",
]


# The torch type of each element-type code of the format (docs/format.md, "Conventions").
_TORCH_DTYPES = tuple(getattr(torch, name) for name in DTYPE_NAMES)


def _dtype_code(dtype: torch.dtype, name: str) -> int:
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"{name}: dtype {dtype} cannot be stored (the format holds {', '.join(DTYPE_NAMES)})")
    return _TORCH_DTYPES.index(dtype)


# --- encoding -------------------------------------------------------------
def _float_bytes(values: np.ndarray, float16: bool, what: str) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if not float16:
        return values.astype("<f4").tobytes()
    with np.errstate(over="ignore"):  # overflow is detected (and refused) just below
        half = values.astype("<f2")
    if (np.isfinite(values) & ~np.isfinite(half)).any():
        raise ValueError(f"{what}: values beyond the float16 range (|x| > 65504); save without float16")
    return half.tobytes()


def _dense_bytes(t: torch.Tensor, float16: bool, name: str) -> bytes:
    """A dense tensor's elements, little-endian: float32 ones through the float16 flag, others as they are."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype == torch.float32:
        return _float_bytes(t.numpy(), float16, name)
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    array = t.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _encode_tensor(name: str, qt: QuantizedTensor) -> tuple[QuantEntry, list[bytes]]:
    idx = qt.indices.detach().cpu().reshape(-1).numpy().astype(np.int64, copy=False)
    entry = QuantEntry(name, qt.shape, qt.codebook, DENSE, [], 0, dtype=_dtype_code(qt.dtype, name))
    return encode_indices(entry, idx)


def _encode_dense(name: str, t: torch.Tensor, float16: bool) -> tuple[DenseEntry, bytes]:
    """Raw, or some byte planes ANS-coded when that is smaller (lossless either way)."""
    stored = _dense_bytes(t, float16, name)
    entry = DenseEntry(name, tuple(t.shape), dtype=_dtype_code(t.dtype, name))
    code = encode_planes(stored, len(stored) // t.numel() if t.numel() else 1)
    entry.planes, entry.tables, entry.stream_bytes = code.planes, code.tables, len(code.stream)
    return entry, code.body


def _json_default(obj: object) -> object:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"meta value of type {type(obj).__name__} is not JSON-serialisable")


def encode(qmodel: QuantizedModel, *, float16: bool = False) -> bytes:
    """The ``.wsz`` bytes of a quantized model (deterministic: same model, same bytes).

    ``float16`` stores codebook values and float32 dense tensors as float16 (lossy; reported by
    ``inspect``); dense tensors of every other dtype are stored exactly.
    """
    if any(cb.numel() > MAX_CODEBOOK for cb in qmodel.codebooks):
        raise ValueError(f"codebooks are limited to {MAX_CODEBOOK} entries")
    body = [_float_bytes(cb[1:].numpy(), float16, f"codebook {i}") for i, cb in enumerate(qmodel.codebooks)]
    quantized = []
    for name, qt in qmodel.quantized.items():
        entry, parts = _encode_tensor(name, qt)
        quantized.append(entry)
        body += parts
    dense = []
    for name, t in qmodel.dense.items():
        entry, data = _encode_dense(name, t, float16)
        dense.append(entry)
        body.append(data)
    if sum(e.numel for e in quantized) + sum(e.numel for e in dense) > MAX_ELEMENTS:
        raise ValueError(f"more than {MAX_ELEMENTS} elements in total")
    meta = _plain_meta(qmodel.meta)
    entry_of = {e.name: i for i, e in enumerate(quantized + dense)}
    aliases = [(alias, entry_of[target]) for alias, target in qmodel.aliases.items()]
    header = Header(float16, meta, [cb.numel() for cb in qmodel.codebooks], quantized, dense, aliases=aliases)
    return _write_file(header, body)


def float16_rounded(qmodel: QuantizedModel) -> QuantizedModel:
    """The model a ``float16`` file holds: codebook values and float32 dense tensors rounded to float16.

    Encoding the result with ``float16=True`` is lossless, so the model can be evaluated exactly as the file
    will give it back. Values beyond float16's range are refused.

    >>> q = QuantizedModel([torch.tensor([0.0, 0.1])], {"w": QuantizedTensor(torch.tensor([1, 0]))})
    >>> half = float16_rounded(q)
    >>> half.codebooks[0].tolist()
    [0.0, 0.0999755859375]
    >>> torch.equal(decode(encode(half, float16=True)).codebooks[0], half.codebooks[0])
    True
    """
    codebooks = [_through_float16(cb, f"codebook {i}") for i, cb in enumerate(qmodel.codebooks)]
    dense = {n: _through_float16(t, n) if t.dtype == torch.float32 else t for n, t in qmodel.dense.items()}
    return dataclasses.replace(qmodel, codebooks=codebooks, dense=dense, meta=dict(qmodel.meta))


def _through_float16(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` as the float16 flag stores and reads it back (the encoder's own path, so the two always agree)."""
    half = np.frombuffer(_float_bytes(t.detach().cpu().numpy(), True, what), dtype="<f2")
    return torch.from_numpy(half.astype(np.float32)).reshape(t.shape)


def _plain_meta(meta: dict[str, object]) -> dict[str, object]:
    try:
        return json.loads(json.dumps(meta, default=_json_default)) if meta else {}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta cannot be stored: {exc}") from exc


# --- decoding -------------------------------------------------------------
def _read_floats(r: Reader, n: int, float16: bool) -> np.ndarray:
    dtype = "<f2" if float16 else "<f4"
    return np.frombuffer(r.read(n * np.dtype(dtype).itemsize), dtype=dtype).astype(np.float32)


def decode(data: bytes) -> QuantizedModel:
    """Rebuild the :class:`QuantizedModel` from ``.wsz`` bytes; any defect raises :class:`FormatError`."""
    h = parse_header(data)
    r = Reader(data, h.size)
    codebooks = []
    for i, k in enumerate(h.codebook_sizes):
        cb = np.concatenate([np.zeros(1, np.float32), _read_floats(r, k - 1, h.float16)])
        if not np.isfinite(cb).all():
            raise FormatError(f"codebook {i} holds a non-finite value")
        codebooks.append(torch.from_numpy(cb))
    quantized = {}
    for e in h.quantized:
        idx = decode_indices(e, r.read(e.stream_bytes), r.read(e.raw_bytes))
        dtype = _TORCH_DTYPES[e.dtype]
        quantized[e.name] = QuantizedTensor(torch.from_numpy(idx).reshape(e.shape), e.codebook, dtype)
    dense = {e.name: _dense_tensor(stored_bytes(r, h, e), h, e) for e in h.dense}
    # Every invariant holds by construction (indices come from tables no larger than their codebook,
    # codebooks were checked above, names are unique, aliases point at entries), so skip
    # QuantizedModel's O(#weights) re-checks.
    return QuantizedModel.from_trusted(codebooks, quantized, dense, dict(h.meta), h.alias_targets())


def _dense_tensor(raw: bytes, h: Header, e: DenseEntry) -> torch.Tensor:
    """A dense tensor in its own dtype, bit for bit as it was written."""
    dtype = _TORCH_DTYPES[e.dtype]
    if dtype == torch.bfloat16:  # numpy has no bfloat16: its 16 bits, reinterpreted (NaN payloads too)
        return torch.from_numpy(np.frombuffer(raw, dtype="<i2").copy()).view(dtype).reshape(e.shape)
    return torch.from_numpy(dense_array(raw, h, e).copy()).to(dtype).reshape(e.shape)


# --- files ----------------------------------------------------------------
def save_compressed(qmodel: QuantizedModel, path: str | os.PathLike, *, float16: bool = False) -> int:
    """Write the ``.wsz`` file atomically (temp file + ``os.replace``); returns the bytes written."""
    data = encode(qmodel, float16=float16)
    atomic_write_bytes(path, data)
    return len(data)


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None) -> QuantizedModel:
    """Read a ``.wsz`` file; with ``model``, also check that names and shapes match it."""
    qmodel = decode(Path(path).read_bytes())
    if model is not None:
        check_compatible(qmodel, model)
    return qmodel


_SHOWN = 3  # tensors a mismatch names: the message stays one readable line


def check_compatible(qmodel: QuantizedModel, model: nn.Module, model_name: str | None = None) -> None:
    """Refuse (``FormatError``) a decoded model whose tensors do not match ``model``'s names and shapes.

    The message names each tensor that does not fit with both shapes (the first few, then how many
    more), the model the file records (``meta["model"]``) and ``model_name``, if given.

    >>> from weightshare.core.quantized import QuantizedModel
    >>> q = QuantizedModel([torch.zeros(1)], {}, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})
    >>> check_compatible(q, nn.Linear(3, 2))
    >>> check_compatible(q, nn.Linear(4, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightshare.core.errors.FormatError: file does not match the model: weight: shape (2, 3) in the file, (2, 4) ...
    >>> q.meta["model"] = "lenet300"
    >>> check_compatible(q, nn.Linear(4, 2), "mlp")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightshare.core.errors.FormatError: file made for lenet300 does not match the model mlp: weight: shape (2, 3) ...
    """
    own = model.state_dict()
    shapes = {n: qt.shape for n, qt in qmodel.quantized.items()} | {n: tuple(t.shape) for n, t in qmodel.dense.items()}
    shapes |= {alias: shapes[target] for alias, target in qmodel.aliases.items()}
    problems = [f"{n}: not in the model" for n in shapes if n not in own]
    problems += [
        f"{n}: shape {s} in the file, {tuple(own[n].shape)} in the model"
        for n, s in shapes.items()
        if n in own and tuple(own[n].shape) != s
    ]
    problems += [f"{n}: missing from the file" for n, t in own.items() if t.is_floating_point() and n not in shapes]
    if problems:
        made_for = qmodel.meta.get("model")
        head = f"file made for {made_for}" if made_for else "file"
        more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise FormatError(
            f"{head} does not match the model{f' {model_name}' if model_name else ''}: "
            + "; ".join(problems[:_SHOWN])
            + more
        )


def entropy_bound_bytes(qmodel: QuantizedModel, *, float16: bool = False) -> float:
    """Sum of the coded streams' empirical entropies + codebooks + header + dense tensors, in bytes.

    The file can only exceed this by the ANS coder's few bytes of flush per tensor.
    """
    return inspect(encode(qmodel, float16=float16)).entropy_bound_bytes
