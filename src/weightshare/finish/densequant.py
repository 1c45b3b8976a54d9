"""Quantize the float parameters a method left dense (biases, norms), each into a codebook of its own.

The methods share the weights and leave the biases as raw float32: on the digits demo they
are 808 of a 1,811-byte file, on LeNet-5 2,320 B of ~6,700 B, on LeNet-300-100 1,640 B of
~11,700 B. Soft weight-sharing's tutorial puts the biases under the prior instead; this stage
does the same for any method's result, but per tensor, so a bias never pulls a shared weight
value towards itself (``[finish] dense_param_bits``, 0 = off).

Every floating-point *parameter* still dense gets a codebook ``[0.0, c_1, ..., c_K]`` with
``K <= 2**bits - 1`` from 1-D k-means with a fixed zero (:func:`weightshare.core.kmeans.kmeans1d`,
the same clustering as Deep Compression's per-layer codebooks, Han et al. 2016, Sec. 3): the
zero is the file's implicit entry 0 and costs nothing, so it is one more level for free, and
exact zeros stay exact. The centroids start from the *linear* initialisation, equally spaced
over [min, max]: it is deterministic (no seed to record) and keeps the rare large values
represented, which Han et al. (Sec. 3.2, Fig. 4) found to matter most; a unit's large bias is
its threshold. Buffers (BatchNorm's running statistics), integer tensors, non-finite tensors
and tensors that would not shrink (a full codebook plus ``bits`` a value is not smaller than
the values: at 4 bits, fewer than 18 float32 values; at 6 bits, fewer than 78) stay as they
are; so do the weights of Linear, Conv, Embedding and attention layers that the method left
dense (``skip_last``, ``exclude``, a pattern): weights are the coverage rule's business, and
a layer is kept at full precision on purpose. A tensor the model reaches under several names
is stored, and quantized, once.

The tensors keep their names, so the codebook fine-tuning that follows
(finish/codebook_tuning.py) trains their codebooks with the indices fixed, like any other;
``meta[NOT_WEIGHTS]`` lists them, so that every "weights only" figure still
counts them with the biases (core/quantized.py).
"""

from __future__ import annotations

import torch
from torch import nn

from weightshare.core.codebook import compact_codebook
from weightshare.core.coverage import DEFAULT_TYPES
from weightshare.core.kmeans import kmeans1d
from weightshare.core.quantized import NOT_WEIGHTS, QuantizedModel, QuantizedTensor

__all__ = ["quantize_dense_params"]


def _layer_weights(model: nn.Module) -> set[str]:
    """The weight matrices of the layer types a coverage rule covers by default (core/coverage.py)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, DEFAULT_TYPES)
        for name, p in module.named_parameters(recurse=False)
        if p.dim() >= 2
    }


def _candidates(model: nn.Module, qmodel: QuantizedModel, bits: int) -> list[str]:
    """The dense entries of ``qmodel`` this stage quantizes, in their order."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)} - _layer_weights(model)
    return [
        name
        for name, t in qmodel.dense.items()
        if name in params and t.is_floating_point() and _shrinks(t, bits) and bool(torch.isfinite(t).all())
    ]


def _shrinks(values: torch.Tensor, bits: int) -> bool:
    """Whether a full codebook (2**bits - 1 float32 values) and ``bits`` a value take fewer bytes than the values:
    the entropy coder spends about ``bits`` a value at most, so a tensor that fails this would not shrink."""
    return 4 * (2**bits - 1) + values.numel() * bits / 8 < values.numel() * values.element_size()


def _quantize(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook (entry 0 = 0.0, only the values in use) and indices shaped like ``values``."""
    result = kmeans1d(values, 2**bits - 1, init="linear", fixed_zero=True)
    labels = result.labels.masked_fill(values == 0, 0)  # an exact zero is entry 0, whatever the midpoints
    codebook, indices = compact_codebook(result.centroids[1:].float(), labels)
    return codebook, indices


def _change(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    diff = (after.double() - before.double()).reshape(-1)
    return {"max_abs_change": float(diff.abs().max()), "rms_change": float(diff.pow(2).mean().sqrt())}


def quantize_dense_params(
    model: nn.Module, qmodel: QuantizedModel, bits: int
) -> tuple[QuantizedModel, dict[str, dict[str, float]]]:
    """Quantize every float parameter ``qmodel`` keeps dense into a codebook of its own of ``<= 2**bits`` entries.

    ``model`` says which dense entries are parameters (its values are ignored). Returns a new model
    (the input is not modified; the new codebooks come after the method's) and, per quantized tensor,
    its number of values, codebook entries and the largest and root-mean-square change of its values.

    >>> net = nn.Linear(2, 8)
    >>> q = QuantizedModel([torch.tensor([0.0, 0.5])], {"weight": QuantizedTensor(torch.ones(8, 2, dtype=torch.int64))},
    ...                    {"bias": torch.tensor([0.0, 0.1, 0.11, 0.5, 0.52, -0.3, -0.31, 0.9])})
    >>> out, done = quantize_dense_params(net, q, bits=2)
    >>> [round(v, 3) for v in out.codebooks[1].tolist()]
    [0.0, -0.305, 0.51, 0.9]
    >>> out.quantized["bias"].indices.tolist(), done["bias"]["levels"], out.meta
    ([0, 0, 0, 2, 2, 1, 1, 3], 4, {'not_weights': ['bias']})
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"dense_param_bits must lie in [1, 16], got {bits}")
    codebooks, quantized, dense = list(qmodel.codebooks), dict(qmodel.quantized), dict(qmodel.dense)
    done: dict[str, dict[str, float]] = {}
    for name in _candidates(model, qmodel, bits):
        values = dense.pop(name)
        codebook, indices = _quantize(values, bits)
        quantized[name] = QuantizedTensor(indices, len(codebooks), values.dtype)
        codebooks.append(codebook)
        after = codebook[indices].to(values.dtype)
        done[name] = {"values": values.numel(), "levels": codebook.numel(), **_change(values, after)}
    if not done:
        return qmodel, done
    meta = dict(qmodel.meta)
    meta[NOT_WEIGHTS] = [*meta.get(NOT_WEIGHTS, []), *done]  # a name per tensor: they are bytes of the file
    return QuantizedModel(codebooks, quantized, dense, meta, qmodel.aliases), done
