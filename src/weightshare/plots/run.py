"""Figures from run directories: what compression did, for any method.

Public API (the ``weightshare plot`` command calls these):

* :func:`plot_run` — the figures of one run, ``RUN_DIR/figures/<kind>.png`` (and ``.pdf``);
* :func:`plot_pareto` — error vs compression rate over many runs, Pareto front highlighted;
* :func:`make_gif` — ``figures/scatter.gif``, the weight scatter over the retraining epochs,
  from the frames recorded with ``--make-gif`` (the frames are removed afterwards).

The figure kinds (:data:`KINDS`):

=========  ================================================================  =====================
kind       shows                                                             needs
=========  ================================================================  =====================
curves     loss, complexity loss, error, sparsity per epoch                  metrics.csv
scatter    pretrained vs retrained weights, marginal histograms (paper Fig.2) quantized checkpoint
mixture    final mixture density over the weight histogram, before/after     mixture_final.json
dynamics   mixture means ± σ over the epochs, width ∝ mixing weight          mixture_epochs/
layers     per-layer kept fraction and bits per weight                       report.json
filters    first-layer filters / input weights as images, before and after   quantized checkpoint
=========  ================================================================  =====================

A kind that does not apply to a run (no mixture for Deep Compression) is skipped
with a one-line note; a missing or corrupt file that a kind needs raises
:class:`~weightshare.core.errors.RunDirError` naming the file. matplotlib is imported
only when a figure is drawn, never by ``import weightshare``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors
from weightshare.plots.artifacts import Mixture, RunArtifacts
from weightshare.runs.schema import FIGURES, FRAMES, MODEL_FINAL, MODEL_INIT, QUANTIZED

__all__ = ["KINDS", "plot_run", "plot_pareto", "make_gif"]

KINDS = ("curves", "scatter", "mixture", "dynamics", "layers", "filters")

_GIF_FPS = 4
_GIF_HOLD = 4  # extra copies of the last frame, so the animation pauses on the result


def _missing(run: RunArtifacts, *names: str) -> str | None:
    absent = [n for n in names if not run.file(n).exists()]
    return f"the run has no {', '.join(absent)}" if absent else None


def _why_not(run: RunArtifacts, kind: str) -> str | None:
    """Why ``kind`` does not apply to ``run`` (None when it does)."""
    weights = (MODEL_INIT.path, MODEL_FINAL.path, QUANTIZED.path)
    if kind == "curves":
        return None  # every run trains; a missing metrics.csv is an error, not a skip
    if kind == "scatter":
        return _missing(run, *weights)
    if kind == "mixture":
        if not run.file("mixture_final.json").is_file():
            return "no mixture prior (not a soft weight-sharing run)"
        return _missing(run, *weights[1:])
    if kind == "dynamics":
        return None if run.mixture_history else "no mixture records per epoch (not a soft weight-sharing run)"
    if kind == "layers":
        return None if (run.report or {}).get("layers") else "no per-layer table in report.json"
    from weightshare.plots.summary import first_layer

    found = first_layer(run)
    return found if isinstance(found, str) else None


def _drawer(kind: str, sample: int) -> Callable[[RunArtifacts], object]:
    from weightshare.methods.sws import figures as mix
    from weightshare.plots import summary as summary

    return {
        "curves": summary.draw_curves,
        "scatter": lambda run: mix.draw_scatter(run, sample),
        "mixture": mix.draw_mixture,
        "dynamics": mix.draw_dynamics,
        "layers": summary.draw_layers,
        "filters": summary.draw_filters,
    }[kind]


def _check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = tuple(kinds) if kinds is not None else KINDS
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown figure kind(s) {', '.join(map(repr, unknown))}; choose from {', '.join(KINDS)}")
    return chosen


def plot_run(
    run_dir: str | os.PathLike, kinds: Sequence[str] | None = None, *, pdf: bool = False, sample: int = 20000
) -> list[Path]:
    """Draw the figures of one run into ``run_dir/figures/``; returns the files written.

    ``kinds`` defaults to every kind that applies; ``sample`` caps the dots of the scatter
    (a seeded sample). Kinds that do not apply are skipped with a printed note.
    """
    chosen = _check_kinds(kinds)
    if sample < 1:
        raise ValueError(f"sample must be a positive number of weights, got {sample}")
    run = RunArtifacts(run_dir)
    from weightshare.plots.style import save_figure

    written: list[Path] = []
    for kind in chosen:
        reason = _why_not(run, kind)
        if reason:
            print(f"{kind}: skipped ({reason})")
            continue
        written += save_figure(_drawer(kind, sample)(run), run.path_of(FIGURES), kind, pdf)
    return written


def plot_pareto(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Test error vs compression rate of many runs (any method) into ``out`` (a .png/.pdf, or a folder).

    Runs without a finished report (pretraining runs) are skipped with a note.
    """
    from weightshare.plots.summary import draw_pareto, pareto_point

    points = []
    for run_dir in run_dirs:
        try:
            points.append(pareto_point(RunArtifacts(run_dir)))
        except RunDirError as exc:
            print(f"pareto: skipped {run_dir} ({exc})")
    if not points:
        raise RunDirError("no run with a report.json among " + ", ".join(map(str, run_dirs)))
    out = Path(out)
    path = out if out.suffix.lower() in (".png", ".pdf", ".svg") else out / "pareto.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    from weightshare.plots.style import DPI, plt

    fig = draw_pareto(points)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# --- the animation -------------------------------------------------------------------------


def _read_frames(run: RunArtifacts) -> tuple[list[int], list[np.ndarray]]:
    folder = run.path_of(FRAMES)
    files = sorted(folder.glob("epoch_*.safetensors")) if folder.is_dir() else []
    if not files:
        raise RunDirError(f"{folder} holds no frames (record them with `weightshare compress --make-gif`)")
    epochs, weights = [], []
    for f in files:
        tensors = load_tensors(f)
        if "w" not in tensors:
            raise RunDirError(f"{f} is not a scatter frame (no tensor 'w')")
        epochs.append(int(f.stem.split("_")[-1]))
        weights.append(tensors["w"].float().reshape(-1).numpy())
    if any(w.shape != weights[0].shape for w in weights):
        raise RunDirError(f"{folder}: frames sample different numbers of weights")
    return epochs, weights


def _mixture_at(history: list[Mixture], epoch: int) -> Mixture | None:
    """The mixture recorded at ``epoch`` or the last one before it (epoch 0: the first record)."""
    if not history:
        return None
    earlier = [m for m in history if (m.epoch or 0) <= epoch]
    return earlier[-1] if earlier else history[0]


def _frame_style(run: RunArtifacts, mixture: Mixture | None, w: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-dot colours and horizontal lines of one frame."""
    from weightshare.methods.sws.figures import LevelStyle
    from weightshare.plots.style import component_colors

    if mixture is None:  # no mixture: plain dots, the final codebook values as lines
        values = np.unique(run.covered_quantized()) if run.quantized is not None else np.array([])
        levels = [LevelStyle(float(v), "0.4", "") for v in values]
        return np.tile(np.array([[0.12, 0.47, 0.71, 1.0]]), (w.size, 1)), levels
    colors = component_colors(mixture.size)
    keep = np.flatnonzero(mixture.pis > 1e-3)
    levels = [LevelStyle(float(mixture.means[k]), colors[k], "", float(mixture.sigmas[k])) for k in keep]
    return colors[mixture.assign(w)], levels


def make_gif(run_dir: str | os.PathLike) -> Path:
    """Animate the weight scatter over the retraining epochs into ``figures/scatter.gif``.

    Reads ``frames/epoch_XXXX.safetensors`` (epoch 0 = pretrained) and removes ``frames/``
    once the animation is written.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    from weightshare.methods.sws.figures import draw_weight_scatter
    from weightshare.plots.style import new_figure, plt, symmetric_limit

    run = RunArtifacts(run_dir)
    epochs, weights = _read_frames(run)
    limit = 1.1 * symmetric_limit(weights, 0.999)
    fig = new_figure("gif")
    ax = fig.subplots()

    def draw(i: int) -> None:
        i = min(i, len(weights) - 1)
        ax.clear()
        colors, levels = _frame_style(run, _mixture_at(run.mixture_history, epochs[i]), weights[i])
        draw_weight_scatter(ax, weights[0], weights[i], colors, levels, limit, ylabel="weight at this epoch $w_t$")
        label = "pretrained" if epochs[i] == 0 else f"retraining epoch {epochs[i]} of {epochs[-1]}"
        ax.set_title(f"{run.method} on {run.model_name}: {label}\n({weights[0].size:,} sampled weights)", fontsize=10)

    path = run.path_of(FIGURES, "scatter.gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        animation = FuncAnimation(fig, draw, frames=len(weights) + _GIF_HOLD, repeat=False)
        animation.save(path, writer=PillowWriter(fps=_GIF_FPS))
    finally:
        plt.close(fig)
    shutil.rmtree(run.path_of(FRAMES))  # only once the animation is safely written
    return path
