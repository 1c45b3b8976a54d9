"""Finishing stages: QuantizedModel (+ model, data) -> QuantizedModel, usable after any method."""

from __future__ import annotations

from weightshare.finish.codebook_tuning import CodebookTuning, tune_codebooks
from weightshare.finish.config import FinishConfig
from weightshare.finish.deadweights import remove_dead_weights
from weightshare.finish.densequant import quantize_dense_params
from weightshare.finish.stages import Finished, run_finishing

__all__ = [
    "CodebookTuning",
    "FinishConfig",
    "Finished",
    "quantize_dense_params",
    "remove_dead_weights",
    "run_finishing",
    "tune_codebooks",
]
