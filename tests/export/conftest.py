"""Models randomly initialised, then quantized to nearest codebook values, for the exporters' tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightshare.core.coverage import covered_parameters
from weightshare.core.quantized import QuantizedModel


class BatchNormNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Linear on 8x8 digits, with running statistics that are not the defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 6 * 6, 10)
        gen = torch.Generator().manual_seed(1)
        self.bn.running_mean.normal_(generator=gen)
        self.bn.running_var.uniform_(0.5, 2.0, generator=gen)
        self.bn.weight.data.uniform_(0.5, 1.5, generator=gen)
        self.bn.bias.data.normal_(generator=gen)
        self.bn.num_batches_tracked.fill_(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def nearest_codebook(model: nn.Module, sizes: list[int], meta: dict | None = None) -> QuantizedModel:
    """Each covered weight set to the nearest of ``sizes[i]`` values (codebook ``i``, entry 0 = 0); one size is
    one codebook shared by every layer, else one per layer. Every other tensor stays dense."""
    covered = covered_parameters(model)
    weights = torch.cat([p.detach().reshape(-1) for p in covered.values()])
    codebooks, assignments, codebook_of = [], {}, {}
    for size in sizes:
        values = torch.linspace(float(weights.min()), float(weights.max()), size - 1)
        codebooks.append(torch.cat([torch.zeros(1), values[values != 0]])[:size])
    for layer, (name, param) in enumerate(covered.items()):
        codebook_of[name] = layer if len(sizes) > 1 else 0
        assignments[name] = _nearest(param.detach(), codebooks[codebook_of[name]])
    return QuantizedModel.from_assignments(model.state_dict(), assignments, codebooks, codebook_of, meta)


def _nearest(weights: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The index of the codebook value nearest to each weight (by bisection: codebooks of 70,000 values too)."""
    values, order = codebook.sort()
    right = torch.searchsorted(values, weights.reshape(-1)).clamp(1, len(values) - 1)
    take_left = (weights.reshape(-1) - values[right - 1]).abs() <= (values[right] - weights.reshape(-1)).abs()
    return order[right - take_left.long()].reshape(weights.shape)


@pytest.fixture
def batchnorm_net() -> BatchNormNet:
    torch.manual_seed(0)
    return BatchNormNet().eval()


@pytest.fixture
def quantize():
    """:func:`nearest_codebook`."""
    return nearest_codebook
