"""Figures from run directories (matplotlib, an optional extra).

Generic here; a method's own figures live with the method (``methods/<m>/figures.py``) and
reach :func:`plot_run` through :meth:`weightshare.methods.base.Method.figures`.
"""

from __future__ import annotations

from typing import Any

from weightshare.plots.run import make_gif, plot_pareto, plot_run

__all__ = ["KINDS", "make_gif", "plot_pareto", "plot_run"]


def __getattr__(name: str) -> Any:
    # KINDS asks every method for its figures (which imports matplotlib), so only on first use.
    if name == "KINDS":
        from weightshare.plots import run

        return run.KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
