"""What a study found: every trial as a row, the Pareto front of validation error vs file bytes, its plot, and
each Pareto trial's recipe as a TOML file that ``weightshare compress --config`` accepts.

The front is chosen on the *validation* error; the test error of each trial is listed beside it, for the
report only (docs/search.md).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from weightshare.core.io import atomic_write_text, write_json
from weightshare.search.config import FINISHED, StudySpec

__all__ = ["pareto_rows", "trial_rows", "write_results", "recipe_toml"]

COLUMNS = ("trial", "state", "val_error", "test_error", "bytes", "cr", "paper_cr", "nnz", "unique_values", "run_dir")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per ended trial: its state, settings (``sws.tau`` ...), figures and, if it failed, why."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in FINISHED:
            continue
        row = {"trial": t.number, "state": t.state.name.lower(), **{k: t.user_attrs.get(k) for k in COLUMNS[2:]}}
        row.update({f"param:{k}": v for k, v in sorted(t.params.items())})
        if "error" in t.user_attrs:
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return rows


def pareto_rows(rows: list[dict[str, Any]], max_bytes: int | None = None) -> list[dict[str, Any]]:
    """The complete trials no other complete trial beats on both validation error and bytes (within
    ``max_bytes``, if given), fewest bytes first.

    >>> rows = [{"trial": 0, "state": "complete", "val_error": 2.0, "bytes": 900},
    ...         {"trial": 1, "state": "complete", "val_error": 1.5, "bytes": 1200},
    ...         {"trial": 2, "state": "complete", "val_error": 2.5, "bytes": 1000},
    ...         {"trial": 3, "state": "fail", "val_error": None, "bytes": None}]
    >>> [r["trial"] for r in pareto_rows(rows)], [r["trial"] for r in pareto_rows(rows, max_bytes=1000)]
    ([0, 1], [0])
    """
    usable = [r for r in rows if r["state"] == "complete" and r["bytes"] is not None and not math.isnan(r["val_error"])]
    usable = [r for r in usable if max_bytes is None or r["bytes"] <= max_bytes]
    front, best = [], math.inf
    for row in sorted(usable, key=lambda r: (r["bytes"], r["val_error"])):
        if row["val_error"] < best:
            front.append(row)
            best = row["val_error"]
    return front


def write_results(spec: StudySpec, study: Any) -> dict[str, Any]:
    """``trials.csv``, ``pareto.csv``, ``pareto.json``, ``pareto.png`` and ``pareto/trial_NNNN.toml`` into the
    study directory; returns ``{"trials": ..., "pareto": [...], "counts": {...}}``."""
    folder = Path(spec.study_dir)
    rows = trial_rows(study)
    front = pareto_rows(rows, spec.settings.max_bytes)
    atomic_write_text(folder / "trials.csv", _csv(rows))
    atomic_write_text(folder / "pareto.csv", _csv(front))
    for row in front:
        row["recipe"] = str(Path("pareto", f"trial_{row['trial']:04d}.toml"))
        atomic_write_text(folder / row["recipe"], recipe_toml(spec, _params(row), row))
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail")}
    summary = {"study": spec.study_name, "method": spec.config.method, "counts": counts, "pareto": front}
    summary["figure"] = _plot(spec, rows, folder / "pareto.png")
    write_json(folder / "pareto.json", summary)
    return summary


def _params(row: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("param:"): value for key, value in row.items() if key.startswith("param:")}


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(COLUMNS) + sorted({k for r in rows for k in r if k not in COLUMNS})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def recipe_toml(spec: StudySpec, params: dict[str, Any], row: dict[str, Any]) -> str:
    """The whole recipe of a trial (the study's base recipe with the trial's settings) as TOML, with a header
    saying where it comes from and what it gave."""
    import tomli_w

    sections: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section_name, key = name.split(".", 1)
        sections.setdefault(section_name, {})[key] = value
    recipe = spec.config.updated(sections, f"trial {row['trial']}").sections()
    recipe["train"].pop("model", None)  # the model is always the source run's
    recipe = {name: {k: v for k, v in values.items() if v is not None} for name, values in recipe.items()}
    header = (
        f"# {spec.config.method} recipe of trial {row['trial']} of study {spec.study_name!r} (weightshare tune):\n"
        f"# validation error {row['val_error']:.2f}% decoded from a {row['bytes']:,}-byte file "
        f"(test error {row['test_error']:.2f}%).\n"
        f"# Use it: weightshare compress {spec.config.method} --from RUN --out DIR --config THIS_FILE\n"
    )
    return header + tomli_w.dumps(recipe)


def _plot(spec: StudySpec, rows: list[dict[str, Any]], path: Path) -> str | None:
    """Validation error vs bytes of every complete trial, the front marked; None without matplotlib."""
    points = [(f"#{r['trial']}", spec.config.method, r["val_error"], r["cr"], r["bytes"])
              for r in rows if r["state"] == "complete" and r["bytes"] is not None]  # fmt: skip
    return pareto_figure(points, path, "validation error of the decoded model (%)")


def pareto_figure(points: list[tuple[str, str, float, float, int]], path: Path, error_label: str) -> str | None:
    """Error vs file bytes of ``(label, method, error, cr, bytes)`` points into ``path``; None without points or
    without matplotlib (the tables are written all the same)."""
    try:
        from weightshare.plots.run import save_pareto
        from weightshare.plots.summary import ParetoPoint
    except ImportError:
        return None
    if not points:
        return None
    return str(save_pareto([ParetoPoint(*p) for p in points], path, axis="bytes", error_label=error_label))
