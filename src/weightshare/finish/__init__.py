"""Finishing stages: QuantizedModel (+ model, data) -> QuantizedModel, usable after any method."""

from __future__ import annotations

from weightshare.finish.codebook_tuning import CodebookTuning
from weightshare.finish.deadweights import remove_dead_weights

__all__ = ["CodebookTuning", "remove_dead_weights"]
