"""Codebooks whose entry 0 is the exact zero: the one way weightshare builds them.

Every method ends with, per tensor (or per model), a codebook ``[0.0, c_1, ..., c_K]``
and one index per weight; index 0 is a pruned weight. A value that no weight uses
costs 32 bits in the file and encodes nothing, so codebooks are always built from
the values in use.
"""

from __future__ import annotations

import torch

__all__ = ["compact_codebook"]


def compact_codebook(centroids: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop centroids no weight uses (empty k-means clusters cost 32 bits each and encode nothing)."""
    used = torch.unique(index[index > 0])
    remap = torch.zeros(centroids.numel() + 1, dtype=torch.int64, device=index.device)
    remap[used] = torch.arange(1, used.numel() + 1, device=index.device)
    codebook = torch.cat([centroids.new_zeros(1), centroids[used - 1]])
    return codebook, remap[index]
