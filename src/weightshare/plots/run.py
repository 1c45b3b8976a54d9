"""Figures from run directories: what compression did, for any method.

Public API (the ``weightshare plot`` command calls these):

* :func:`plot_run` — the figures of one run, ``RUN_DIR/figures/<kind>.png`` (and ``.pdf``);
* :func:`plot_pareto` — error vs compression rate over many runs, Pareto front highlighted;
* :func:`make_gif` — ``figures/scatter.gif``, the weight scatter over the retraining epochs,
  from the frames recorded with ``--make-gif`` (the frames are removed afterwards).

The generic figure kinds, drawn for a run of any method:

=========  ================================================================  =====================
kind       shows                                                             needs
=========  ================================================================  =====================
curves     loss, complexity loss, error, sparsity per epoch                  metrics.csv
scatter    pretrained vs retrained weights, marginal histograms              quantized checkpoint
           (Ullrich et al. 2017, Figure 2), dots by codebook index
layers     per-layer kept fraction and bits per weight                       report.json
filters    first-layer filters / input weights as images, before and after   quantized checkpoint
=========  ================================================================  =====================

A method adds kinds of its own, or replaces a generic one, through
:meth:`weightshare.methods.base.Method.figures` (soft weight-sharing adds ``mixture``
and ``dynamics`` and colours the scatter by mixture component); :data:`KINDS` lists
every kind of every registered method. The run's method is found through the
registry from the name the run recorded; a pretraining run has none.

A kind that does not apply to a run (no mixture for Deep Compression) is skipped
with a one-line note; a missing or corrupt file that a kind needs raises
:class:`~weightshare.core.errors.RunDirError` naming the file. matplotlib is imported
only when a figure is drawn, never by ``import weightshare``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightshare.core.errors import RunDirError
from weightshare.core.io import load_tensors
from weightshare.methods.base import FigureSpec, Method
from weightshare.plots.artifacts import RunArtifacts
from weightshare.runs.schema import FIGURES, FRAMES, REPORT

if TYPE_CHECKING:
    from weightshare.plots.summary import ParetoPoint

# KINDS is served by the module's __getattr__ (computed on first use).
__all__ = ["KINDS", "all_figures", "figure_specs", "make_gif", "method_class", "plot_pareto", "plot_run"]  # noqa: F822

# A method's own kinds follow the weight scatter, before the per-layer summaries.
_METHOD_KINDS_AFTER = "scatter"
_GIF_FPS = 4
_GIF_HOLD = 4  # extra copies of the last frame, so the animation pauses on the result


def generic_figures() -> dict[str, FigureSpec]:
    """The kinds every run can have, in drawing order (drawers imported here: they need matplotlib)."""
    from weightshare.plots import summary
    from weightshare.plots.weights import SCATTER

    def no_layers(run: RunArtifacts) -> str | None:
        return None if (run.report or {}).get("layers") else f"no per-layer table in {REPORT.path}"

    def no_filters(run: RunArtifacts) -> str | None:
        found = summary.first_layer(run)
        return found if isinstance(found, str) else None

    return {
        # Every run trains: a missing metrics.csv is an error, not a skip.
        "curves": FigureSpec(lambda run: None, lambda run, sample: summary.draw_curves(run)),
        "scatter": SCATTER,
        "layers": FigureSpec(no_layers, lambda run, sample: summary.draw_layers(run)),
        "filters": FigureSpec(no_filters, lambda run, sample: summary.draw_filters(run)),
    }


def method_class(name: str) -> type[Method] | None:
    """The registered method class of that name; None for a run without one (pretraining)."""
    from weightshare.methods import CONFIGS, METHODS

    return METHODS[CONFIGS[name]] if name in CONFIGS else None


def _merged(generic: dict[str, FigureSpec], own: dict[str, FigureSpec]) -> dict[str, FigureSpec]:
    """Generic kinds with a method's: same-named kinds replaced, new ones after the scatter."""
    merged: dict[str, FigureSpec] = {}
    for kind, spec in generic.items():
        merged[kind] = own.get(kind, spec)
        if kind == _METHOD_KINDS_AFTER:
            merged |= {k: s for k, s in own.items() if k not in generic}
    return merged


def figure_specs(run: RunArtifacts) -> dict[str, FigureSpec]:
    """The kinds of this run: the generic ones merged with its method's, in drawing order."""
    cls = method_class(run.method)
    return _merged(generic_figures(), cls.figures() if cls is not None else {})


def all_figures() -> dict[str, FigureSpec]:
    """The generic kinds and every kind a registered method adds (the first method to add one gives its spec)."""
    from weightshare.methods import METHODS

    generic = generic_figures()
    added: dict[str, FigureSpec] = {}
    for cls in METHODS.values():
        for kind, spec in cls.figures().items():
            if kind not in generic:
                added.setdefault(kind, spec)
    return _merged(generic, added)


def __getattr__(name: str) -> Any:
    # KINDS is computed on first use: it asks every method for its figures, which imports matplotlib.
    if name == "KINDS":
        return tuple(all_figures())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
    known = tuple(all_figures())
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = tuple(kinds) if kinds is not None else known
    unknown = [k for k in chosen if k not in known]
    if unknown:
        raise ValueError(f"unknown figure kind(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    return chosen


def _why_not(run: RunArtifacts, kind: str, specs: dict[str, FigureSpec]) -> str | None:
    """Why ``kind`` does not apply to ``run`` (None when it does)."""
    if kind in specs:
        return specs[kind].why_not(run)
    return all_figures()[kind].absent or f"{run.method} runs have no {kind} figure"


def plot_run(
    run_dir: str | os.PathLike, kinds: Sequence[str] | None = None, *, pdf: bool = False, sample: int = 20000
) -> list[Path]:
    """Draw the figures of one run into ``run_dir/figures/``; returns the files written.

    ``kinds`` defaults to every kind of :data:`KINDS`; ``sample`` caps the dots of the scatter
    (a seeded sample). Kinds that do not apply are skipped with a printed note.
    """
    chosen = _check_kinds(kinds)
    if sample < 1:
        raise ValueError(f"sample must be a positive number of weights, got {sample}")
    run = RunArtifacts(run_dir)
    specs = figure_specs(run)
    from weightshare.plots.style import save_figure

    written: list[Path] = []
    for kind in chosen:
        reason = _why_not(run, kind, specs)
        if reason:
            print(f"{kind}: skipped ({reason})")
            continue
        written += save_figure(specs[kind].draw(run, sample), run.path_of(FIGURES), kind, pdf)
    return written


def plot_pareto(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Test error vs compression rate of many runs (any method) into ``out`` (a .png/.pdf, or a folder).

    Runs without a finished report (pretraining runs) are skipped with a note.
    """
    from weightshare.plots.summary import pareto_point

    points = []
    for run_dir in run_dirs:
        try:
            points.append(pareto_point(RunArtifacts(run_dir)))
        except RunDirError as exc:
            print(f"pareto: skipped {run_dir} ({exc})")
    if not points:
        raise RunDirError(f"no run with a {REPORT.path} among " + ", ".join(map(str, run_dirs)))
    out = Path(out)
    return save_pareto(points, out if out.suffix.lower() in (".png", ".pdf", ".svg") else out / "pareto.png")


def save_pareto(
    points: Sequence[ParetoPoint], path: str | os.PathLike, *, axis: str = "cr", error_label: str | None = None
) -> Path:
    """Draw :func:`~weightshare.plots.summary.draw_pareto` into ``path`` (error vs ``axis``: ``cr`` or ``bytes``)."""
    from weightshare.plots.style import DPI, plt
    from weightshare.plots.summary import draw_pareto

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_pareto(points, axis=axis, **({"error_label": error_label} if error_label else {}))
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


def make_gif(run_dir: str | os.PathLike) -> Path:
    """Animate the weight scatter over the retraining epochs into ``figures/scatter.gif``.

    Reads ``frames/epoch_XXXX.safetensors`` (epoch 0 = pretrained) and removes ``frames/``
    once the animation is written. The scatter kind of the run's method styles each frame.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    from weightshare.plots.style import new_figure, plt, symmetric_limit
    from weightshare.plots.weights import codebook_frames, draw_weight_scatter

    run = RunArtifacts(run_dir)
    epochs, weights = _read_frames(run)
    style = (figure_specs(run)["scatter"].frames or codebook_frames)(run)
    limit = 1.1 * symmetric_limit(weights, 0.999)
    fig = new_figure("gif")
    ax = fig.subplots()

    def draw(i: int) -> None:
        i = min(i, len(weights) - 1)
        ax.clear()
        colors, levels = style(epochs[i], weights[i])
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
