"""The decoded model as ordinary float32 weights, and what every exporter starts from.

Every exporter takes a :class:`QuantizedModel` or the path of a ``.wsz`` file (decoded here, so a corrupt
file is refused with the codec's one-line :class:`FormatError` before anything is written), and, where it
needs one, the architecture the weights are for (refused in one line when the file does not fit it).
``--format dense`` is the decoded state dict itself: a plain safetensors file for anything that takes
ordinary weights (docs/export.md).
"""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import save
from torch import nn

from weightshare.codec import check_compatible, load_compressed
from weightshare.core.errors import FormatError, MismatchError
from weightshare.core.io import atomic_write_bytes
from weightshare.core.quantized import QuantizedModel

__all__ = ["Source", "check_fits", "decoded_copy", "dense_bytes", "dense_state", "export_dense", "quantized_of"]

Source = QuantizedModel | str | os.PathLike
"""What an exporter takes: a quantized model, or the path of a ``.wsz`` file holding one."""


def quantized_of(source: Source) -> QuantizedModel:
    """``source`` itself, or the model decoded from the ``.wsz`` file it names."""
    if isinstance(source, QuantizedModel):
        return source
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source} does not exist")
    try:
        return load_compressed(source)
    except FormatError as exc:
        raise FormatError(f"{source}: {exc}") from None


def check_fits(qmodel: QuantizedModel, model: nn.Module, source: Source) -> None:
    """Refuse (:class:`MismatchError`, one line) a model whose tensor names or shapes differ from the file's."""
    try:
        check_compatible(qmodel, model, type(model).__name__)
    except FormatError as exc:
        where = "the quantized model" if isinstance(source, QuantizedModel) else str(source)
        raise MismatchError(f"{where}: {exc}") from None


def dense_state(qmodel: QuantizedModel, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Every tensor as float32 (codebook values at the indices); with ``model``, also its non-float buffers
    (BatchNorm's ``num_batches_tracked``), so that ``model.load_state_dict`` takes the file strictly."""
    if model is None:
        return qmodel.to_state_dict()
    return {name: t.detach().clone() for name, t in decoded_copy(qmodel, model).state_dict().items()}


def decoded_copy(qmodel: QuantizedModel, model: nn.Module) -> nn.Module:
    """A copy of ``model`` holding the decoded weights, in eval mode: exporting never changes the caller's model."""
    return qmodel.load_into(copy.deepcopy(model)).eval()


def dense_bytes(source: Source, model: nn.Module | None = None) -> bytes:
    """The plain float32 safetensors file of the decoded model, as bytes."""
    qmodel = quantized_of(source)
    if model is not None:
        check_fits(qmodel, model, source)
    # Own copies: safetensors refuses two names on one tensor (a tied weight is one tensor in the QuantizedModel).
    state = {name: t.contiguous().clone() for name, t in dense_state(qmodel, model).items()}
    return save(state, metadata={"format": "pt"})


def export_dense(source: Source, path: str | os.PathLike, model: nn.Module | None = None) -> int:
    """Write the decoded model as plain float32 safetensors (atomically); returns the bytes written.

    >>> import tempfile, os, torch
    >>> from safetensors.torch import load_file
    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([torch.tensor([0.0, 0.5])], {"weight": QuantizedTensor(torch.tensor([[1, 0, 1]]))},
    ...                    {"bias": torch.zeros(1)})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     nbytes = export_dense(q, os.path.join(d, "dense.safetensors"), torch.nn.Linear(3, 1))
    ...     load_file(os.path.join(d, "dense.safetensors"))["weight"]
    tensor([[0.5000, 0.0000, 0.5000]])
    """
    data = dense_bytes(source, model)
    atomic_write_bytes(path, data)
    return len(data)
