"""ONNX export in which every covered weight stays a codebook and its indices (docs/export.md#onnx).

The decoded model is traced by PyTorch's TorchScript-based exporter (``dynamo=False``: the
torch.export-based one needs onnxscript) **without constant folding**, so that every parameter stays an
initializer under its state-dict name (folding would also fuse a BatchNorm into the convolution before it,
and fused weights are no longer codebook values). The graph is then rewritten: the initializer of each
covered weight is replaced by

* an index initializer of the weight's shape: ``UINT4`` (two indices per byte) when its codebook has at
  most 16 entries, else ``UINT8``, ``UINT16`` or ``INT32``;
* its codebook, a float32 initializer shared by every tensor that uses it;
* ``Cast`` (indices -> int64) -> ``Gather`` (codebook, indices), whose output carries the weight's name, so
  the ``Gemm`` / ``MatMul`` / ``Conv`` that read it are untouched.

``Cast`` from ``UINT4`` needs opset 21, so the traced graph is converted to it. The expanded weights are the
codebook values themselves: onnxruntime computes the decoded model's function (tests/export/test_onnx.py).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from weightshare.core.errors import DependencyError, MismatchError
from weightshare.core.io import atomic_write_bytes
from weightshare.core.quantized import QuantizedModel
from weightshare.export.dense import Source, check_fits, decoded_copy, quantized_of

if TYPE_CHECKING:
    import onnx

__all__ = ["OPSET", "OutputDifference", "compare_outputs", "export_onnx", "index_type", "onnx_bytes"]

OPSET = 21
"""The first opset whose ``Cast`` reads ``UINT4``."""
TRACE_OPSET = 20
"""The highest opset PyTorch's TorchScript-based exporter writes; the graph is converted to :data:`OPSET`."""
INPUT, OUTPUT = "input", "output"
INSTALL = "pip install 'weightshare[onnx]'"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DependencyError(f"the ONNX export needs the onnx package: {INSTALL}") from None
    return onnx


def index_type(codebook_size: int) -> str:
    """The ONNX element type that stores indices into a codebook of ``codebook_size`` entries.

    >>> index_type(16), index_type(17), index_type(256), index_type(257), index_type(70000)
    ('UINT4', 'UINT8', 'UINT8', 'UINT16', 'INT32')
    """
    for name, bits in (("UINT4", 4), ("UINT8", 8), ("UINT16", 16)):
        if codebook_size <= 2**bits:
            return name
    return "INT32"


def _index_initializer(name: str, indices: torch.Tensor, codebook_size: int) -> onnx.TensorProto:
    """The indices as one initializer; ``UINT4`` packs two per byte, the first in the low nibble (ONNX's order)."""
    onnx = _onnx()
    kind = index_type(codebook_size)
    flat = indices.detach().cpu().reshape(-1).numpy()
    if kind == "UINT4":
        nibbles = np.zeros(flat.size + flat.size % 2, dtype=np.uint8)
        nibbles[: flat.size] = flat
        raw = (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()
        return onnx.helper.make_tensor(name, onnx.TensorProto.UINT4, list(indices.shape), raw, raw=True)
    dtype = {"UINT8": np.uint8, "UINT16": np.uint16, "INT32": np.int32}[kind]
    return onnx.numpy_helper.from_array(flat.astype(dtype).reshape(tuple(indices.shape)), name)


def _trace(net: nn.Module, example_input: torch.Tensor) -> onnx.ModelProto:
    """The decoded model as ONNX at :data:`OPSET`, every parameter an initializer named as in the state dict."""
    onnx = _onnx()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation on every call
        torch.onnx.export(
            net, (example_input,), buffer, dynamo=False, do_constant_folding=False, opset_version=TRACE_OPSET,
            input_names=[INPUT], output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )  # fmt: skip
    traced = onnx.load_from_string(buffer.getvalue())
    return onnx.version_converter.convert_version(traced, OPSET)


def _check_input(net: nn.Module, example_input: torch.Tensor) -> None:
    """Refuse an example input the model cannot take in one line, before the exporter's long trace."""
    try:
        with torch.no_grad():
            net(example_input)
    except (RuntimeError, ValueError, TypeError) as exc:  # torch's shape errors are RuntimeErrors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise MismatchError(f"{type(net).__name__} does not take an input of shape {shape}: {first}") from None


def _codebook_name(i: int) -> str:
    return f"codebook:{i}"


def _rewrite(graph: onnx.GraphProto, qmodel: QuantizedModel) -> None:
    """Replace each covered weight's initializer by indices + codebook + ``Cast -> Gather`` (module docstring)."""
    onnx = _onnx()
    initializers = {t.name: t for t in graph.initializer}
    missing = [name for name in qmodel.quantized if name not in initializers]
    if missing:
        raise MismatchError(
            f"the exported graph reads no initializer named {missing[0]} (the model does not use it as a weight "
            f"as it is; {len(missing)} such tensors): its indices cannot be stored"
        )
    nodes, used = [], sorted({qt.codebook for qt in qmodel.quantized.values()})
    for name, qt in qmodel.quantized.items():
        graph.initializer.remove(initializers[name])
        size = qmodel.codebooks[qt.codebook].numel()
        graph.initializer.append(_index_initializer(f"{name}:indices", qt.indices, size))
        nodes += [
            onnx.helper.make_node("Cast", [f"{name}:indices"], [f"{name}:int64"], to=onnx.TensorProto.INT64),
            onnx.helper.make_node("Gather", [_codebook_name(qt.codebook), f"{name}:int64"], [name], axis=0),
        ]
    for i in used:
        graph.initializer.append(onnx.numpy_helper.from_array(qmodel.codebooks[i].numpy(), _codebook_name(i)))
    for position, node in enumerate(nodes):  # they read only initializers: first is a valid topological order
        graph.node.insert(position, node)


def onnx_bytes(source: Source, model: nn.Module, example_input: torch.Tensor) -> bytes:
    """The ONNX file of the decoded model with the covered weights as indices + codebooks, checked by
    ``onnx.checker``. ``model`` is the architecture (its weights are not used, nor changed); ``example_input``
    one batch it takes (the batch dimension stays dynamic)."""
    onnx = _onnx()
    qmodel = quantized_of(source)
    check_fits(qmodel, model, source)
    net = decoded_copy(qmodel, model)
    _check_input(net, example_input)
    proto = _trace(net, example_input)
    _rewrite(proto.graph, qmodel)
    proto.doc_string = "weightshare: covered weights stored as codebook indices, expanded by Cast -> Gather"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_onnx(source: Source, model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike) -> int:
    """Write the ONNX file of :func:`onnx_bytes` atomically; returns the bytes written.

    >>> import tempfile, os, torch
    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([torch.tensor([0.0, -1.0, 1.0])], {"weight": QuantizedTensor(torch.tensor([[1, 0, 2]]))},
    ...                    {"bias": torch.tensor([0.5])})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nbytes = export_onnx(q, torch.nn.Linear(3, 1), torch.zeros(1, 3), os.path.join(d, "m.onnx"))
    ...     compare_outputs(os.path.join(d, "m.onnx"), q.load_into(torch.nn.Linear(3, 1)), torch.randn(5, 3))
    OutputDifference(absolute=0.0, relative=0.0, inputs=5)
    """
    data = onnx_bytes(source, model, example_input)
    atomic_write_bytes(path, data)
    return len(data)


class OutputDifference(NamedTuple):
    """How far onnxruntime's outputs lie from PyTorch's: ``absolute``, the largest ``|onnxruntime - PyTorch|``;
    ``relative``, the same per input divided by ``max(1, largest |output| of that input)``; over ``inputs``."""

    absolute: float
    relative: float
    inputs: int


def compare_outputs(
    onnx_model: bytes | str | os.PathLike, net: nn.Module, inputs: torch.Tensor, batch_size: int = 1000
) -> OutputDifference:
    """onnxruntime's outputs for ``inputs`` against ``net``'s (which holds the decoded weights), in batches.

    The export's promise is ``relative <= 1e-5`` (docs/export.md#onnx): both compute in float32, and a sum
    of terms as large as the outputs carries a rounding error of about 1e-7 of them in any order, so an
    absolute bound would fail on large logits (LeNet-300-100's reach 80; its float32 outputs differ from a
    float64 evaluation by 1.8e-5). Outputs up to 1 are compared absolutely.
    """
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"checking an ONNX export needs onnxruntime: {INSTALL}") from None
    data = onnx_model if isinstance(onnx_model, bytes) else os.fspath(onnx_model)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    absolute = relative = 0.0
    with torch.no_grad():
        for batch in torch.split(inputs, batch_size):
            ours = session.run([OUTPUT], {INPUT: batch.numpy()})[0].reshape(len(batch), -1)
            theirs = net.eval()(batch).numpy().reshape(len(batch), -1)
            if ours.size:
                rows = np.abs(ours - theirs).max(1)
                absolute = max(absolute, float(rows.max()))
                relative = max(relative, float((rows / np.maximum(1.0, np.abs(theirs).max(1))).max()))
    return OutputDifference(absolute, relative, len(inputs))
