"""Figures of the weights and the mixture prior: scatter, mixture density, dynamics, animation frames.

Colours follow one rule (:func:`~weightshare.plots.style.component_colors`):
component k of the mixture is the same colour in every figure, and a weight
takes the colour of the component it is assigned to. Runs without a mixture
(Deep Compression, ADMM, ...) colour a weight by its codebook index instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weightshare.plots.artifacts import Mixture, RunArtifacts, sample_indices
from weightshare.plots.style import (
    Figure,
    component_colors,
    log_counts_axis,
    new_figure,
    plain_log_axis,
    symmetric_limit,
)
from weightshare.runs.schema import MODEL_FINAL, MODEL_INIT

__all__ = ["draw_scatter", "draw_mixture", "draw_dynamics", "draw_weight_scatter", "LevelStyle", "component_legend"]

# Legends longer than this become a colour bar of component numbers (64-component WRN mixtures).
_MAX_LEGEND = 12


@dataclass(frozen=True)
class LevelStyle:
    """A shared value drawn as a horizontal line (with a ±2σ band for a mixture component)."""

    value: float
    color: object
    label: str
    sigma: float | None = None
    component: int | None = None


def _codebook_to_component(codebook: np.ndarray, mixture: Mixture) -> np.ndarray:
    """Component of each codebook entry: entry 0 is the zero spike, others the nearest mean."""
    comp = np.abs(codebook[:, None] - mixture.means[None, :]).argmin(axis=1)
    comp[0] = 0
    return comp


def weight_colors(run: RunArtifacts) -> tuple[np.ndarray, np.ndarray, list[LevelStyle]]:
    """(palette, palette entry of each covered weight, shared values to draw as lines).

    Indices rather than RGBA rows per weight: a WRN has millions of covered weights.
    """
    index = run.covered_indices()
    codebooks = [cb.numpy().astype(float) for cb in run.quantized.codebooks]
    mixture = run.mixture_final
    if mixture is not None and len(codebooks) == 1:
        colors = component_colors(mixture.size)
        comp = _codebook_to_component(codebooks[0], mixture)[index]
        used = np.unique(comp)
        levels = [
            LevelStyle(
                float(mixture.means[k]), colors[k], _component_label(mixture, k), float(mixture.sigmas[k]), int(k)
            )
            for k in used
        ]
        return colors, comp, levels
    # No mixture: colour by codebook index; every codebook value is a grey line (no spread to show).
    size = max(cb.size for cb in codebooks)
    colors = component_colors(size)
    values = np.unique(np.concatenate(codebooks))
    levels = [LevelStyle(float(v), "0.4", "codebook values" if i == 0 else "") for i, v in enumerate(values)]
    return colors, index, levels


def _component_label(mixture: Mixture, k: int) -> str:
    name = "zero spike" if k == 0 else f"component {k}"
    return f"{name}: μ={mixture.means[k]:+.3f}, π={mixture.pis[k]:.3f}"


def component_legend(
    fig: Figure,
    ax: object,
    palette: np.ndarray,
    components: list[int],
    labels: list[str],
    *,
    inside: bool = False,
    **kwargs: object,
) -> None:
    """A legend of ``components`` (colours from ``palette``), or a colour bar of the whole palette
    when there are too many; ``inside`` puts the bar within ``ax`` (an empty layout cell)."""
    if len(components) <= _MAX_LEGEND:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=palette[k], marker="o", linestyle="-", markersize=5) for k in components]
        ax.legend(handles, labels, fontsize=7, **kwargs)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    n = len(palette)
    mappable = ScalarMappable(BoundaryNorm(np.arange(n + 1) - 0.5, n), ListedColormap(palette))
    if inside:
        bar = fig.colorbar(mappable, cax=ax.inset_axes((0.15, 0.05, 0.12, 0.9)))
    else:
        bar = fig.colorbar(mappable, ax=ax, shrink=0.8)
    bar.set_ticks(np.arange(0, n, max(1, -(-n // 10))))
    bar.set_label("mixture component (0 = zero spike)", fontsize=8)


def draw_weight_scatter(
    ax: object,
    w0: np.ndarray,
    wt: np.ndarray,
    colors: np.ndarray,
    levels: list[LevelStyle],
    limit: float,
    ylabel: str = "retrained weight $w_T$",
) -> None:
    """w0 on x, w_T on y, one dot per weight, shared values as lines with ±2σ bands."""
    for level in levels:
        if level.sigma is not None:
            ax.axhspan(
                level.value - 2 * level.sigma,
                level.value + 2 * level.sigma,
                color=level.color,
                alpha=min(0.12, 1.5 / len(levels)),  # many overlapping bands would wash the panel out
                linewidth=0,
                zorder=0,
            )
        ax.axhline(level.value, color=level.color, linewidth=0.9, alpha=0.9, zorder=1)
    ax.plot([-limit, limit], [-limit, limit], color="0.6", linestyle=":", linewidth=1, zorder=1)
    ax.scatter(w0, wt, c=colors, s=3, alpha=0.5, linewidths=0, rasterized=True, zorder=2)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_xlabel("pretrained weight $w_0$")
    ax.set_ylabel(ylabel)


def _level_limit(arrays: list[np.ndarray], levels: list[LevelStyle]) -> float:
    """An axis half-width that holds nearly every weight and every shared value (with margin)."""
    reach = [abs(lv.value) + 2 * (lv.sigma or 0.0) for lv in levels]
    return 1.1 * max(symmetric_limit(arrays, 0.999), max(reach, default=0.0))


def draw_scatter(run: RunArtifacts, sample: int) -> Figure:
    """Pretrained vs retrained weights with marginal histograms (Ullrich et al. 2017, Figure 2)."""
    w0 = run.covered(run.tensors(MODEL_INIT))
    wt = run.covered(run.tensors(MODEL_FINAL))
    palette, color_index, levels = weight_colors(run)
    pick = sample_indices(w0.size, sample)
    limit = _level_limit([w0, wt], levels)
    fig = new_figure("scatter")
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4))
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    draw_weight_scatter(ax, w0[pick], wt[pick], palette[color_index[pick]], levels, limit)
    bins = np.linspace(-limit, limit, 121)
    top.hist(w0, bins=bins, color="0.45")
    log_counts_axis(top, "y")
    top.set_ylabel("count (log)")
    top.tick_params(labelbottom=False)
    right.hist(wt, bins=bins, orientation="horizontal", color="0.45")
    log_counts_axis(right, "x")
    right.set_xlabel("count (log)")
    right.tick_params(labelleft=False)
    for level in levels:
        right.axhline(level.value, color=level.color, linewidth=0.9)
    _scatter_legend(fig, fig.add_subplot(grid[0, 1]), palette, levels)
    shown = f"{pick.size:,} of {w0.size:,} weights" if pick.size < w0.size else f"all {w0.size:,} weights"
    fig.suptitle(
        f"{run.method} on {run.model_name}: weights before vs after retraining\n({shown}; histograms over all weights)",
        fontsize=11,
    )
    return fig


def _scatter_legend(fig: Figure, ax: object, palette: np.ndarray, levels: list[LevelStyle]) -> None:
    ax.axis("off")
    labelled = [lv for lv in levels if lv.label]
    if levels and levels[0].sigma is None:  # codebook values: one grey entry is enough
        from matplotlib.lines import Line2D

        ax.legend(
            [Line2D([], [], color="0.4")], ["codebook values\n(dot colour =\ncodebook index)"], fontsize=7, loc="center"
        )
        return
    component_legend(
        fig,
        ax,
        palette,
        [lv.component for lv in labelled],
        [lv.label.split(", π")[0] for lv in labelled],
        inside=True,
        loc="center",
        title="assigned to\n(line: mean μ, band: ±2σ)",
        title_fontsize=7,
    )


def draw_mixture(run: RunArtifacts) -> Figure:
    """Final mixture density over the weight histogram, before and after quantization."""
    mixture = run.mixture_final
    wt = run.covered(run.tensors(MODEL_FINAL))
    wq = run.covered_quantized() if run.quantized is not None else None
    colors = component_colors(mixture.size)
    used = np.flatnonzero(mixture.pis > 1e-6)
    limit = 1.1 * max(
        symmetric_limit([wt], 0.999), float(np.max(np.abs(mixture.means[used]) + 3 * mixture.sigmas[used]))
    )
    bins = np.linspace(-limit, limit, 201)
    fig = new_figure("mixture")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.hist(wt, bins=bins, color="0.7", label="retrained weights")
    x = np.linspace(-limit, limit, 2000)
    scale = wt.size * (bins[1] - bins[0])  # density -> expected count per bin
    dens = mixture.density(x) * scale
    # The sum goes underneath, wide and faint, so the components drawn over it stay visible.
    top.plot(x, dens.sum(axis=0), color="black", linewidth=3, alpha=0.3, label="mixture density (sum)")
    for k in used:
        top.plot(x, dens[k], color=colors[k], linewidth=1.3)
    log_counts_axis(top, "y")
    counts, _ = np.histogram(wt, bins)
    top.set_ylim(top=3 * max(counts.max(), dens.sum(axis=0).max()))
    top.set_ylabel("weights per bin (log)")
    top.set_title("after retraining, before quantization: weights and the learned mixture")
    component_legend(fig, top, colors, list(used), [_component_label(mixture, k) for k in used], loc="upper right")
    components = top.get_legend()
    if components is not None:  # keep it: a second legend() call would replace it
        top.add_artist(components)
    top.legend(loc="upper left", fontsize=8)
    _draw_quantized_counts(bottom, wt, wq, mixture, colors, bins)
    bottom.set_xlabel("weight value")
    bottom.set_xlim(-limit, limit)
    fig.suptitle(f"{run.method} on {run.model_name}: mixture prior over {wt.size:,} covered weights", fontsize=11)
    return fig


def _draw_quantized_counts(
    ax: object, wt: np.ndarray, wq: np.ndarray | None, mixture: Mixture, colors: np.ndarray, bins: np.ndarray
) -> None:
    ax.hist(wt, bins=bins, histtype="step", color="0.55", label="before quantization")
    if wq is not None:
        values, counts = np.unique(wq, return_counts=True)
        comp = mixture.assign(values)
        comp[values == 0] = 0
        ax.vlines(values, 0.7, counts, colors=colors[comp], linewidth=3)
        ax.plot(
            [], [], color="0.3", linewidth=3, label="after quantization (weights per value,\ncoloured by component)"
        )
        ax.scatter(values, counts, c=colors[comp], s=18, zorder=3)
        ax.set_title(f"after quantization: {values.size} distinct values ({100 * np.mean(wq == 0):.1f}% exactly zero)")
    else:
        ax.set_title("after quantization: no quantized.safetensors in this run")
    log_counts_axis(ax, "y")
    ax.set_ylim(top=3 * (wt.size if wq is None else counts.max()))
    ax.set_ylabel("weights (log)")
    ax.legend(loc="upper left", fontsize=8)


def draw_dynamics(run: RunArtifacts) -> Figure:
    """Mixture means ± σ over the retraining epochs; line width and opacity follow the mixing weight."""
    history = run.mixture_history
    size = max(m.size for m in history)
    epochs = np.array([m.epoch if m.epoch is not None else i + 1 for i, m in enumerate(history)], dtype=float)
    means, sigmas, pis = (
        np.array([_pad(getattr(m, key), size) for m in history]) for key in ("means", "sigmas", "pis")
    )
    colors = component_colors(size)
    fig = new_figure("dynamics")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
    marker = "o" if len(epochs) <= 12 else None
    for k in range(size):
        _draw_component_track(top, epochs, means[:, k], sigmas[:, k], pis[:, k], colors[k])
        bottom.plot(epochs, np.maximum(pis[:, k], 1e-8), color=colors[k], marker=marker, markersize=3, linewidth=1.2)
    top.set_ylabel("component mean (weight value)")
    top.set_title("means ± σ (width and opacity ∝ mixing weight π): components merge and collapse onto the zero spike")
    plain_log_axis(bottom, "y")
    bottom.xaxis.get_major_locator().set_params(integer=True)
    bottom.set_ylabel("mixing weight π (log)")
    bottom.set_xlabel("retraining epoch")
    component_legend(
        fig,
        top,
        colors,
        list(range(size)),
        [_component_label_short(k) for k in range(size)],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    fig.suptitle(
        f"{run.method} on {run.model_name}: the mixture prior over {len(epochs)} retraining epochs", fontsize=11
    )
    return fig


def _component_label_short(k: int) -> str:
    return "0 (zero spike)" if k == 0 else f"component {k}"


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([values, np.full(size - values.size, np.nan)])


def _draw_component_track(
    ax: object, epochs: np.ndarray, mean: np.ndarray, sigma: np.ndarray, pi: np.ndarray, color: object
) -> None:
    """One component: a band and a line whose width/opacity follow π epoch by epoch."""
    strength = np.sqrt(np.clip(np.nan_to_num(pi), 0.0, 1.0))
    if epochs.size <= 12:  # few epochs: mark each record
        ax.scatter(epochs, mean, color=color, s=12 + 30 * strength, zorder=3)
    if epochs.size == 1:
        ax.errorbar(epochs, mean, yerr=sigma, color=color, marker="o", alpha=0.3 + 0.7 * strength[0])
        return
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    for i in range(epochs.size - 1):
        span = slice(i, i + 2)
        ax.fill_between(
            epochs[span],
            (mean - sigma)[span],
            (mean + sigma)[span],
            color=color,
            alpha=0.05 + 0.3 * strength[i],
            linewidth=0,
        )
    segments = np.stack([np.column_stack([epochs[:-1], mean[:-1]]), np.column_stack([epochs[1:], mean[1:]])], axis=1)
    rgba = np.tile(np.asarray(to_rgba(color)), (segments.shape[0], 1))
    rgba[:, 3] = 0.3 + 0.7 * strength[:-1]
    ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.6 + 3.5 * strength[:-1]))
    ax.autoscale_view()
