"""Pruning sensitivity analysis: how much each layer alone can lose before the accuracy suffers.

As in Distiller and Han et al. 2015b (Fig. 6): each covered layer is pruned
*alone* by magnitude at a range of fractions, without retraining, and the model
is evaluated on the **validation** split (never the test split: the result picks
settings). From the curves, each layer gets the largest pruned fraction whose
error increase stays within ``max_drop`` percentage points, for it and for every
smaller fraction (so one lucky point on a noisy curve is not taken). The
resulting kept fractions are printed as a string that ``--kept`` accepts, and the
matching thresholds as quality parameters ``s = threshold / std(W)`` for
``--prune-by std --quality``.

Outputs in the run directory: ``sensitivity.csv`` (one row per layer and
fraction), ``sensitivity.json`` (the derived settings) and
``figures/sensitivity.png``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightshare.core.coverage import covered_parameters
from weightshare.core.errors import ConfigError
from weightshare.core.io import write_json
from weightshare.core.settings import validate
from weightshare.data.config import DataConfig
from weightshare.data.datasets import Split, load_data
from weightshare.methods.dc.pruning import kept_threshold, magnitude_mask, parse_values
from weightshare.pipeline.pretrain import load_run_model
from weightshare.runs.schema import FIGURES, SENSITIVITY_CSV, SENSITIVITY_JSON
from weightshare.train.loop import evaluate

__all__ = [
    "DEFAULT_FRACTIONS",
    "SensitivityRow",
    "sensitivity_analysis",
    "derive_settings",
    "write_csv",
    "plot_sensitivity",
    "run_sensitivity",
    "format_settings",
]

DEFAULT_FRACTIONS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.98"


@dataclass(frozen=True)
class SensitivityRow:
    """One point of a layer's curve: the layer pruned alone to ``pruned_fraction``."""

    layer: str
    pruned_fraction: float
    kept_fraction: float
    threshold: float
    val_error: float
    val_loss: float
    error_increase: float


@torch.no_grad()
def sensitivity_analysis(
    model: nn.Module, split: Split, fractions: list[float], *, pattern: str | None = None
) -> tuple[float, list[SensitivityRow]]:
    """Baseline validation error and one row per (covered layer, pruned fraction); ``model`` is left as it was.

    >>> from weightshare.data.datasets import Split
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> base, rows = sensitivity_analysis(net, Split(torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), [0.5, 1.0])
    >>> [(r.layer, r.pruned_fraction, r.kept_fraction) for r in rows]
    [('0.weight', 0.5, 0.5), ('0.weight', 1.0, 0.0), ('2.weight', 0.5, 0.5), ('2.weight', 1.0, 0.0)]
    """
    baseline = evaluate(model, split)
    rows = []
    for name, param in covered_parameters(model, pattern=pattern).items():
        original = param.detach().clone()
        try:
            for fraction in fractions:
                kept = 1.0 - fraction
                param.copy_(original * magnitude_mask(original, kept))
                result = evaluate(model, split)
                rows.append(
                    SensitivityRow(
                        name,
                        fraction,
                        round(kept, 9),
                        kept_threshold(original, kept),
                        result["error"],
                        result["loss"],
                        result["error"] - baseline["error"],
                    )
                )
        finally:
            param.copy_(original)
    return baseline["error"], rows


def derive_settings(
    rows: list[SensitivityRow], max_drop: float, stds: dict[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """Per layer: the kept fraction and threshold of the largest pruned fraction within ``max_drop``.

    A fraction counts only if it and every smaller fraction raise the error by at most ``max_drop``
    percentage points; a layer where even the smallest fraction fails keeps everything.

    >>> curve = [(0.5, 0.1, 0.0), (0.8, 0.2, 0.3), (0.9, 0.3, 2.0)]  # (fraction, threshold, error increase)
    >>> rows = [SensitivityRow("a", f, 1 - f, t, 0.0, 0.0, d) for f, t, d in curve]
    >>> derive_settings(rows, 0.5, {"a": 0.1})
    {'a': {'pruned_fraction': 0.8, 'kept': 0.2, 'threshold': 0.2, 'quality': 2.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for layer in dict.fromkeys(r.layer for r in rows):
        chosen = None
        for row in sorted((r for r in rows if r.layer == layer), key=lambda r: r.pruned_fraction):
            if row.error_increase > max_drop:
                break
            chosen = row
        fraction = chosen.pruned_fraction if chosen else 0.0
        threshold = chosen.threshold if chosen else 0.0
        std = (stds or {}).get(layer, 0.0)
        out[layer] = {
            "pruned_fraction": fraction,
            "kept": round(1.0 - fraction, 6),
            "threshold": threshold,
            "quality": round(threshold / std, 6) if std > 0 else 0.0,
        }
    return out


def format_settings(settings: dict[str, dict[str, float]]) -> dict[str, str]:
    """The derived settings as the strings ``--kept`` and ``--quality`` take (layer order kept).

    >>> format_settings({"a": {"kept": 0.2, "quality": 1.5}, "b": {"kept": 1.0, "quality": 0.0}})
    {'kept': '0.2,1', 'quality': '1.5,0'}
    """
    return {key: ",".join(f"{s[key]:g}" for s in settings.values()) for key in ("kept", "quality")}


def write_csv(rows: list[SensitivityRow], path: str | os.PathLike) -> Path:
    """``sensitivity.csv``: one row per (layer, fraction), columns as :class:`SensitivityRow`."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SensitivityRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


def plot_sensitivity(rows: list[SensitivityRow], baseline: float, max_drop: float, folder: Path) -> Path:
    """``figures/sensitivity.png``: validation error against pruned fraction, one line per layer."""
    from weightshare.plots.style import plain_log_axis, plt, save_figure

    fig, ax = plt.subplots(figsize=(8.0, 5.5), dpi=110, layout="constrained")
    for layer in dict.fromkeys(r.layer for r in rows):
        points = sorted((r.pruned_fraction, r.val_error) for r in rows if r.layer == layer)
        ax.plot([0.0] + [p[0] for p in points], [baseline] + [p[1] for p in points], marker="o", label=layer)
    ax.axhline(baseline, color="0.3", linestyle=":", linewidth=1, label=f"unpruned ({baseline:.2f}%)")
    ax.axhline(baseline + max_drop, color="0.3", linestyle="--", linewidth=1, label=f"+{max_drop:g} points allowed")
    ax.set_xlabel("fraction of the layer's weights pruned (smallest |w| first, no retraining)")
    ax.set_ylabel("validation error (%)")
    ax.set_title("Pruning sensitivity per layer")
    if baseline > 0 and min(r.val_error for r in rows) > 0:  # log: the curves' start near the limit is what matters
        plain_log_axis(ax, "y")
    ax.legend(title="layer", fontsize="small")
    return save_figure(fig, folder, "sensitivity", pdf=False)[0]


def run_sensitivity(
    run_dir: str | os.PathLike,
    *,
    fractions: str = DEFAULT_FRACTIONS,
    max_drop: float = 0.5,
    data_dir: str | None = None,
    plot: bool = True,
) -> dict[str, Any]:
    """The analysis of a pretrained run's model; writes csv, json and figure into ``run_dir``.

    ``fractions`` are the pruned fractions (comma-separated, in [0, 1]); ``max_drop`` is the allowed
    increase of the validation error in percentage points. Returns the content of ``sensitivity.json``.
    """
    values = parse_values(fractions, "fractions", low=0.0, high=1.0, low_open=False)
    if max_drop < 0:
        raise ConfigError(f"setting 'max_drop' must be >= 0; got {max_drop}")
    model, run = load_run_model(run_dir)
    data_cfg = DataConfig(**run.config["data"])
    if data_dir:
        data_cfg.data_dir = data_dir
    data = load_data(validate(data_cfg))
    baseline, rows = sensitivity_analysis(model, data.val, sorted(set(values)))
    stds = {n: float(p.detach().std()) for n, p in covered_parameters(model).items()}
    settings = derive_settings(rows, max_drop, stds)
    write_csv(rows, run.path_of(SENSITIVITY_CSV))
    result = {
        "baseline_val_error": baseline,
        "max_drop": max_drop,
        "fractions": sorted(set(values)),
        "layers": settings,
        **format_settings(settings),
    }
    write_json(run.path_of(SENSITIVITY_JSON), result)
    if plot:
        try:
            result["figure"] = str(plot_sensitivity(rows, baseline, max_drop, run.path_of(FIGURES)))
        except ImportError as exc:  # matplotlib is optional
            result["figure"] = f"not drawn: {exc}"
    return result
