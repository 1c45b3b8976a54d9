"""The bottom of the house: the common result (QuantizedModel), codebooks, coverage, errors, k-means, settings,
atomic I/O.

Nothing here imports any other part of weightshare."""

from __future__ import annotations

from weightshare.core.codebook import SharedWeights, TiedCodebooks, compact_codebook, distinct_codebook, shared_codebook
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
    "SharedWeights",
    "TiedCodebooks",
    "TrainingDiverged",
    "compact_codebook",
    "covered_parameters",
    "distinct_codebook",
    "kmeans1d",
    "load_quantized",
    "save_quantized",
    "shared_codebook",
]
