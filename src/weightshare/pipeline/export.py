"""``weightshare export``: a ``.wsz`` file (or a compression run) as ONNX, safetensors codebooks or dense weights.

The ONNX export needs the architecture and an input: it finds them as ``weightshare evaluate`` does (the run
directory's config, else the model the file records, or ``--model``), traces one test image, and checks the
written graph with onnxruntime against the decoded PyTorch model on the whole test set. The two safetensors
formats need only the file. Every format is written atomically, after the file was decoded and checked:
a corrupt file or a model that does not fit leaves nothing behind (docs/export.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weightshare.core.errors import ConfigError, DependencyError, MismatchError
from weightshare.export import compare_outputs, export_dense, export_onnx, export_safetensors
from weightshare.export.dense import quantized_of
from weightshare.pipeline.evaluate import finished_file, open_checkpoint

__all__ = ["FORMATS", "export_file"]

FORMATS = ("onnx", "safetensors", "dense")
"""``onnx``: indices + codebooks expanded in the graph; ``safetensors``: the codebook layout; ``dense``: float32."""


def _compressed_file(checkpoint: str | os.PathLike) -> Path:
    """The ``.wsz`` file ``checkpoint`` names: itself, or a finished compression run's ``model.wsz``."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    found = finished_file(path) if path.is_dir() else path
    if found.is_dir() or found.suffix != ".wsz":
        raise MismatchError(f"{path}: export reads a .wsz file or a compression run directory, not {found.name}")
    return found


def _export_onnx(source: Path, out: Path, model_options: dict[str, Any]) -> dict[str, Any]:
    """The ONNX file, then onnxruntime's outputs against the decoded model's over the test set."""
    quantized_of(source)  # a corrupt file is refused before any data set is loaded
    opened = open_checkpoint(source, **model_options)
    assert opened.weights is not None  # a .wsz file always decodes to its quantized model
    test = opened.data.test.x
    nbytes = export_onnx(opened.weights, opened.model, test[:1], out)
    try:
        difference = compare_outputs(out, opened.model, test)._asdict()
    except DependencyError:  # onnx without onnxruntime: the file is fine, it is only not checked here
        difference = None
    return {"bytes": nbytes, "difference": difference}


def export_file(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    normalize: str | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` (a ``.wsz`` file or compression run) as ``fmt`` (:data:`FORMATS`) into ``out``.

    Returns ``bytes`` (written), ``wsz_bytes`` and, for ONNX, ``difference``: onnxruntime's outputs against
    the decoded PyTorch model's over the test images (``compare_outputs``; ``None`` without onnxruntime).
    ``model``, ``dataset``, ``data_dir`` and ``normalize`` choose the architecture and data as ``evaluate`` does;
    only the ONNX export uses them.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    options = {"model": model, "dataset": dataset, "data_dir": data_dir, "normalize": normalize}
    given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
    if fmt != "onnx" and given:
        raise ConfigError(f"{given[0]} is used by --format onnx only (the {fmt} export needs only the file)")
    source, out = _compressed_file(checkpoint), Path(out)
    if fmt == "onnx":
        result = _export_onnx(source, out, options)
    else:
        write = export_safetensors if fmt == "safetensors" else export_dense
        result = {"bytes": write(source, out)}
    return {"format": fmt, "path": str(out), "wsz_bytes": source.stat().st_size, **result}
