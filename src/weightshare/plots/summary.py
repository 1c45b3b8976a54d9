"""Figures of the numbers a run recorded: training curves, per-layer bars, first-layer filters, Pareto front."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.plots.artifacts import RunArtifacts
from weightshare.plots.style import Figure, new_figure, plain_log_axis, shade_pretrain, symmetric_limit
from weightshare.runs.schema import MODEL_INIT, QUANTIZED, REPORT

__all__ = ["draw_curves", "draw_layers", "draw_filters", "first_layer", "draw_pareto", "pareto_point", "ParetoPoint"]


@dataclass(frozen=True)
class _Panel:
    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]  # (metrics column, legend label)
    scale: float = 1.0


# The curves figure draws the panels whose columns hold at least one number; no empty panels.
_PANELS = (
    _Panel(
        "Training loss", "loss per example (nats)", (("loss", "total loss"), ("task_loss", "task loss (cross-entropy)"))
    ),
    _Panel(
        "Complexity loss of the mixture prior",
        "$L_C$ (nats, all covered weights)",
        (("complexity_loss", "complexity loss $L_C$"),),
    ),
    _Panel("Method penalty", "penalty added to the loss", (("penalty", "penalty"),)),
    _Panel("Error", "error (%)", (("val_error", "validation"), ("test_error", "test"))),
    _Panel("Sparsity", "covered weights at zero (%)", (("sparsity", "at zero (pruned)"),), 100.0),
)


def _has_data(metrics: dict[str, np.ndarray], panel: _Panel) -> bool:
    return any(col in metrics and np.isfinite(metrics[col]).any() for col, _ in panel.series)


def _panels(metrics: dict[str, np.ndarray]) -> list[_Panel]:
    panels = [p for p in _PANELS if _has_data(metrics, p)]
    if any(p.title.startswith("Complexity") for p in panels):  # the penalty is tau/N * L_C: no news
        panels = [p for p in panels if p.title != "Method penalty"]
    return panels


def draw_curves(run: RunArtifacts) -> Figure:
    """Loss, complexity loss, error and sparsity per epoch; pretraining shaded, x = global epoch."""
    metrics = run.metrics
    phase = metrics.get("phase", np.array([""] * len(metrics["epoch"])))
    x = np.arange(1, phase.size + 1, dtype=float)
    n_pre = int(np.sum(phase == "pretrain"))
    boundary = n_pre + 0.5 if 0 < n_pre < phase.size else None
    panels = _panels(metrics)
    fig = new_figure("curves")
    cols = 2 if len(panels) > 1 else 1
    axes = np.atleast_1d(fig.subplots(math.ceil(len(panels) / cols), cols, sharex=True, squeeze=False)).ravel()
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
        shade_pretrain(ax, boundary, 1.0, label=i == 0)
        for col, label in panel.series:
            if col in metrics and np.isfinite(metrics[col]).any():
                ax.plot(x, metrics[col] * panel.scale, marker="o" if x.size <= 30 else None, markersize=3, label=label)
        _maybe_log(ax, [metrics[c] for c, _ in panel.series if c in metrics])
        ax.set(title=panel.title, ylabel=panel.ylabel, xlabel="epoch (pretraining, then retraining)")
        ax.set_xlim(0.5, x.size + 0.5)
        ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        ax.remove()
    phases = f"{n_pre} pretraining + {phase.size - n_pre} retraining epochs" if boundary else f"{phase.size} epochs"
    fig.suptitle(f"{run.method} on {run.model_name}: training curves ({phases})", fontsize=11)
    return fig


def _maybe_log(ax: object, columns: list[np.ndarray]) -> None:
    """Log scale when positive values span more than a decade (errors from 90% down to 1%)."""
    values = np.concatenate(columns) if columns else np.array([])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 10:
        plain_log_axis(ax, "y")


def draw_layers(run: RunArtifacts) -> Figure:
    """Per layer: the fraction of weights kept (non-zero) and the file's bits per weight."""
    layers = run.report["layers"]
    names = [_layer_label(layer) for layer in layers]
    fig = new_figure("layers")
    left, right = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(layers))
    font = 8 if len(layers) <= 12 else 6
    _bars(left, y, [100 * float(layer.get("kept_fraction", math.nan)) for layer in layers], "tab:blue", "{:.1f}%", font)
    left.set(title="weights kept (non-zero)", xlabel="kept (% of the layer's weights)")
    left.set_xlim(0, 115)
    _bars(right, y, [float(layer.get("bits_per_weight", math.nan)) for layer in layers], "tab:orange", "{:.2f}", font)
    right.set(title="storage in the compressed file", xlabel="bits per weight (32 = float32)")
    left.set_yticks(y, names, fontsize=font)
    left.invert_yaxis()  # first layer on top, as in the network
    fig.suptitle(f"{run.method} on {run.model_name}: per-layer compression{_cr_text(run.report)}", fontsize=11)
    return fig


def _layer_label(layer: dict) -> str:
    shape = layer.get("shape")
    dims = "×".join(str(s) for s in shape) if shape else ""
    return f"{layer.get('name', '?')} ({dims})" if dims else str(layer.get("name", "?"))


def _bars(ax: object, y: np.ndarray, values: list[float], color: str, fmt: str, font: int) -> None:
    values_arr = np.nan_to_num(np.asarray(values, dtype=float))
    ax.barh(y, values_arr, color=color)
    for yi, v in zip(y, values, strict=True):
        ax.annotate(
            fmt.format(v) if math.isfinite(v) else "n/a",
            (max(v, 0) if math.isfinite(v) else 0, yi),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=font,
        )
    ax.set_xlim(0, max(values_arr.max(initial=0) * 1.18, 1e-9))
    ax.grid(axis="x", alpha=0.3)


def _cr_text(report: dict) -> str:
    cr = (report.get("file") or {}).get("cr_all")
    return f" (whole file: {cr:.1f}× smaller than float32)" if isinstance(cr, int | float) else ""


def first_layer(run: RunArtifacts) -> tuple[str, np.ndarray, np.ndarray, tuple[int, int]] | str:
    """(name, before, after, image size) of the first compressed layer, or why it cannot be shown."""
    init = run.tensors(MODEL_INIT)
    if init is None or run.quantized is None:
        return f"needs {MODEL_INIT.path} and {QUANTIZED.path} (a compression run)"
    name = next((n for n, qt in run.quantized.quantized.items() if len(qt.shape) in (2, 4)), None)
    if name is None:
        return "no compressed fully connected or convolutional layer"
    before = init[name].float().numpy()
    after = run.quantized.dequantize(name).numpy()
    if before.ndim == 4:
        return name, before, after, tuple(before.shape[2:])
    side = math.isqrt(before.shape[1])
    if side * side != before.shape[1]:
        return f"first layer {name} has {before.shape[1]} inputs, not a square image"
    return name, before.reshape(-1, side, side), after.reshape(-1, side, side), (side, side)


def _mosaic(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (n, h, w) on a grid with one NaN pixel between them (drawn as background)."""
    n, h, w = tiles.shape
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out


_MAX_CHANNELS = 4  # first layers see 1 (grey) or 3 (RGB) channels; more would make strips unreadable


def _tiles(weights: np.ndarray, limit: int) -> tuple[np.ndarray, int]:
    """Up to ``limit`` units as 2-D tiles, and how many columns make a roughly square mosaic.

    A conv filter becomes one strip of its input channels side by side (no gap inside a
    filter, so the gaps of the mosaic separate filters only).
    """
    tiles = weights[:limit]
    if tiles.ndim == 4:
        tiles = np.concatenate(list(tiles[:, :_MAX_CHANNELS].transpose(1, 0, 2, 3)), axis=2)
    units, h, w = tiles.shape
    return tiles, max(1, math.ceil(math.sqrt(units * h / w)))


def draw_filters(run: RunArtifacts, max_units: int = 32) -> Figure:
    """First-layer filters (or input weights as images) before and after compression, centred at 0."""
    name, before, after, size = first_layer(run)
    tiles_b, cols = _tiles(before, max_units)
    tiles_a, _ = _tiles(after, max_units)
    limit = symmetric_limit([tiles_b, tiles_a])
    fig = new_figure("filters")
    axes = fig.subplots(1, 2)
    import matplotlib

    # Grey gaps: white is the colour of an exact zero here, so it cannot also mark the gaps.
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    for ax, tiles, title in ((axes[0], tiles_b, "pretrained"), (axes[1], tiles_a, "compressed (quantized)")):
        image = ax.imshow(_mosaic(tiles, cols), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{title}: {100 * np.mean(tiles == 0):.0f}% zeros")
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=axes, shrink=0.7, extend="both")
    bar.set_label("weight value (blue < 0 < red)")
    if before.ndim == 4:
        chans = min(before.shape[1], _MAX_CHANNELS)
        side = f", {chans} input channels side by side" if chans > 1 else ""
        what = f"{tiles_b.shape[0]} of its {before.shape[0]} filters ({size[0]}×{size[1]}{side})"
    else:
        what = f"the input weights of {tiles_b.shape[0]} of its {before.shape[0]} units as {size[0]}×{size[1]} images"
    fig.suptitle(f"{run.method} on {run.model_name}: first layer {name}, {what}", fontsize=11)
    return fig


@dataclass(frozen=True)
class ParetoPoint:
    """One result: its label, method, error (%), compression rate and, where known, the file's bytes."""

    label: str
    method: str
    error: float
    cr: float
    bytes: float | None = None


def pareto_point(run: RunArtifacts) -> ParetoPoint:
    """Test error of the decoded model (%) and compression rate of one compression run's report."""
    report = run.report
    if report is None:
        raise RunDirError(f"{run.path_of(REPORT)} does not exist (not a finished compression run)")
    errors = report.get("errors") or {}
    stage = next((errors[s] for s in ("decoded", "retrained", "pretrained") if s in errors), {})
    error = stage.get("test_error", stage.get("val_error"))
    cr = (report.get("file") or {}).get("cr_all") or (report.get("paper_style") or {}).get("cr")
    if error is None or cr is None:
        raise RunDirError(f"{run.path_of(REPORT)} lacks the test error or the compression rate")
    nbytes = (report.get("file") or {}).get("bytes")
    return ParetoPoint(run.path.name, run.method, float(error), float(cr), None if nbytes is None else float(nbytes))


def pareto_front(points: Sequence[ParetoPoint], axis: str = "cr") -> list[ParetoPoint]:
    """Points no other point beats on both size (compression rate higher, or ``axis="bytes"``: fewer bytes) and
    error (lower), in the order of the x axis."""
    smaller = (lambda p: -p.cr) if axis == "cr" else (lambda p: p.bytes)
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (smaller(p), p.error)):
        if p.error < best:
            front.append(p)
            best = p.error
    return sorted(front, key=lambda p: p.cr if axis == "cr" else p.bytes)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def draw_pareto(
    points: Sequence[ParetoPoint], *, axis: str = "cr", error_label: str = "test error of the decoded model (%)"
) -> Figure:
    """Error vs compression rate (``axis="bytes"``: vs the file's bytes), one marker per method, the Pareto
    front as a step line."""
    x_of = (lambda p: p.cr) if axis == "cr" else (lambda p: p.bytes)
    fig = new_figure("pareto")
    ax = fig.subplots()
    methods = sorted({p.method for p in points})
    for i, method in enumerate(methods):
        mine = [p for p in points if p.method == method]
        ax.scatter(
            [x_of(p) for p in mine],
            [p.error for p in mine],
            marker=_MARKERS[i % len(_MARKERS)],
            s=55,
            color=f"C{i}",
            label=method,
            zorder=3,
            edgecolors="black",
            linewidths=0.5,
        )
    front = pareto_front(points, axis)
    # Between two front points only the error of the higher compression rate (fewer bytes) is reached.
    ax.step(
        [x_of(p) for p in front],
        [p.error for p in front],
        where="pre" if axis == "cr" else "post",
        color="0.3",
        linestyle="--",
        linewidth=1.2,
        label="Pareto front",
        zorder=2,
    )
    for p in front:
        ax.annotate(p.label, (x_of(p), p.error), xytext=(5, 5), textcoords="offset points", fontsize=7)
    plain_log_axis(ax, "x")
    ax.margins(x=0.12, y=0.12)  # room for the labels of the extreme points
    xlabel, better = ("compression rate (× smaller than float32, log scale)", "right")
    if axis != "cr":
        xlabel, better = ("bytes of the .wsz file (log scale)", "left")
    ax.set(xlabel=xlabel, ylabel=error_label, title=f"Error vs size over {len(points)} runs (lower {better} is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="method", fontsize=8)
    return fig
