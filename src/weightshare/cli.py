"""The ``weightshare`` command.

Every subcommand takes its settings from (lowest to highest priority) the
dataclass defaults, a named ``--preset``, a TOML ``--config`` file and flags.
Each setting's flag is its field name with dashes (``lr_w`` -> ``--lr-w``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from weightshare.core import settings as cfgmod
from weightshare.core.errors import ConfigError
from weightshare.data.config import DataConfig
from weightshare.train.config import TrainConfig
from weightshare.train.presets import PRETRAIN_PRESETS, get_preset

__all__ = ["main", "build_parser", "resolve_settings"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return register


def resolve_settings(
    classes: Sequence[type], args: argparse.Namespace, preset: dict[str, dict[str, Any]], base: dict | None = None
) -> list[Any]:
    """defaults < ``base`` (e.g. a source run's settings) < preset < config file < flags, validated."""
    sections = {cfgmod.section_name(c): c for c in classes}
    from_file = cfgmod.load_toml(args.config, sections) if getattr(args, "config", None) else {}
    resolved = []
    for name, cls in sections.items():
        obj = cls()
        for source, values in (
            ("source run", (base or {}).get(name, {})),
            (f"preset {getattr(args, 'preset', '')!r}", preset.get(name, {})),
            (f"config file {getattr(args, 'config', '')}", from_file.get(name, {})),
            ("flags", cfgmod.overrides_from_args(args, cls)),
        ):
            obj = cfgmod.apply_overrides(obj, values, source)
        resolved.append(cfgmod.validate(obj))
    return resolved


# --- pretrain -----------------------------------------------------------------------------


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train a model from scratch into a run directory")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--preset", choices=sorted(PRETRAIN_PRESETS), help="named recipe (its values are defaults)")
    p.add_argument("--config", help="TOML file with [data] and [train] tables")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_arguments(p, DataConfig)
    cfgmod.add_arguments(p, TrainConfig)


@command("pretrain")
def _pretrain(args: argparse.Namespace) -> int:
    from weightshare.pipeline.pretrain import pretrain

    preset_name = args.preset or _infer_preset(args)
    data_cfg, train_cfg = resolve_settings(
        [DataConfig, TrainConfig], args, get_preset(PRETRAIN_PRESETS, preset_name, "pretrain")
    )
    if args.resume:
        from weightshare.runs.rundir import RunDir

        stored = RunDir.open(args.out).config
        data_cfg, train_cfg = DataConfig(**stored["data"]), TrainConfig(**stored["train"])
    final = pretrain(data_cfg, train_cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(
        f"pretrained {train_cfg.model} on {data_cfg.dataset}: val error {final['val_error']:.2f}%, "
        f"test error {final['test_error']:.2f}% -> {args.out}"
    )
    return 0


def _infer_preset(args: argparse.Namespace) -> str | None:
    """``--model lenet5`` alone picks the lenet5 recipe (flags still win)."""
    return args.model if args.model in PRETRAIN_PRESETS else None


# --- evaluate -------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test error of a run directory, a weights file or a .wsz file")
    p.add_argument("checkpoint", help="run directory, .safetensors weights, or .wsz compressed file")
    p.add_argument("--model", help="architecture (needed for a weights or .wsz file outside a run directory)")
    p.add_argument("--dataset", help="data set (needed for a weights or .wsz file outside a run directory)")
    p.add_argument("--data-dir", help="data directory")
    p.add_argument("--normalize", choices=("pixels", "standard"), help="input scaling (default: the run's)")


@command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from weightshare.pipeline.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, model=args.model, dataset=args.dataset, data_dir=args.data_dir, normalize=args.normalize
    )
    print(f"{args.checkpoint}: test error {result['test_error']:.2f}% (val error {result['val_error']:.2f}%)")
    return 0


# --- compress ------------------------------------------------------------------------------


def _add_compress(sub: argparse._SubParsersAction) -> None:
    from weightshare.methods import METHODS

    p = sub.add_parser("compress", help="retrain a pretrained run with a method, write model.wsz and report.json")
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="compression method")
    p.add_argument("--from", dest="source", required=True, help="pretrained run directory")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--preset", help="named recipe of the method (its values are defaults)")
    p.add_argument("--config", help="TOML file with [train] and a table named after the method, e.g. [sws]")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--make-gif", action="store_true", help="record weights each epoch for the scatter animation")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--data-dir", help="data directory (default: the source run's)")
    p.add_argument(
        "--val-size",
        type=int,
        help="validation images carved from the training set (default: the source run's; 0 retrains on all "
        "60k MNIST images, the papers' protocol)",
    )
    cfgmod.add_arguments(p, TrainConfig, skip=("model",))
    seen: set[str] = set()
    for spec in METHODS.values():
        cfgmod.add_arguments(p, spec.config_class, skip=seen)
        seen |= {f.name for f in dataclasses.fields(spec.config_class)}


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from weightshare.methods import get_method
    from weightshare.pipeline.compress import compress
    from weightshare.report.run_report import format_summary
    from weightshare.runs.rundir import RunDir

    spec = get_method(args.method)
    source = RunDir.open(args.source).config
    preset = get_preset(spec.presets, args.preset or _infer_method_preset(spec, source), f"{args.method}")
    base = {"train": {"model": source["train"]["model"], "seed": source["train"]["seed"]}}
    data_cfg = DataConfig(**source["data"])
    if args.resume:
        stored = RunDir.open(args.out).config
        train_cfg, method_cfg = TrainConfig(**stored["train"]), spec.config_class(**stored[spec.name])
        data_cfg = DataConfig(**stored["data"])  # e.g. a --val-size given when the run started
    else:
        train_cfg, method_cfg = resolve_settings([TrainConfig, spec.config_class], args, preset, base)
    if args.data_dir:
        data_cfg.data_dir = args.data_dir
    if args.val_size is not None:
        data_cfg.val_size = args.val_size
    report = compress(
        args.method,
        args.source,
        args.out,
        train_cfg=train_cfg,
        method_cfg=method_cfg,
        data_cfg=data_cfg,
        resume=args.resume,
        progress=not args.quiet,
        record_frames=args.make_gif,
    )
    print(format_summary(report))
    if args.make_gif:
        from weightshare.plots.run import make_gif

        print(f"animation: {make_gif(args.out)}")
    return 0


def _infer_method_preset(spec, source: dict) -> str | None:
    """The preset named after the source run's model, if there is one (``lenet300`` -> ``lenet300``)."""
    model = source.get("train", {}).get("model")
    name = {"mlp": "digits"}.get(model, model)
    return name if name in spec.presets else None


# --- encode / decode / inspect ----------------------------------------------------------------


def _add_codec(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="write model.wsz from a compression run or a quantized checkpoint")
    p.add_argument("source", help="run directory (uses its quantized.safetensors) or a quantized checkpoint")
    p.add_argument("--out", help="output file (default: model.wsz next to the source)")
    p.add_argument("--float16", action="store_true", help="store codebooks and dense tensors as float16")
    p = sub.add_parser("decode", help="decode a .wsz file into a safetensors state dict")
    p.add_argument("file", help=".wsz file")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p = sub.add_parser("inspect", help="per-tensor table of a .wsz file: layout, bytes, bits per weight, entropy")
    p.add_argument("file", help=".wsz file")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


@command("encode")
def _encode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightshare.codec import save_compressed
    from weightshare.core.quantized import load_quantized

    source = Path(args.source)
    checkpoint = source / "quantized.safetensors" if source.is_dir() else source
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"{checkpoint} does not exist: pass a compression run directory or a "
            "quantized checkpoint (.safetensors written by a compression run)"
        )
    out = Path(args.out) if args.out else checkpoint.parent / "model.wsz"
    qmodel = load_quantized(checkpoint)
    nbytes = save_compressed(qmodel, out, float16=args.float16)
    params = qmodel.num_quantized + qmodel.num_dense
    print(f"{out}: {nbytes:,} bytes, {4 * params / nbytes:.1f}x smaller than float32 ({params:,} parameters)")
    return 0


@command("decode")
def _decode(args: argparse.Namespace) -> int:
    from weightshare.codec import load_compressed
    from weightshare.core.io import save_tensors

    state = load_compressed(args.file).to_state_dict()
    save_tensors(args.out, state)
    print(f"{args.out}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} parameters (float32)")
    return 0


@command("inspect")
def _inspect(args: argparse.Namespace) -> int:
    import json

    from weightshare.codec.inspect import format_inspect, inspect

    report = inspect(args.file)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_inspect(report))
    return 0


# --- plot ------------------------------------------------------------------------------------------


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="figures of a run directory (or a Pareto plot of many)")
    p.add_argument("run_dirs", nargs="+", help="run directory (several with --kind pareto)")
    p.add_argument("--kind", action="append", help="figure kind (repeatable; default: all that apply)")
    p.add_argument("--pdf", action="store_true", help="also write PDF")
    p.add_argument("--sample", type=int, default=20000, help="weights sampled for the scatter (default 20000)")
    p.add_argument("--gif", action="store_true", help="animate the scatter over the retraining epochs")
    p.add_argument("--out", help="pareto: output file (default: pareto.png in the current directory)")


@command("plot")
def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from weightshare.plots.run import make_gif, plot_pareto, plot_run

    if args.kind and "pareto" in args.kind:
        print(f"wrote {plot_pareto(args.run_dirs, Path(args.out or 'pareto.png'))}")
        return 0
    for run_dir in args.run_dirs:
        if args.gif:
            print(f"wrote {make_gif(run_dir)}")
        for path in plot_run(run_dir, args.kind, pdf=args.pdf, sample=args.sample):
            print(f"wrote {path}")
    return 0


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


# --- entry point --------------------------------------------------------------------------------

PARSER_BUILDERS = [_add_pretrain, _add_compress, _add_codec, _add_evaluate, _add_plot, _add_demo, _add_sensitivity]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightshare", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, KeyError) as exc:
        print(f"weightshare {args.command}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from weightshare.core.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"weightshare {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
