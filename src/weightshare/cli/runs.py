"""The commands that train: ``pretrain``, ``compress``, ``demo``, ``sensitivity``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from weightshare.core import settings as cfgmod
from weightshare.core.errors import ConfigError
from weightshare.data.config import DataConfig
from weightshare.finish.config import FinishConfig
from weightshare.train.config import TrainConfig
from weightshare.train.distributed import is_main_process
from weightshare.train.presets import PRETRAIN_PRESETS, get_preset

if TYPE_CHECKING:
    from weightshare.methods.base import MethodConfig

from weightshare.cli.common import RAW_HELP, RESUME_NOTE, command, command_name, exit_codes
from weightshare.cli.settings import (
    flag_settings,
    given_layers,
    refuse_changes,
    resolve_method_config,
    resolve_settings,
)

# --- pretrain -----------------------------------------------------------------------------


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a model from scratch into a run directory",
        epilog=f"{RESUME_NOTE}\n\n{exit_codes()}",
        formatter_class=RAW_HELP,
    )
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--preset", choices=sorted(PRETRAIN_PRESETS), help="named recipe (its values are defaults)")
    p.add_argument("--config", help="TOML file with [data] and [train] tables")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (its stored settings; see below)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_arguments(p, DataConfig)
    cfgmod.add_arguments(p, TrainConfig)


@command("pretrain")
def _pretrain(args: argparse.Namespace) -> int:
    from weightshare.pipeline.pretrain import pretrain

    if args.resume:
        data_cfg, train_cfg = _resumed_pretrain(args)
    else:
        name = args.preset or _infer_preset(args)
        preset = get_preset(PRETRAIN_PRESETS, name, "pretrain")
        data_cfg, train_cfg = resolve_settings([DataConfig, TrainConfig], args, preset, preset_name=name)
    final = pretrain(data_cfg, train_cfg, args.out, resume=args.resume, progress=not args.quiet)
    if not is_main_process():  # another rank of a torchrun launch: rank 0 reports
        return 0
    print(
        f"pretrained {train_cfg.model} on {data_cfg.dataset}: val error {final['val_error']:.2f}%, "
        f"test error {final['test_error']:.2f}% -> {args.out}"
    )
    return 0


def _resumed_pretrain(args: argparse.Namespace) -> tuple[DataConfig, TrainConfig]:
    """The settings the run in ``--out`` was started with; a setting given with another value is refused."""
    from weightshare.pipeline.pretrain import open_pretrain_run

    stored = open_pretrain_run(args.out).config
    classes = {"data": DataConfig, "train": TrainConfig}
    configs = {name: cls(**stored[name]) for name, cls in classes.items()}

    def resolve(given: cfgmod.Sections) -> cfgmod.Sections:
        return {n: cfgmod.to_dict(cfgmod.validate(cfgmod.apply_overrides(c, given.get(n, {}), "--resume")))
                for n, c in configs.items()}  # fmt: skip

    preset = (f"preset {args.preset!r}", get_preset(PRETRAIN_PRESETS, args.preset, "pretrain"))  # only one named
    layers = given_layers(args, list(classes), preset if args.preset else None, flag_settings(args, classes.values()))
    refuse_changes(layers, resolve)
    if args.data_dir:
        configs["data"].data_dir = args.data_dir
    return configs["data"], configs["train"]


def _infer_preset(args: argparse.Namespace) -> str | None:
    """``--model lenet5`` alone picks the lenet5 recipe (flags still win)."""
    return args.model if args.model in PRETRAIN_PRESETS else None


# --- compress ------------------------------------------------------------------------------


def _add_compress(sub: argparse._SubParsersAction) -> None:
    from weightshare.methods import CONFIGS

    p = sub.add_parser(
        "compress",
        help="retrain a pretrained run with a method, write model.wsz and report.json",
        description="Retrain a pretrained run with a method: weightshare compress METHOD --from RUN --out DIR. "
        "'weightshare compress METHOD --help' lists every setting of that method.",
        epilog=exit_codes(),
        formatter_class=RAW_HELP,
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods")
    for name, cls in CONFIGS.items():
        m = methods.add_parser(
            name,
            help=cls.description,
            description=f"Compress with {cls.description}.",
            epilog=f"{RESUME_NOTE}\n\n{exit_codes()}",
            formatter_class=RAW_HELP,
        )
        _add_compress_options(m, cls)


def _add_compress_options(p: argparse.ArgumentParser, cls: type) -> None:
    """The options of ``weightshare compress METHOD``: the run, then the method's settings and the sections'."""
    p.add_argument(
        "--from", dest="source", help="pretrained run directory (with --resume: by default the one the run records)"
    )
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument(
        "--preset",
        choices=sorted(cls.presets),
        help="named recipe (its values are defaults; default: the one named after the source run's model)",
    )
    p.add_argument("--config", help=f"TOML file with tables {', '.join(f'[{s}]' for s in cls.section_names())}")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (its stored settings; see below)"
    )
    p.add_argument("--make-gif", action="store_true", help="record weights each epoch for the scatter animation")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_recipe_arguments(p, cls, cls.method, skip=("model",))  # the model is the source run's


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from weightshare.methods import config_class
    from weightshare.pipeline.compress import compress
    from weightshare.pipeline.pretrain import open_source_run

    cls = config_class(args.method)
    if args.resume:
        config, source = _resumed_run(cls, args)
    elif args.source is None:
        raise ConfigError("--from is required: the pretrained run directory to compress (only --resume may omit it)")
    else:
        config = resolve_method_config(cls, args, open_source_run(args.source).config)
        source = args.source
    report = compress(
        source, config, args.out, resume=args.resume, progress=not args.quiet, record_frames=args.make_gif
    )
    if not is_main_process():
        return 0
    if (code := _print_outcome(args, report)) == 0 and args.make_gif:
        from weightshare.plots.run import make_gif

        print(f"animation: {make_gif(args.out)}")
    return code


def _print_outcome(args: argparse.Namespace, report: dict) -> int:
    """A compression run's summary and warnings; the exit code (3: the result collapsed)."""
    from weightshare.pipeline.compress import collapsed
    from weightshare.report.run_report import format_summary

    print(format_summary(report))
    for warning in report["warnings"]:
        print(f"{command_name(args)}: warning: {warning['message']}", file=sys.stderr)
    if collapsed(report):  # the files stay, to be inspected; the exit code says the run failed
        print(
            f"{command_name(args)}: error: no usable compression; {args.out} keeps its files for inspection",
            file=sys.stderr,
        )
        return 3
    return 0


def _resumed_run(cls: type[MethodConfig], args: argparse.Namespace) -> tuple[MethodConfig, str]:
    """The recipe the run in ``--out`` was started with (a setting given with another value is refused) and its
    pretrained run: ``--from``, or the one ``config.json`` records."""
    from weightshare.pipeline.compress import open_compress_run, recorded_source, stored_config

    run = open_compress_run(args.out, cls.method)
    config = stored_config(run.config)
    preset = (f"{cls.method} preset {args.preset!r}", cls.preset_sections(args.preset)) if args.preset else None
    layers = given_layers(args, cls.section_names(), preset, cfgmod.sections_from_args(args, cls, cls.method))
    refuse_changes(layers, lambda given: cfgmod.validate(config.updated(given)).sections())
    if args.data_dir:
        config.data.data_dir = args.data_dir
    return config, args.source or recorded_source(run)


# --- refinish ---------------------------------------------------------------------------------


def _add_refinish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refinish",
        help="the [finish] stages again, with other settings, on a compression run's retrained network",
        description="Copy the retraining of compression run --from into a new run --out and run the [finish] "
        "stages there with the settings given: minutes instead of a retraining. A [finish] setting not given keeps "
        "the value --from ran with (the defaults quoted below are those of a new compress run).",
        epilog=exit_codes(),
        formatter_class=RAW_HELP,
    )
    p.add_argument("--from", dest="source", required=True, help="compression run whose retraining has finished")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--config", help="TOML file with a [finish] table")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_arguments(p, FinishConfig, section="finish")


@command("refinish")
def _refinish(args: argparse.Namespace) -> int:
    from weightshare.pipeline.compress import open_compress_run, refinish, stored_config

    ran = dataclasses.asdict(stored_config(open_compress_run(args.source).config).finish)
    (finish,) = resolve_settings([FinishConfig], args, {}, base={"finish": ran})
    return _print_outcome(args, refinish(args.source, finish, args.out, progress=not args.quiet))


# --- demo -------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the built-in digits data (about a minute)")
    p.add_argument("--out", default="runs/demo", help="directory for the demo's runs (default runs/demo)")
    p.add_argument("--quiet", action="store_true")


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from weightshare.pipeline.demo import run_demo

    run_demo(args.out, progress=not args.quiet)
    return 0


# --- sensitivity ------------------------------------------------------------------------------


def _add_sensitivity(sub: argparse._SubParsersAction) -> None:
    from weightshare.pipeline.sensitivity import DEFAULT_FRACTIONS

    p = sub.add_parser(
        "sensitivity",
        help="prune each layer alone at several fractions (no retraining); "
        "writes sensitivity.csv/.json and figures/sensitivity.png, derives per-layer --kept",
    )
    p.add_argument("run_dir", help="pretrained run directory (with model.safetensors)")
    p.add_argument(
        "--fractions",
        default=DEFAULT_FRACTIONS,
        help=f"comma-separated fractions of each layer to prune, in [0, 1] (default {DEFAULT_FRACTIONS})",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="allowed increase of the validation error, in percentage points (default 0.5)",
    )
    p.add_argument("--data-dir", help="data directory (default: the run's)")
    p.add_argument("--no-plot", action="store_true", help="skip figures/sensitivity.png")


@command("sensitivity")
def _sensitivity(args: argparse.Namespace) -> int:
    from weightshare.pipeline.sensitivity import run_sensitivity

    result = run_sensitivity(
        args.run_dir, fractions=args.fractions, max_drop=args.max_drop, data_dir=args.data_dir, plot=not args.no_plot
    )
    print(f"baseline validation error {result['baseline_val_error']:.2f}%; allowed increase {args.max_drop:g} points")
    for layer, s in result["layers"].items():
        print(f"  {layer}: prune {100 * s['pruned_fraction']:.0f}% (|w| < {s['threshold']:.4g}, s = {s['quality']:g})")
    print(f"--kept {result['kept']}   (or --prune-by std --quality {result['quality']})")
    print(f"wrote sensitivity.csv and sensitivity.json in {args.run_dir}; figure: {result.get('figure', 'skipped')}")
    return 0
