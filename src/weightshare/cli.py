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

from . import config as cfgmod
from .config import ConfigError, DataConfig, TrainConfig
from .presets import PRETRAIN_PRESETS, get_preset

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
    from .pipeline import pretrain

    preset_name = args.preset or _infer_preset(args)
    data_cfg, train_cfg = resolve_settings([DataConfig, TrainConfig], args, get_preset(PRETRAIN_PRESETS,
                                                                                          preset_name, "pretrain"))
    if args.resume:
        from .rundir import RunDir

        stored = RunDir.open(args.out).config
        data_cfg, train_cfg = DataConfig(**stored["data"]), TrainConfig(**stored["train"])
    final = pretrain(data_cfg, train_cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(f"pretrained {train_cfg.model} on {data_cfg.dataset}: val error {final['val_error']:.2f}%, "
          f"test error {final['test_error']:.2f}% -> {args.out}")
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
    from .evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, model=args.model, dataset=args.dataset, data_dir=args.data_dir,
                                 normalize=args.normalize)
    print(f"{args.checkpoint}: test error {result['test_error']:.2f}% (val error {result['val_error']:.2f}%)")
    return 0


# --- compress ------------------------------------------------------------------------------


def _add_compress(sub: argparse._SubParsersAction) -> None:
    from .methods import METHODS

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
    cfgmod.add_arguments(p, TrainConfig, skip=("model",))
    seen: set[str] = set()
    for spec in METHODS.values():
        cfgmod.add_arguments(p, spec.config_class, skip=seen)
        seen |= {f.name for f in dataclasses.fields(spec.config_class)}


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from .compress import compress
    from .methods import get_method
    from .report import format_summary
    from .rundir import RunDir

    spec = get_method(args.method)
    source = RunDir.open(args.source).config
    preset = get_preset(spec.presets, args.preset or _infer_method_preset(spec, source), f"{args.method}")
    base = {"train": {"model": source["train"]["model"], "seed": source["train"]["seed"]}}
    if args.resume:
        stored = RunDir.open(args.out).config
        train_cfg, method_cfg = TrainConfig(**stored["train"]), spec.config_class(**stored[spec.name])
    else:
        train_cfg, method_cfg = resolve_settings([TrainConfig, spec.config_class], args, preset, base)
    data_cfg = DataConfig(**source["data"])
    if args.data_dir:
        data_cfg.data_dir = args.data_dir
    report = compress(args.method, args.source, args.out, train_cfg=train_cfg, method_cfg=method_cfg,
                      data_cfg=data_cfg, resume=args.resume, progress=not args.quiet, record_frames=args.make_gif)
    print(format_summary(report))
    if args.make_gif:
        from .plots import make_gif

        print(f"animation: {make_gif(args.out)}")
    return 0


def _infer_method_preset(spec, source: dict) -> str | None:
    """The preset named after the source run's model, if there is one (``lenet300`` -> ``lenet300``)."""
    model = source.get("train", {}).get("model")
    name = {"mlp": "digits"}.get(model, model)
    return name if name in spec.presets else None


# --- demo -------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the built-in digits data (about a minute)")
    p.add_argument("--out", default="runs/demo", help="directory for the demo's runs (default runs/demo)")
    p.add_argument("--quiet", action="store_true")


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, progress=not args.quiet)
    return 0


# --- entry point --------------------------------------------------------------------------------

PARSER_BUILDERS = [_add_pretrain, _add_compress, _add_evaluate, _add_demo]


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
        from .errors import USER_ERRORS

        if isinstance(exc, USER_ERRORS):
            print(f"weightshare {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
