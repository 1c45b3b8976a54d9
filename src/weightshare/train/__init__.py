"""The one training loop (pretraining and every method's retraining), its settings and checkpoints."""

from __future__ import annotations

from weightshare.train.config import TrainConfig
from weightshare.train.loop import FitResult, evaluate, fit

__all__ = ["FitResult", "TrainConfig", "evaluate", "fit"]
