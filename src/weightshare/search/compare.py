"""Every method side by side from one pretrained run: one table, one plot (``weightshare compare``).

Each method runs its preset named after the model (or a recipe file, e.g. one ``weightshare tune`` wrote)
into ``OUT/<label>``, an ordinary compression run directory; a run already finished there is reused, so an
interrupted comparison continues where it stopped. The table quotes what every report quotes first: the test
error of the model decoded from the file and the file's bytes, with the paper-style rate beside them, labelled.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightshare.core.errors import ConfigError
from weightshare.core.io import atomic_write_text, read_json, write_json
from weightshare.core.settings import load_toml, validate
from weightshare.methods import CONFIGS, config_class
from weightshare.methods.base import MethodConfig
from weightshare.pipeline.compress import compress
from weightshare.pipeline.pretrain import open_source_run
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import CONFIG, REPORT
from weightshare.search.results import pareto_figure

__all__ = ["Entry", "compare", "format_table", "parse_recipes", "plan_entries"]

COLUMNS = {
    "label": "run",
    "method": "method",
    "recipe": "recipe",
    "test_error": "decoded test error (%)",
    "bytes": "file bytes",
    "onnx_bytes": "ONNX bytes",
    "safetensors_bytes": "safetensors codebooks bytes",
    "dense_bytes": "dense float32 bytes",
    "cr": "file CR",
    "paper_cr": "paper-style CR (estimate)",
    "nonzero_percent": "non-zeros (%)",
    "unique_values": "distinct values",
    "wall_s": "wall time (s)",
}


@dataclass(frozen=True)
class Entry:
    """One run of the comparison: its label (the run directory's name), recipe and where the recipe came from."""

    label: str
    config: MethodConfig
    recipe: str


def parse_recipes(specs: list[str]) -> dict[str, list[str]]:
    """``["sws=a.toml", "sws=b.toml"]`` -> ``{"sws": ["a.toml", "b.toml"]}``; a malformed one is refused.

    >>> parse_recipes(["sws=tuned.toml"])
    {'sws': ['tuned.toml']}
    >>> parse_recipes(["tuned.toml"])
    Traceback (most recent call last):
    ...
    weightshare.core.errors.ConfigError: --recipe 'tuned.toml': expected METHOD=FILE.toml, e.g. sws=tuned.toml
    """
    out: dict[str, list[str]] = {}
    for spec in specs:
        method, sep, path = spec.partition("=")
        if not sep or not path:
            raise ConfigError(f"--recipe {spec!r}: expected METHOD=FILE.toml, e.g. sws=tuned.toml")
        config_class(method)  # an unknown method is refused naming the known ones
        out.setdefault(method, []).append(path)
    return out


def plan_entries(
    source_config: dict[str, Any], methods: list[str] | None = None, recipes: dict[str, list[str]] | None = None
) -> list[Entry]:
    """The runs of a comparison: for each method its recipe files, else its preset named after the model.

    Without ``methods``, every method that has a recipe file or a preset for the model; a method asked for by name
    that has neither is refused.
    """
    recipes = recipes or {}
    model = source_config["train"]["model"]
    names = methods or [m for m, cls in CONFIGS.items() if m in recipes or cls.preset_for_model(model)]
    entries = []
    for name in names:
        cls = config_class(name)
        base = cls().updated({"train": {k: source_config["train"][k] for k in ("model", "seed")}}, "source run")
        for path in recipes.get(name, []):
            sections = load_toml(path, cls.section_names())
            entries.append(
                Entry(f"{name}-{Path(path).stem}", validate(base.updated(sections, f"config file {path}")), path)
            )
        preset = cls.preset_for_model(model)
        if name not in recipes and preset is None:
            raise ConfigError(f"{name} has no preset for model {model!r}: give a recipe with --recipe {name}=FILE.toml")
        if name not in recipes:
            entries.append(
                Entry(name, validate(base.updated(cls.preset_sections(preset), f"{name} preset")), f"preset {preset}")
            )
    if not entries:
        raise ConfigError(f"no method has a preset for model {model!r}; give recipes with --recipe METHOD=FILE.toml")
    return entries


def compare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    methods: list[str] | None = None,
    recipes: dict[str, list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every entry of :func:`plan_entries` from pretrained run ``source`` into ``out``; write the table
    (``compare.csv``, ``compare.json``, ``compare.md``) and ``pareto.png`` (test error vs file bytes).

    ``compare("runs/digits", "runs/cmp", methods=["dc", "pwfn"])`` returns ``{"rows": [...], "files": [...]}``.
    """
    out = Path(out)
    entries = plan_entries(open_source_run(source).config, methods, recipes)
    rows = []
    for entry in entries:
        run_dir = out / entry.label
        if not RunDir(run_dir).has(REPORT):  # a finished run is reused: the comparison continues
            compress(source, entry.config, run_dir, progress=progress)
        rows.append(table_row(entry, run_dir))
    return {"rows": rows, "files": _write(out, rows)}


def table_row(entry: Entry, run_dir: Path) -> dict[str, Any]:
    """The comparison's row of one finished run, from its report; the wall time is the time from the run's
    ``config.json`` (written when it started) to its ``report.json`` (written last)."""
    run = RunDir(run_dir)
    report = read_json(run.path_of(REPORT))
    totals = report["totals"]
    return {
        "label": entry.label,
        "method": entry.config.method,
        "recipe": entry.recipe,
        "test_error": report["errors"]["decoded"]["test_error"],
        "bytes": report["file"]["bytes"],
        **{f"{name}_bytes": _format_bytes(report, name) for name in ("onnx", "safetensors", "dense")},
        "cr": report["file"]["cr_all"],
        "paper_cr": report["paper_style"]["cr_all"],
        "nonzero_percent": 100.0 * totals["nnz"] / max(totals["weights"], 1),
        "unique_values": totals["unique_values"],
        "wall_s": run.path_of(REPORT).stat().st_mtime - run.path_of(CONFIG).stat().st_mtime,
        "warnings": "; ".join(w["message"] for w in report.get("warnings", [])),
    }


def _format_bytes(report: dict[str, Any], name: str) -> int | None:
    """The bytes of the same model exported as ``name`` (docs/export.md), as the report sized it; None if not."""
    return (report.get("formats") or {}).get("bytes", {}).get(name)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (what ``compare.md`` holds and the command prints)."""
    formats = {"test_error": "{:.2f}", "bytes": "{:,}", "cr": "{:.1f}", "paper_cr": "{:.1f}",
               "nonzero_percent": "{:.2f}", "wall_s": "{:.0f}"}  # fmt: skip
    formats |= {f"{name}_bytes": "{:,}" for name in ("onnx", "safetensors", "dense")}
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["—" if row[key] is None else formats.get(key, "{}").format(row[key]) for key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    warned = [f"- {row['label']}: {row['warnings']}" for row in rows if row["warnings"]]
    return "\n".join(lines + (["", "Warnings:", *warned] if warned else []))


def _write(out: Path, rows: list[dict[str, Any]]) -> list[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, "warnings"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "compare.csv", buffer.getvalue())
    write_json(out / "compare.json", {"columns": COLUMNS, "rows": rows})
    atomic_write_text(out / "compare.md", format_table(rows) + "\n")
    files = [str(out / name) for name in ("compare.csv", "compare.json", "compare.md")]
    figure = _plot(out, rows)
    return files + ([figure] if figure else [])


def _plot(out: Path, rows: list[dict[str, Any]]) -> str | None:
    """Test error vs file bytes, one marker per method, the front marked; None without matplotlib."""
    points = [(r["label"], r["method"], r["test_error"], r["cr"], r["bytes"]) for r in rows]
    return pareto_figure(points, out / "pareto.png", "test error of the decoded model (%)")
