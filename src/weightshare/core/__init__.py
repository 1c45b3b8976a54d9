"""The bottom of the house: the common result (QuantizedModel), coverage, errors, k-means, settings, atomic I/O.

Nothing here imports any other part of weightshare."""

from __future__ import annotations

from weightshare.core.codebook import compact_codebook
from weightshare.core.coverage import covered_parameters
from weightshare.core.errors import ConfigError, CoverageError, DataError, FormatError, RunDirError, TrainingDiverged
from weightshare.core.kmeans import kmeans1d
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, load_quantized, save_quantized

__all__ = [
    "ConfigError",
    "CoverageError",
    "DataError",
    "FormatError",
    "QuantizedModel",
    "QuantizedTensor",
    "RunDirError",
    "TrainingDiverged",
    "compact_codebook",
    "covered_parameters",
    "kmeans1d",
    "load_quantized",
    "save_quantized",
]
