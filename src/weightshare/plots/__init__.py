"""Figures from run directories (matplotlib, an optional extra)."""

from __future__ import annotations

from weightshare.plots.run import KINDS, make_gif, plot_pareto, plot_run

__all__ = ["KINDS", "make_gif", "plot_pareto", "plot_run"]
