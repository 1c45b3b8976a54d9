"""The look shared by every figure: backend, sizes, component colours, saving.

matplotlib is imported here and only here (with the Agg backend, so no display is
ever needed); ``import weightshare`` never imports this module, so the library
works without matplotlib and only the figures ask for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    import matplotlib
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("figures need matplotlib: pip install 'weightshare[plots]'") from exc

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import matplotlib.ticker  # noqa: E402
from matplotlib.colors import Colormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "DPI",
    "FIGSIZES",
    "plt",
    "Figure",
    "component_colors",
    "new_figure",
    "save_figure",
    "shade_pretrain",
    "log_counts_axis",
    "plain_log_axis",
    "symmetric_limit",
]

DPI = 110
# Inches per generic kind (a method's own kinds give their size to new_figure); saved without
# bbox cropping, so a PNG is exactly FIGSIZES[kind] * DPI pixels.
FIGSIZES: dict[str, tuple[float, float]] = {
    "curves": (11.0, 7.0),
    "scatter": (8.0, 8.0),
    "layers": (10.0, 5.0),
    "filters": (10.0, 6.0),
    "pareto": (8.0, 5.5),
    "gif": (6.0, 6.0),
}

# One colormap for the shared values of every figure: component (or codebook entry) k of K is
# always COMPONENT_CMAP(k / (K - 1)), so the same component has the same colour in every figure
# of a run and in the animation. Sorted values map to a hue ramp.
COMPONENT_CMAP = "turbo"
PRETRAIN_SHADE = "0.90"


def component_colors(n: int) -> np.ndarray:
    """RGBA colours of components 0..n-1 (the extremes of turbo, near black, are avoided)."""
    cmap: Colormap = matplotlib.colormaps[COMPONENT_CMAP]
    return cmap(np.linspace(0.08, 0.92, max(n, 1)))[:n] if n > 1 else cmap(np.array([0.08]))


def new_figure(kind: str | tuple[float, float], **kwargs: object) -> Figure:
    """A figure of the kind's size (or of ``(width, height)`` inches) with constrained layout
    (so titles and labels never overlap)."""
    size = FIGSIZES[kind] if isinstance(kind, str) else kind
    return plt.figure(figsize=size, dpi=DPI, layout="constrained", **kwargs)


def save_figure(fig: Figure, folder: Path, name: str, pdf: bool) -> list[Path]:
    """Write ``name.png`` (and ``name.pdf``) into ``folder``; closes the figure."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png"] + ([folder / f"{name}.pdf"] if pdf else [])
    try:
        for path in paths:
            fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return paths


def shade_pretrain(ax: object, boundary: float | None, first: float, label: bool) -> None:
    """Grey background over the pretraining epochs and a dashed line where retraining starts."""
    if boundary is None:
        return
    ax.axvspan(first - 0.5, boundary, color=PRETRAIN_SHADE, zorder=0, label="pretraining" if label else None)
    ax.axvline(boundary, color="0.35", linestyle="--", linewidth=1, label="retraining starts" if label else None)


def plain_log_axis(ax: object, axis: str = "y") -> None:
    """Log scale labelled 1, 10, 20, 0.5 ... (plain numbers read faster than 2×10¹)."""
    from matplotlib.ticker import FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # Minor ticks are labelled only when the axis spans less than about two decades.
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))


class _PlainLogFormatter(matplotlib.ticker.LogFormatter):
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.2, not 2e-01)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_counts_axis(ax: object, axis: str = "y") -> None:
    """Counts that span decades: log scale, starting below a single weight."""
    plain_log_axis(ax, axis)
    if axis == "y":
        ax.set_ylim(bottom=0.7)
    else:
        ax.set_xlim(left=0.7)


def symmetric_limit(values: Sequence[np.ndarray], quantile: float = 0.995) -> float:
    """A symmetric colour/axis limit that ignores the few most extreme values."""
    flat = np.concatenate([np.abs(np.asarray(v, dtype=float)).reshape(-1) for v in values])
    flat = flat[np.isfinite(flat)]
    limit = float(np.quantile(flat, quantile)) if flat.size else 1.0
    return limit if limit > 0 else 1.0
