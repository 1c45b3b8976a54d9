"""The ``.wsz`` file: container, entropy coding (ANS) and inspection. Knows only :mod:`weightshare.core`."""

from __future__ import annotations

from weightshare.codec.inspect import InspectReport, TensorRow, file_rates, format_inspect, inspect
from weightshare.codec.wsz import (
    check_compatible,
    decode,
    encode,
    entropy_bound_bytes,
    float16_rounded,
    load_compressed,
    save_compressed,
)

__all__ = [
    "InspectReport",
    "TensorRow",
    "check_compatible",
    "decode",
    "encode",
    "entropy_bound_bytes",
    "file_rates",
    "float16_rounded",
    "format_inspect",
    "inspect",
    "load_compressed",
    "save_compressed",
]
