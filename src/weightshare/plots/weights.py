"""The weight scatter of any method: pretrained vs retrained weights, still and animated.

One dot per covered weight, the pretrained value on x and the retrained one on y,
with marginal histograms (the layout of Ullrich et al. 2017, Figure 2). The shared
values are horizontal lines. Generically a dot takes the colour of its codebook
index and every codebook value is a grey line; a method may colour the dots its
own way (soft weight-sharing: by mixture component, with ±2σ bands) by handing
:func:`draw_scatter` another :class:`Colouring` and the animation another frame style.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weightshare.methods.base import FigureSpec
from weightshare.plots.artifacts import RunArtifacts, sample_indices
from weightshare.plots.style import Figure, component_colors, log_counts_axis, new_figure, symmetric_limit
from weightshare.runs.schema import MODEL_FINAL, MODEL_INIT, QUANTIZED

__all__ = [
    "SCATTER",
    "Colouring",
    "FrameStyle",
    "LevelStyle",
    "codebook_colouring",
    "codebook_frames",
    "component_legend",
    "draw_scatter",
    "draw_weight_scatter",
    "level_limit",
]

# Legends longer than this become a colour bar of component numbers (64-component WRN mixtures).
_MAX_LEGEND = 12
_PLAIN_DOT = np.array([[0.12, 0.47, 0.71, 1.0]])  # matplotlib's C0, for frames without a colouring


@dataclass(frozen=True)
class LevelStyle:
    """A shared value drawn as a horizontal line (with a ±2σ band when it has a spread)."""

    value: float
    color: object
    label: str
    sigma: float | None = None
    component: int | None = None


# (epoch, sampled weights of that epoch) -> (RGBA per dot, shared values drawn as lines)
FrameStyle = Callable[[int, np.ndarray], tuple[np.ndarray, list[LevelStyle]]]


@dataclass(frozen=True)
class Colouring:
    """How the scatter colours its dots and which shared values it draws.

    Palette indices rather than RGBA rows per weight: a WRN has millions of covered weights.
    """

    palette: np.ndarray  # RGBA rows
    index: np.ndarray  # palette row of each covered weight, in the covered order
    levels: list[LevelStyle]
    legend: Callable[[Figure, Any], None]  # fills the empty top-right cell of the layout


def component_legend(
    fig: Figure,
    ax: Any,
    palette: np.ndarray,
    components: list[int],
    labels: list[str],
    *,
    inside: bool = False,
    bar_label: str = "component",
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
    bar.set_label(bar_label, fontsize=8)


def draw_weight_scatter(
    ax: Any,
    w0: np.ndarray,
    wt: np.ndarray,
    colors: np.ndarray,
    levels: list[LevelStyle],
    limit: float,
    ylabel: str = "retrained weight $w_T$",
) -> None:
    """w0 on x, w_T on y, one dot per weight, shared values as lines (±2σ bands where they have a spread)."""
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


def level_limit(arrays: list[np.ndarray], levels: list[LevelStyle]) -> float:
    """An axis half-width that holds nearly every weight and every shared value (with margin)."""
    reach = [abs(lv.value) + 2 * (lv.sigma or 0.0) for lv in levels]
    return 1.1 * max(symmetric_limit(arrays, 0.999), max(reach, default=0.0))


def codebook_colouring(run: RunArtifacts) -> Colouring:
    """Dots by codebook index; every codebook value a grey line (a codebook has no spread to show)."""
    codebooks = [cb.numpy().astype(float) for cb in run.quantized.codebooks]
    palette = component_colors(max(cb.size for cb in codebooks))
    values = np.unique(np.concatenate(codebooks))
    levels = [LevelStyle(float(v), "0.4", "codebook values" if i == 0 else "") for i, v in enumerate(values)]
    return Colouring(palette, run.covered_indices(), levels, _codebook_legend)


def _codebook_legend(fig: Figure, ax: Any) -> None:
    from matplotlib.lines import Line2D

    ax.legend(
        [Line2D([], [], color="0.4")], ["codebook values\n(dot colour =\ncodebook index)"], fontsize=7, loc="center"
    )


def draw_scatter(
    run: RunArtifacts, sample: int, colouring: Callable[[RunArtifacts], Colouring] = codebook_colouring
) -> Figure:
    """Pretrained vs retrained weights with marginal histograms (Ullrich et al. 2017, Figure 2)."""
    w0 = run.covered(run.tensors(MODEL_INIT))
    wt = run.covered(run.tensors(MODEL_FINAL))
    colours = colouring(run)
    pick = sample_indices(w0.size, sample)
    limit = level_limit([w0, wt], colours.levels)
    fig = new_figure("scatter")
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4))
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    draw_weight_scatter(ax, w0[pick], wt[pick], colours.palette[colours.index[pick]], colours.levels, limit)
    _draw_marginals(top, right, w0, wt, colours.levels, limit)
    corner = fig.add_subplot(grid[0, 1])
    corner.axis("off")
    colours.legend(fig, corner)
    shown = f"{pick.size:,} of {w0.size:,} weights" if pick.size < w0.size else f"all {w0.size:,} weights"
    fig.suptitle(
        f"{run.method} on {run.model_name}: weights before vs after retraining\n({shown}; histograms over all weights)",
        fontsize=11,
    )
    return fig


def _draw_marginals(
    top: Any, right: Any, w0: np.ndarray, wt: np.ndarray, levels: list[LevelStyle], limit: float
) -> None:
    """Histograms of all weights (not only the sampled dots): pretrained on top, retrained on the right."""
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


def codebook_frames(run: RunArtifacts) -> FrameStyle:
    """Animation frames of a method without per-epoch records: plain dots, the final codebook values as lines."""
    values = np.unique(run.covered_quantized()) if run.quantized is not None else np.array([])
    levels = [LevelStyle(float(v), "0.4", "") for v in values]

    def style(epoch: int, w: np.ndarray) -> tuple[np.ndarray, list[LevelStyle]]:
        return np.tile(_PLAIN_DOT, (w.size, 1)), levels

    return style


def _scatter_why_not(run: RunArtifacts) -> str | None:
    return run.lacks(MODEL_INIT, MODEL_FINAL, QUANTIZED)


# The generic scatter kind; a method that colours the scatter its own way replaces ``draw``/``frames``.
SCATTER = FigureSpec(why_not=_scatter_why_not, draw=draw_scatter, frames=codebook_frames)
