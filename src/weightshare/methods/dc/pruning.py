"""Magnitude pruning: per-layer masks, iterative schedules and per-layer settings.

Deep Compression prunes as Han et al. 2015b do (docs/methods.md#dc-pruning): per layer, drop
the connections of smallest magnitude, retrain the survivors, repeat. Two ways
to say how much to drop are supported, both per layer:

* a **kept fraction** (the paper's per-layer tables, e.g. LeNet-300-100: 8% / 9% /
  26%): the ``round(kept * numel)`` largest-magnitude weights survive. Over ``R``
  rounds the kept fraction approaches the target geometrically, ``target^(r/R)``,
  so every round removes the same *share* of what is left (iterative pruning
  beats one-shot, Han 2015b Fig. 5);
* a **quality parameter** ``s`` (Han 2015b Sec. 3): drop ``|w| < s * std(W)``.
  Over the rounds the threshold grows linearly, ``s * r / R``.

Masks are cumulative: a pruned weight never comes back (the paper keeps the
survivors and never re-grows connections).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from weightshare.core.errors import ConfigError

__all__ = [
    "parse_values",
    "per_layer",
    "magnitude_mask",
    "threshold_mask",
    "kept_schedule",
    "quality_schedule",
    "kept_threshold",
]


def parse_values(text: str, name: str, *, low: float, high: float, low_open: bool = True) -> list[float]:
    """Parse a comma-separated list of numbers for setting ``name``; each must lie in (low, high].

    The error names the setting, so a CLI or config-file typo says which knob is wrong.

    >>> parse_values("0.08, 0.09,0.26", "kept", low=0.0, high=1.0)
    [0.08, 0.09, 0.26]
    >>> parse_values("0.5,1.5", "kept", low=0.0, high=1.0)
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'kept': value 1.5 is outside (0.0, 1.0]
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise ConfigError(f"setting '{name}' must be a comma-separated list of numbers, got {text!r}")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"setting '{name}': {part!r} is not a number (in {text!r})") from None
        inside = (value > low if low_open else value >= low) and value <= high and math.isfinite(value)
        if not inside:
            bracket = "(" if low_open else "["
            raise ConfigError(f"setting '{name}': value {value:g} is outside {bracket}{low}, {high}]")
        values.append(value)
    return values


def per_layer(values: Sequence[float], layers: Sequence[str], name: str) -> dict[str, float]:
    """One value per layer: a single value applies to every layer, otherwise one per layer, in order.

    >>> per_layer([0.1], ["a.weight", "b.weight"], "kept")
    {'a.weight': 0.1, 'b.weight': 0.1}
    >>> per_layer([0.1, 0.2, 0.3], ["a.weight", "b.weight"], "kept")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: setting 'kept' has 3 values for 2 covered layers (a.weight, b.weight): ...
    """
    if len(values) == 1:
        return {layer: float(values[0]) for layer in layers}
    if len(values) != len(layers):
        raise ConfigError(
            f"setting '{name}' has {len(values)} values for {len(layers)} covered layers "
            f"({', '.join(layers)}): give one value or one per layer"
        )
    return {layer: float(v) for layer, v in zip(layers, values, strict=True)}


def magnitude_mask(weight: torch.Tensor, kept: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``round(kept * numel)`` largest ``|w|`` among the weights ``mask`` still keeps.

    Ties are broken by position (``torch.topk`` on a stable score), so the result is deterministic.

    >>> magnitude_mask(torch.tensor([0.3, -0.1, 0.5, 0.2]), 0.5)
    tensor([ True, False,  True, False])
    """
    flat = weight.detach().reshape(-1).abs().to(torch.float64)
    alive = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(-1).clone()
    n_keep = min(int(round(kept * flat.numel())), int(alive.sum()))
    score = torch.where(alive, flat, torch.full_like(flat, -1.0))  # pruned weights never come back
    out = torch.zeros_like(alive)
    if n_keep > 0:
        out[torch.topk(score, n_keep, sorted=False).indices] = True
    return out.reshape(weight.shape)


def threshold_mask(weight: torch.Tensor, threshold: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep ``|w| >= threshold`` among the weights ``mask`` still keeps (Han 2015b's rule).

    >>> threshold_mask(torch.tensor([0.3, -0.1, 0.5]), 0.2, torch.tensor([True, True, False]))
    tensor([ True, False, False])
    """
    keep = weight.detach().abs() >= threshold
    return keep if mask is None else keep & mask


def kept_schedule(target: float, rounds: int) -> list[float]:
    """Kept fraction after each of ``rounds`` rounds: ``target^(r/R)``, a geometric approach to ``target``.

    Every round removes the same share of the surviving weights.

    >>> [round(k, 4) for k in kept_schedule(0.01, 2)]
    [0.1, 0.01]
    """
    if rounds < 1:
        return []
    return [target ** (r / rounds) for r in range(1, rounds + 1)]


def quality_schedule(quality: float, rounds: int) -> list[float]:
    """Quality parameter of each round: grows linearly to ``quality`` (threshold ``s_r * std(W)``).

    >>> quality_schedule(1.5, 3)
    [0.5, 1.0, 1.5]
    """
    return [quality * r / rounds for r in range(1, rounds + 1)]


def kept_threshold(weight: torch.Tensor, kept: float) -> float:
    """The magnitude threshold that keeps a fraction ``kept`` of ``weight`` (for reporting a kept
    fraction as a threshold, e.g. in the sensitivity analysis); 0 when everything is kept.

    >>> round(kept_threshold(torch.tensor([0.1, -0.2, 0.3, 0.4]), 0.5), 6)
    0.3
    """
    flat = weight.detach().reshape(-1).abs().sort(descending=True).values
    n_keep = int(round(kept * flat.numel()))
    if n_keep >= flat.numel():
        return 0.0
    if n_keep <= 0:
        return float(flat[0]) * (1 + 1e-6) + 1e-12
    return float(flat[n_keep - 1])
