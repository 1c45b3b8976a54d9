"""Soft weight-sharing's own figures: the learned mixture prior, its dynamics, the scatter by component.

The method declares them with :meth:`SoftWeightSharing.figures` (a :class:`MixtureFigures`
given the names its records are written under); nothing here names a record file.

=========  ================================================================  =====================
kind       shows                                                             needs
=========  ================================================================  =====================
scatter    the generic scatter, dots coloured by mixture component, lines    the final mixture
           at the means with ±2σ bands (Ullrich et al. 2017, Figure 2)
mixture    final mixture density over the weight histogram, before/after     the final mixture
           quantization
dynamics   mixture means ± σ over the epochs, width ∝ mixing weight          one record per epoch
=========  ================================================================  =====================

Colours follow one rule (:func:`~weightshare.plots.style.component_colors`): component k
of the mixture is the same colour in every figure and in the animation, and a weight
takes the colour of the component it is assigned to.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.methods.base import FigureSpec
from weightshare.plots.artifacts import RunArtifacts
from weightshare.plots.style import (
    Figure,
    component_colors,
    log_counts_axis,
    new_figure,
    plain_log_axis,
    symmetric_limit,
)
from weightshare.plots.weights import (
    SCATTER,
    Colouring,
    FrameStyle,
    LevelStyle,
    codebook_colouring,
    codebook_frames,
    component_legend,
    draw_scatter,
)
from weightshare.runs.schema import MODEL_FINAL, QUANTIZED

__all__ = [
    "Mixture",
    "MixtureFigures",
    "component_colouring",
    "draw_dynamics",
    "draw_mixture",
    "mixture_frames",
]

# Inches per kind (the generic kinds' sizes are in weightshare.plots.style.FIGSIZES).
SIZES: dict[str, tuple[float, float]] = {"mixture": (9.0, 7.5), "dynamics": (10.0, 7.5)}
NO_MIXTURE = "no mixture prior (not a soft weight-sharing run)"
NO_HISTORY = "no mixture records per epoch (not a soft weight-sharing run)"
_BAR_LABEL = "mixture component (0 = zero spike)"
_SHOWN_PI = 1e-3  # the animation draws only components that still hold weights


@dataclasses.dataclass(frozen=True)
class Mixture:
    """One snapshot of a Gaussian mixture prior; component 0 is the zero spike."""

    means: np.ndarray
    sigmas: np.ndarray
    pis: np.ndarray
    epoch: int | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: Path) -> Mixture:
        try:
            means = np.asarray(obj["means"], dtype=float)
            pis = np.asarray(obj["pis"], dtype=float)
            sigmas = _sigmas(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{source} is not a mixture record (means, sigmas, pis): {exc}") from None
        if not (means.shape == sigmas.shape == pis.shape) or means.ndim != 1:
            raise RunDirError(f"{source}: means, sigmas and pis must be lists of the same length")
        epoch = obj.get("epoch")
        return cls(means, sigmas, pis, int(epoch) if epoch is not None else None)

    @property
    def size(self) -> int:
        return int(self.means.size)

    def assign(self, w: np.ndarray) -> np.ndarray:
        """Most responsible component of each weight (MAP under the mixture, paper Algorithm 1)."""
        sig = np.maximum(self.sigmas, 1e-12)
        logp = np.log(np.maximum(self.pis, 1e-300)) - np.log(sig) - 0.5 * ((w[:, None] - self.means) / sig) ** 2
        return logp.argmax(axis=1)

    def density(self, x: np.ndarray) -> np.ndarray:
        """Per-component weighted densities ``pi_k N(x | mu_k, sigma_k^2)``, shape (K, len(x))."""
        sig = np.maximum(self.sigmas, 1e-12)[:, None]
        z = (x[None, :] - self.means[:, None]) / sig
        return self.pis[:, None] * np.exp(-0.5 * z**2) / (sig * math.sqrt(2 * math.pi))


def _sigmas(obj: dict[str, Any]) -> np.ndarray:
    # Writers have stored the spread in three equivalent ways; accept each.
    if "sigmas" in obj:
        return np.asarray(obj["sigmas"], dtype=float)
    if "precisions" in obj:
        return 1.0 / np.sqrt(np.asarray(obj["precisions"], dtype=float))
    return np.exp(-0.5 * np.asarray(obj["log_precisions"], dtype=float))


@dataclasses.dataclass(frozen=True)
class MixtureFigures:
    """Soft weight-sharing's figure kinds, reading the mixture from the records the method names.

    ``final`` and ``epochs`` are the names :meth:`SoftWeightSharing.records` writes under:
    the mixture after retraining and a folder of one mixture per retraining epoch.
    """

    final: str
    epochs: str

    def specs(self) -> dict[str, FigureSpec]:
        """``mixture`` and ``dynamics`` added; ``scatter`` (and its animation) coloured by component."""
        return {
            "scatter": dataclasses.replace(SCATTER, draw=self.scatter, frames=self.frames),
            "mixture": FigureSpec(self.why_no_mixture, self.mixture, absent=NO_MIXTURE),
            "dynamics": FigureSpec(self.why_no_history, self.dynamics, absent=NO_HISTORY),
        }

    # --- the records
    def final_mixture(self, run: RunArtifacts) -> Mixture | None:
        record = run.record(self.final)
        return Mixture.from_json(record, run.file(self.final)) if record is not None else None

    def epoch_files(self, run: RunArtifacts) -> list[Path]:
        folder = run.file(self.epochs)
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def history(self, run: RunArtifacts) -> list[Mixture]:
        """The mixture of every recorded epoch, in epoch order (a record without an epoch first)."""
        history = [Mixture.from_json(run.record(str(f.relative_to(run.path))), f) for f in self.epoch_files(run)]
        return sorted(history, key=lambda m: m.epoch if m.epoch is not None else 0)

    # --- the FigureSpec callables (``sample`` only caps the scatter's dots)
    def why_no_mixture(self, run: RunArtifacts) -> str | None:
        return NO_MIXTURE if not run.file(self.final).is_file() else run.lacks(MODEL_FINAL, QUANTIZED)

    def why_no_history(self, run: RunArtifacts) -> str | None:
        return None if self.epoch_files(run) else NO_HISTORY

    def scatter(self, run: RunArtifacts, sample: int) -> Figure:
        mixture = self.final_mixture(run)
        return draw_scatter(run, sample, lambda r: component_colouring(r, mixture))

    def mixture(self, run: RunArtifacts, sample: int) -> Figure:
        return draw_mixture(run, self.final_mixture(run))

    def dynamics(self, run: RunArtifacts, sample: int) -> Figure:
        return draw_dynamics(run, self.history(run))

    def frames(self, run: RunArtifacts) -> FrameStyle:
        return mixture_frames(run, self.history(run))


# --- the scatter by component (paper Figure 2) ------------------------------------------------


def component_colouring(run: RunArtifacts, mixture: Mixture | None) -> Colouring:
    """Dots by assigned component, lines at the used components' means with ±2σ bands.

    Needs the one global codebook soft weight-sharing quantizes to (paper Algorithm 1); without
    a mixture or with several codebooks the dots keep the generic codebook colouring.
    """
    codebooks = [cb.numpy().astype(float) for cb in run.quantized.codebooks]
    if mixture is None or len(codebooks) != 1:
        return codebook_colouring(run)
    palette = component_colors(mixture.size)
    component = _codebook_to_component(codebooks[0], mixture)[run.covered_indices()]
    levels = [
        LevelStyle(float(mixture.means[k]), palette[k], _component_label(mixture, k), float(mixture.sigmas[k]), int(k))
        for k in np.unique(component)
    ]
    return Colouring(palette, component, levels, functools.partial(_component_scatter_legend, palette, levels))


def _codebook_to_component(codebook: np.ndarray, mixture: Mixture) -> np.ndarray:
    """Component of each codebook entry: entry 0 is the zero spike, others the nearest mean."""
    comp = np.abs(codebook[:, None] - mixture.means[None, :]).argmin(axis=1)
    comp[0] = 0
    return comp


def _component_label(mixture: Mixture, k: int) -> str:
    name = "zero spike" if k == 0 else f"component {k}"
    return f"{name}: μ={mixture.means[k]:+.3f}, π={mixture.pis[k]:.3f}"


def _component_scatter_legend(palette: np.ndarray, levels: list[LevelStyle], fig: Figure, ax: Any) -> None:
    labelled = [lv for lv in levels if lv.label]
    component_legend(
        fig,
        ax,
        palette,
        [lv.component for lv in labelled],
        [lv.label.split(", π")[0] for lv in labelled],
        inside=True,
        bar_label=_BAR_LABEL,
        loc="center",
        title="assigned to\n(line: mean μ, band: ±2σ)",
        title_fontsize=7,
    )


# --- the animation frames -----------------------------------------------------------------------


def mixture_frames(run: RunArtifacts, history: list[Mixture]) -> FrameStyle:
    """Each frame coloured by the mixture of its epoch, its live components as lines with ±2σ bands."""
    if not history:
        return codebook_frames(run)

    def style(epoch: int, w: np.ndarray) -> tuple[np.ndarray, list[LevelStyle]]:
        mixture = _mixture_at(history, epoch)
        colors = component_colors(mixture.size)
        keep = np.flatnonzero(mixture.pis > _SHOWN_PI)
        levels = [LevelStyle(float(mixture.means[k]), colors[k], "", float(mixture.sigmas[k])) for k in keep]
        return colors[mixture.assign(w)], levels

    return style


def _mixture_at(history: list[Mixture], epoch: int) -> Mixture:
    """The mixture recorded at ``epoch`` or the last one before it (epoch 0: the first record)."""
    earlier = [m for m in history if (m.epoch or 0) <= epoch]
    return earlier[-1] if earlier else history[0]


# --- the mixture and its dynamics ----------------------------------------------------------------


def draw_mixture(run: RunArtifacts, mixture: Mixture) -> Figure:
    """The final mixture density over the weight histogram, before and after quantization."""
    wt = run.covered(run.tensors(MODEL_FINAL))
    wq = run.covered_quantized() if run.quantized is not None else None
    colors = component_colors(mixture.size)
    used = np.flatnonzero(mixture.pis > 1e-6)
    limit = 1.1 * max(
        symmetric_limit([wt], 0.999), float(np.max(np.abs(mixture.means[used]) + 3 * mixture.sigmas[used]))
    )
    bins = np.linspace(-limit, limit, 201)
    fig = new_figure(SIZES["mixture"])
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
    labels = [_component_label(mixture, k) for k in used]
    component_legend(fig, top, colors, list(used), labels, bar_label=_BAR_LABEL, loc="upper right")
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


def draw_dynamics(run: RunArtifacts, history: list[Mixture]) -> Figure:
    """Mixture means ± σ over the retraining epochs; line width and opacity follow the mixing weight."""
    size = max(m.size for m in history)
    epochs = np.array([m.epoch if m.epoch is not None else i + 1 for i, m in enumerate(history)], dtype=float)
    means, sigmas, pis = (
        np.array([_pad(getattr(m, key), size) for m in history]) for key in ("means", "sigmas", "pis")
    )
    colors = component_colors(size)
    fig = new_figure(SIZES["dynamics"])
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
        bar_label=_BAR_LABEL,
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
