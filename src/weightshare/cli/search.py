"""The commands over many runs: ``tune`` (Optuna studies) and ``compare`` (every method side by side)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from weightshare.core import settings as cfgmod

if TYPE_CHECKING:
    pass

from weightshare.cli.common import RAW_HELP, command
from weightshare.cli.settings import (
    resolve_method_config,
)

# --- tune / compare ----------------------------------------------------------------------------


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from weightshare.methods import CONFIGS
    from weightshare.search.config import TuneConfig

    p = sub.add_parser(
        "tune",
        help="search a method's settings with Optuna: validation error and file bytes of many trials",
        description="Search a method's settings from a pretrained run: weightshare tune METHOD --from RUN "
        "--study-dir DIR. Every trial is a compression run under DIR/trials; the result is DIR/pareto.csv, "
        "pareto.json, pareto.png and one recipe per Pareto trial (DIR/pareto/*.toml, for compress --config). "
        "Running the command again continues the study.",
        formatter_class=RAW_HELP,
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods")
    for name, cls in CONFIGS.items():
        m = methods.add_parser(name, help=cls.description, description=f"Tune {cls.description}.")
        m.add_argument("--from", dest="source", required=True, help="pretrained run directory")
        m.add_argument("--study-dir", required=True, help="directory of the study (created, or continued)")
        m.add_argument("--preset", choices=sorted(cls.presets), help="recipe every trial starts from")
        m.add_argument("--config", help="TOML file: the base recipe's tables and a [tune] table")
        m.add_argument("--quiet", action="store_true", help="no progress bar")
        cfgmod.add_arguments(m, TuneConfig)
        cfgmod.add_recipe_arguments(m, cls, cls.method, skip=("model",))


def _tune_settings(args: argparse.Namespace, sections: list[str]) -> Any:
    """defaults < the ``[tune]`` table of ``--config`` < flags, validated."""
    from weightshare.search.config import TuneConfig

    settings = TuneConfig()
    if args.config:
        table = cfgmod.load_toml(args.config, [*sections, "tune"]).get("tune", {})
        settings = cfgmod.apply_overrides(settings, table, f"config file {args.config}")
    return cfgmod.validate(cfgmod.apply_overrides(settings, cfgmod.overrides_from_args(args, TuneConfig), "flags"))


@command("tune")
def _tune(args: argparse.Namespace) -> int:
    from weightshare.methods import config_class
    from weightshare.pipeline.pretrain import open_source_run
    from weightshare.search.study import tune

    cls = config_class(args.method)
    config = resolve_method_config(cls, args, open_source_run(args.source).config, also=("tune",))
    result = tune(args.source, config, args.study_dir, _tune_settings(args, cls.section_names()),
                  progress=not args.quiet)  # fmt: skip
    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items())
    print(f"study {result['study']} in {args.study_dir}: {counts}; Pareto front (validation error, bytes):")
    for row in result["pareto"]:
        print(f"  trial {row['trial']}: {row['val_error']:.2f}% val ({row['test_error']:.2f}% test), "
              f"{row['bytes']:,} B, {row['cr']:.1f}x -> {row['recipe']}")  # fmt: skip
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="every method from one pretrained run: one table and one error-vs-bytes plot",
        description="Run every method (its preset named after the model, or a recipe file) from one pretrained "
        "run into OUT/METHOD, then write OUT/compare.csv, compare.json, compare.md and pareto.png. Runs already "
        "finished in OUT are reused.",
    )
    p.add_argument("--from", dest="source", required=True, help="pretrained run directory")
    p.add_argument("--out", required=True, help="directory for the runs and the table")
    p.add_argument("--methods", help="comma-separated methods (default: every method with a recipe for the model)")
    p.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="METHOD=FILE.toml",
        help="a recipe file for a method instead of its preset, e.g. one written by weightshare tune (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    from weightshare.search.compare import compare, format_table, parse_recipes

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    result = compare(args.source, args.out, methods=methods, recipes=parse_recipes(args.recipe),
                     progress=not args.quiet)  # fmt: skip
    print(format_table(result["rows"]))
    print(f"wrote {', '.join(result['files'])}")
    return 0
