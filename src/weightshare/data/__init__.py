"""Data sets: MNIST / Fashion-MNIST (IDX files, MD5-checked), CIFAR, and the built-in 8x8 digits."""

from __future__ import annotations

from weightshare.data.config import DataConfig
from weightshare.data.datasets import DataBundle, Split, batches, load_data

__all__ = ["DataBundle", "DataConfig", "Split", "batches", "load_data"]
