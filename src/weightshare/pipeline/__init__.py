"""The pipeline's stages as functions: pretrain, compress, evaluate, sensitivity, demo."""

from __future__ import annotations

from weightshare.pipeline.compress import compress
from weightshare.pipeline.pretrain import load_run_model, pretrain

__all__ = ["compress", "load_run_model", "pretrain"]
