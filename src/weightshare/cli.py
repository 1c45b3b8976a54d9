"""The ``weightshare`` command.

Every subcommand takes its settings from (lowest to highest priority) the
dataclass defaults, a named ``--preset``, a TOML ``--config`` file and flags.
Each setting's flag is its field name with dashes (``lr_w`` -> ``--lr-w``).
``weightshare compress METHOD`` has one subcommand per method, listing only
that method's settings and the ``[train]``, ``[data]`` and ``[finish]`` ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from weightshare.core import settings as cfgmod
from weightshare.core.errors import ConfigError
from weightshare.data.config import DataConfig
from weightshare.train.config import TrainConfig
from weightshare.train.presets import PRETRAIN_PRESETS, get_preset

if TYPE_CHECKING:
    from weightshare.methods.base import MethodConfig

__all__ = ["main", "build_parser", "resolve_method_config", "resolve_settings"]

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
    from weightshare.methods import CONFIGS

    p = sub.add_parser(
        "compress",
        help="retrain a pretrained run with a method, write model.wsz and report.json",
        description="Retrain a pretrained run with a method: weightshare compress METHOD --from RUN --out DIR. "
        "'weightshare compress METHOD --help' lists every setting of that method.",
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods")
    for name, cls in CONFIGS.items():
        m = methods.add_parser(name, help=cls.description, description=f"Compress with {cls.description}.")
        _add_compress_options(m, cls)


def _add_compress_options(p: argparse.ArgumentParser, cls: type) -> None:
    """The options of ``weightshare compress METHOD``: the run, then the method's settings and the sections'."""
    p.add_argument("--from", dest="source", required=True, help="pretrained run directory")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument(
        "--preset",
        choices=sorted(cls.presets),
        help="named recipe (its values are defaults; default: the one named after the source run's model)",
    )
    p.add_argument("--config", help=f"TOML file with tables {', '.join(f'[{s}]' for s in cls.section_names())}")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (its stored settings)")
    p.add_argument("--make-gif", action="store_true", help="record weights each epoch for the scatter animation")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_recipe_arguments(p, cls, cls.method, skip=("model",))  # the model is the source run's


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from weightshare.methods import config_class
    from weightshare.pipeline.compress import compress, stored_config
    from weightshare.report.run_report import format_summary
    from weightshare.runs.rundir import RunDir

    cls = config_class(args.method)
    if args.resume:
        config = stored_config(RunDir.open(args.out).config)
        if args.data_dir:  # where the data lives may change between machines; nothing else does
            config.data.data_dir = args.data_dir
    else:
        config = resolve_method_config(cls, args, RunDir.open(args.source).config)
    report = compress(
        args.source, config, args.out, resume=args.resume, progress=not args.quiet, record_frames=args.make_gif
    )
    print(format_summary(report))
    if args.make_gif:
        from weightshare.plots.run import make_gif

        print(f"animation: {make_gif(args.out)}")
    return 0


def resolve_method_config(cls: type[MethodConfig], args: argparse.Namespace, source: dict[str, Any]) -> MethodConfig:
    """defaults < the source run's model and seed < preset < config file < flags, validated.

    Without ``--preset`` the preset named after the source run's model applies, if the method has one.
    """
    preset = args.preset or _infer_method_preset(cls, source)
    layers: list[tuple[str, cfgmod.Sections]] = [
        ("source run", {"train": {k: source["train"][k] for k in ("model", "seed")}}),
        (f"{cls.method} preset {preset!r}", cls.preset_sections(preset) if preset else {}),
        ("flags", cfgmod.sections_from_args(args, cls, cls.method)),
    ]
    if args.config:
        layers.insert(2, (f"config file {args.config}", cfgmod.load_toml(args.config, cls.section_names())))
    config = cls()
    for origin, sections in layers:
        config = config.updated(sections, origin)
    return cfgmod.validate(config)


def _infer_method_preset(cls: type[MethodConfig], source: dict) -> str | None:
    """The preset named after the source run's model, if there is one (``lenet300`` -> ``lenet300``)."""
    model = source.get("train", {}).get("model")
    name = {"mlp": "digits"}.get(model, model)
    return name if name in cls.presets else None


def _method_alias(argv: list[str]) -> list[str]:
    """``compress --method sws ...`` (the former spelling) -> ``compress sws ...``.

    >>> _method_alias(["compress", "--from", "r", "--method", "dc", "--out", "o"])
    ['compress', 'dc', '--from', 'r', '--out', 'o']
    """
    if argv[:1] != ["compress"]:
        return argv
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--method" and i + 1 < len(argv):
            return ["compress", argv[i + 1], *argv[1:i], *argv[i + 2 :]]
        if arg.startswith("--method="):
            return ["compress", arg.removeprefix("--method="), *argv[1:i], *argv[i + 1 :]]
    return argv


def _foreign_setting(argv: list[str]) -> str | None:
    """The one-line refusal of a flag that is another method's setting (``compress dc --tau 0.1``), if any.

    >>> _foreign_setting(["compress", "dc", "--from", "r", "--tau=0.1"])
    '--tau is a setting of sws, not of dc'
    """
    from weightshare.methods import CONFIGS

    if argv[:1] != ["compress"] or len(argv) < 2 or argv[1] not in CONFIGS:
        return None
    method, flags = argv[1], {name: cfgmod.setting_flags(cls) for name, cls in CONFIGS.items()}
    for arg in argv[2:]:
        flag = arg.split("=", 1)[0]
        owners = [name for name, own in flags.items() if flag in own]
        if flag.startswith("--") and owners and method not in owners:
            return f"{flag} is a setting of {' and '.join(owners)}, not of {method}"
    return None


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
    argv = _method_alias(list(sys.argv[1:] if argv is None else argv))
    foreign = _foreign_setting(argv)
    if foreign:  # argparse would print its usage too: one line says it
        print(f"weightshare compress {argv[1]}: error: {foreign}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    prog = " ".join(["weightshare", args.command, *([args.method] if args.command == "compress" else [])])
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, KeyError) as exc:
        print(f"{prog}: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from weightshare.core.errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
