"""Export for deployment: ONNX with indices + codebooks, a safetensors codebook layout, plain dense weights.

Knows only :mod:`weightshare.core` and :mod:`weightshare.codec`; ``onnx`` and ``onnxruntime`` are the optional
extra ``weightshare[onnx]``, imported only by the ONNX export itself. Formats and sizes: docs/export.md.
"""

from __future__ import annotations

from weightshare.export.dense import dense_bytes, export_dense
from weightshare.export.onnx import compare_outputs, export_onnx, onnx_bytes
from weightshare.export.safetensors_layout import export_safetensors, load_safetensors_layout, safetensors_bytes

__all__ = [
    "dense_bytes",
    "export_dense",
    "export_onnx",
    "export_safetensors",
    "load_safetensors_layout",
    "compare_outputs",
    "onnx_bytes",
    "safetensors_bytes",
]
