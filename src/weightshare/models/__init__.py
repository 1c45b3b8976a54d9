"""The built-in architectures: LeNet-300-100, LeNet-5-Caffe, the tutorial net, WRN-16-4, an MLP, a small ViT."""

from __future__ import annotations

from weightshare.models.architectures import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters"]
