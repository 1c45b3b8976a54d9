"""The ``weightshare`` command.

Every subcommand takes its settings from (lowest to highest priority) the
dataclass defaults, a named ``--preset``, a TOML ``--config`` file and flags.
Each setting's flag is its field name with dashes (``lr_w`` -> ``--lr-w``).
``weightshare compress METHOD`` has one subcommand per method, listing only
that method's settings and the ``[train]``, ``[data]`` and ``[finish]`` ones.

``--resume`` continues a run with the settings it was started with; a setting given
again must have the value it was started with (only ``--data-dir`` may change).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from weightshare.core import settings as cfgmod
from weightshare.core.errors import USAGE_ERRORS, USER_ERRORS, ConfigError, RunInterrupted
from weightshare.data.config import DataConfig
from weightshare.models.architectures import MODELS
from weightshare.train.config import TrainConfig
from weightshare.train.distributed import is_main_process
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


RESUME_NOTE = """--resume continues the run in --out with the settings it was started with (a run stopped
before its first epoch ended starts from epoch 0); a setting given again must have its stored
value, only --data-dir may change."""


def exit_codes() -> str:
    """The exit codes, for the help's epilog."""
    from weightshare.pipeline.compress import CHANCE_MARGIN, GAP_FACTOR, GAP_POINTS

    return f"""exit codes:
  0    done; compress warns, saying what usually helps, when the decoded test error is more than
       {GAP_FACTOR:g}x and more than {GAP_POINTS:g} points above the retrained one
  1    a file, run directory or data set could not be used, or training diverged
  2    a mistake in the command: a setting, a flag, a run or file of the wrong kind
  3    compress: the result collapsed (every covered weight is zero, or the decoded test error is
       within {CHANCE_MARGIN:g} points of chance); the run directory and report.json, which records
       the warning, are written all the same
  130  interrupted (Ctrl-C); the line printed is the command that continues the run"""


_RAW = argparse.RawDescriptionHelpFormatter


def resolve_settings(
    classes: Sequence[type],
    args: argparse.Namespace,
    preset: dict[str, dict[str, Any]],
    base: dict | None = None,
    preset_name: str | None = None,
) -> list[Any]:
    """defaults < ``base`` (e.g. a source run's settings) < preset < config file < flags, validated."""
    sections = {cfgmod.section_name(c): c for c in classes}
    named = (f"preset {preset_name or getattr(args, 'preset', None)!r}", preset)
    given = _given(args, list(sections), named, _flags(args, sections.values()))
    layers = [("source run", base or {}), *given]
    resolved = []
    for name, cls in sections.items():
        obj = cls()
        for source, values in layers:
            obj = cfgmod.apply_overrides(obj, values.get(name, {}), source)
        resolved.append(cfgmod.validate(obj))
    return resolved


def _flags(args: argparse.Namespace, classes: Iterable[type]) -> cfgmod.Sections:
    """The settings of ``classes`` the user gave as flags, by section."""
    return {cfgmod.section_name(cls): cfgmod.overrides_from_args(args, cls) for cls in classes}


def _given(
    args: argparse.Namespace,
    sections: list[str],
    preset: tuple[str, cfgmod.Sections] | None,
    flags: cfgmod.Sections,
    also: Sequence[str] = (),
) -> list[tuple[str, cfgmod.Sections]]:
    """The settings the command gives, lowest priority first: a ``(name, settings)`` preset, the ``--config``
    file, the flags. The file may also hold the sections ``also`` (another part of the command reads them)."""
    layers: list[tuple[str, cfgmod.Sections]] = [preset] if preset else []
    if getattr(args, "config", None):
        loaded = cfgmod.load_toml(args.config, [*sections, *also])
        layers.append((f"config file {args.config}", {k: v for k, v in loaded.items() if k not in also}))
    return [*layers, ("flags", flags)]


# --- --resume: the settings a run was started with -----------------------------------------------

MAY_CHANGE_ON_RESUME = {("data", "data_dir")}
"""Where the data lives may change between machines; nothing that changes the result may."""


def refuse_changes(
    layers: list[tuple[str, cfgmod.Sections]], resolve: Callable[[cfgmod.Sections], cfgmod.Sections]
) -> None:
    """Refuse (``ConfigError``) a setting given with ``--resume`` that differs from the one the run was started with.

    ``layers`` are the given settings (:func:`_given`); ``resolve`` applies settings to the stored ones and
    returns every setting, validated (``resolve({})``: as stored). A setting given with its stored value is fine.
    """
    given: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    for source, sections in layers:  # later layers win, as when the run was started
        for name, values in sections.items():
            given.setdefault(name, {}).update(values)
            origin.update({(name, key): source for key in values})
    stored, resolved = resolve({}), resolve(given)
    for (name, key), source in origin.items():
        before, after = stored[name][key], resolved[name][key]
        if (name, key) not in MAY_CHANGE_ON_RESUME and after != before:
            shown = _flag_text(key, after) if source == "flags" else f"{key} = {_show(after)} ({source})"
            raise ConfigError(
                f"--resume with {shown}: the run was started with {key} = {_show(before)}; start a new run to change it"
            )


def _show(value: Any) -> str:
    """A setting's value as the user would type it: ``0.03``, ``5``, ``true``, ``0.5,0.6``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if float(f"{value:g}") == value else repr(value)
    if isinstance(value, list):
        return ",".join(_show(v) for v in value)
    return str(value)


def _flag_text(name: str, value: Any) -> str:
    """The flag that gives ``value`` to setting ``name``: ``--tau 5``, ``--no-include-biases``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {_show(value)}"


# --- pretrain -----------------------------------------------------------------------------


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a model from scratch into a run directory",
        epilog=f"{RESUME_NOTE}\n\n{exit_codes()}",
        formatter_class=_RAW,
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
    layers = _given(args, list(classes), preset if args.preset else None, _flags(args, classes.values()))
    refuse_changes(layers, resolve)
    if args.data_dir:
        configs["data"].data_dir = args.data_dir
    return configs["data"], configs["train"]


def _infer_preset(args: argparse.Namespace) -> str | None:
    """``--model lenet5`` alone picks the lenet5 recipe (flags still win)."""
    return args.model if args.model in PRETRAIN_PRESETS else None


# --- evaluate -------------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="test error of a run directory, a weights file or a .wsz file")
    p.add_argument("checkpoint", help="run directory, .safetensors weights, or .wsz compressed file")
    _add_model_options(p)


def _add_model_options(p: argparse.ArgumentParser, used_by: str = "") -> None:
    """How ``evaluate`` (and ``export --format onnx``) find the architecture and the data of a file."""
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        help=f"{used_by}architecture (default: the run directory's, else the one a .wsz file records)",
    )
    p.add_argument("--dataset", help=f"{used_by}data set (needed for a file outside a run directory)")
    p.add_argument("--data-dir", help=f"{used_by}data directory")
    p.add_argument("--normalize", choices=("pixels", "standard"), help=f"{used_by}input scaling (default: the run's)")


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
        epilog=exit_codes(),
        formatter_class=_RAW,
    )
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", title="methods")
    for name, cls in CONFIGS.items():
        m = methods.add_parser(
            name,
            help=cls.description,
            description=f"Compress with {cls.description}.",
            epilog=f"{RESUME_NOTE}\n\n{exit_codes()}",
            formatter_class=_RAW,
        )
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
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (its stored settings; see below)"
    )
    p.add_argument("--make-gif", action="store_true", help="record weights each epoch for the scatter animation")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    cfgmod.add_recipe_arguments(p, cls, cls.method, skip=("model",))  # the model is the source run's


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from weightshare.methods import config_class
    from weightshare.pipeline.compress import collapsed, compress
    from weightshare.pipeline.pretrain import open_source_run
    from weightshare.report.run_report import format_summary

    cls = config_class(args.method)
    if args.resume:
        config = _resumed_method_config(cls, args)
    else:
        config = resolve_method_config(cls, args, open_source_run(args.source).config)
    report = compress(
        args.source, config, args.out, resume=args.resume, progress=not args.quiet, record_frames=args.make_gif
    )
    if not is_main_process():
        return 0
    print(format_summary(report))
    for warning in report["warnings"]:
        print(f"{_prog(args)}: warning: {warning['message']}", file=sys.stderr)
    if collapsed(report):  # the files stay, to be inspected; the exit code says the run failed
        print(
            f"{_prog(args)}: error: no usable compression; {args.out} keeps its files for inspection", file=sys.stderr
        )
        return 3
    if args.make_gif:
        from weightshare.plots.run import make_gif

        print(f"animation: {make_gif(args.out)}")
    return 0


def _resumed_method_config(cls: type[MethodConfig], args: argparse.Namespace) -> MethodConfig:
    """The recipe the run in ``--out`` was started with; a setting given with another value is refused."""
    from weightshare.pipeline.compress import open_compress_run, stored_config

    config = stored_config(open_compress_run(args.out, cls.method).config)
    preset = (f"{cls.method} preset {args.preset!r}", cls.preset_sections(args.preset)) if args.preset else None
    layers = _given(args, cls.section_names(), preset, cfgmod.sections_from_args(args, cls, cls.method))
    refuse_changes(layers, lambda given: cfgmod.validate(config.updated(given)).sections())
    if args.data_dir:
        config.data.data_dir = args.data_dir
    return config


def resolve_method_config(
    cls: type[MethodConfig], args: argparse.Namespace, source: dict[str, Any], also: Sequence[str] = ()
) -> MethodConfig:
    """defaults < the source run's model and seed < preset < config file < flags, validated.

    Without ``--preset`` the preset named after the source run's model applies, if the method has one.
    The config file may hold the sections ``also`` too (e.g. ``[tune]``), which the recipe ignores.
    """
    name = args.preset or _infer_method_preset(cls, source)
    preset = (f"{cls.method} preset {name!r}", cls.preset_sections(name)) if name else None
    layers: list[tuple[str, cfgmod.Sections]] = [
        ("source run", {"train": {k: source["train"][k] for k in ("model", "seed")}}),
        *_given(args, cls.section_names(), preset, cfgmod.sections_from_args(args, cls, cls.method), also),
    ]
    config = cls()
    for origin, sections in layers:
        config = config.updated(sections, origin)
    return cfgmod.validate(config)


def _infer_method_preset(cls: type[MethodConfig], source: dict) -> str | None:
    """The preset named after the source run's model, if there is one (``lenet300`` -> ``lenet300``)."""
    return cls.preset_for_model(source.get("train", {}).get("model", ""))


METHOD_COMMANDS = ("compress", "tune")
"""The commands with one subcommand per method (``weightshare compress sws``)."""


def _method_alias(argv: list[str]) -> list[str]:
    """``compress --method sws ...`` (the former spelling) -> ``compress sws ...``; ``tune`` likewise.

    >>> _method_alias(["compress", "--from", "r", "--method", "dc", "--out", "o"])
    ['compress', 'dc', '--from', 'r', '--out', 'o']
    >>> _method_alias(["tune", "--method=sws", "--from", "r"])
    ['tune', 'sws', '--from', 'r']
    """
    if not argv or argv[0] not in METHOD_COMMANDS:
        return argv
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--method" and i + 1 < len(argv):
            return [argv[0], argv[i + 1], *argv[1:i], *argv[i + 2 :]]
        if arg.startswith("--method="):
            return [argv[0], arg.removeprefix("--method="), *argv[1:i], *argv[i + 1 :]]
    return argv


def _foreign_setting(argv: list[str]) -> str | None:
    """The one-line refusal of a flag that is another method's setting (``compress dc --tau 0.1``), if any.

    >>> _foreign_setting(["compress", "dc", "--from", "r", "--tau=0.1"])
    '--tau is a setting of sws, not of dc'
    """
    from weightshare.methods import CONFIGS

    if len(argv) < 2 or argv[0] not in METHOD_COMMANDS or argv[1] not in CONFIGS:
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
    from weightshare.export import export_dense

    qmodel = load_compressed(args.file)
    export_dense(qmodel, args.out)  # the same file as weightshare export --format dense
    values = qmodel.num_quantized + qmodel.num_dense
    print(f"{args.out}: {len(qmodel.quantized) + len(qmodel.dense)} tensors, {values:,} values")
    return 0


@command("inspect")
def _inspect(args: argparse.Namespace) -> int:
    import json

    from weightshare.codec import load_compressed
    from weightshare.codec.inspect import format_inspect, inspect
    from weightshare.report.run_report import FORMAT_NAMES, format_sizes

    report = inspect(args.file)
    sizes = format_sizes(load_compressed(args.file), report.file_bytes)  # ONNX needs the model: weightshare export
    if args.json:
        print(json.dumps(report.to_dict() | {"formats": sizes}, indent=2))
        return 0
    print(format_inspect(report))
    for name, nbytes in sizes["bytes"].items():
        if name != "wsz" and nbytes is not None:
            print(f"as {FORMAT_NAMES[name]}: {nbytes:,} B ({nbytes / report.file_bytes:.1f}x this file)")
    return 0


# --- export -----------------------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    from weightshare.pipeline.export import FORMATS

    p = sub.add_parser(
        "export",
        help="write a .wsz file as ONNX (indices + codebooks), safetensors codebooks or dense float32 weights",
        description="Export a .wsz file (or a compression run's) for deployment; docs/export.md has the layouts.",
    )
    p.add_argument("file", help=".wsz file or compression run directory")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, safetensors (codebooks) or dense")
    p.add_argument("--out", required=True, help="output file")
    _add_model_options(p, used_by="onnx only: ")


@command("export")
def _export(args: argparse.Namespace) -> int:
    from weightshare.pipeline.export import export_file
    from weightshare.report.run_report import FORMAT_NAMES

    result = export_file(
        args.file, args.format, args.out,
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, normalize=args.normalize,
    )  # fmt: skip
    nbytes, wsz = result["bytes"], result["wsz_bytes"]
    print(f"{args.out}: {FORMAT_NAMES[args.format]}, {nbytes:,} bytes ({nbytes / wsz:.1f}x the .wsz file's {wsz:,})")
    if result.get("difference"):
        diff = result["difference"]
        print(f"onnxruntime vs the decoded PyTorch model on {diff['inputs']:,} test images: largest difference "
              f"{diff['absolute']:.2g}, {diff['relative']:.2g} of the largest output")  # fmt: skip
    elif args.format == "onnx":
        print("not checked: onnxruntime is not installed")
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
        formatter_class=_RAW,
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


# --- entry point --------------------------------------------------------------------------------

PARSER_BUILDERS = [
    _add_pretrain, _add_compress, _add_tune, _add_compare, _add_codec, _add_export, _add_evaluate, _add_plot,
    _add_demo, _add_sensitivity,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightshare",
        description=__doc__.splitlines()[0],
        epilog=exit_codes(),
        formatter_class=_RAW,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def _prog(args: argparse.Namespace) -> str:
    """``weightshare compress sws``: how messages name the command."""
    return " ".join(["weightshare", args.command, *([args.method] if args.command in METHOD_COMMANDS else [])])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user's mistake is one line on stderr and an exit code (see :func:`exit_codes`)."""
    argv = _method_alias(list(sys.argv[1:] if argv is None else argv))
    foreign = _foreign_setting(argv)
    if foreign:  # argparse would print its usage too: one line says it
        print(f"weightshare {argv[0]} {argv[1]}: error: {foreign}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        print(f"{_prog(args)}: {_interrupted(args, argv, exc)}", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:  # anything else is a bug: its traceback is what finds it
        print(f"{_prog(args)}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, USAGE_ERRORS) else 1


def _interrupted(args: argparse.Namespace, argv: list[str], exc: KeyboardInterrupt) -> str:
    """The line for Ctrl-C: how far the run got and the command that continues it.

    >>> args = argparse.Namespace(command="compress")
    >>> _interrupted(args, ["compress", "sws", "--out", "my run"], RunInterrupted("my run", 3, 100))
    "interrupted after epoch 3 of 100; continue with: weightshare compress sws --out 'my run' --resume"
    """
    if args.command not in ("pretrain", "compress"):
        return "interrupted"
    if isinstance(exc, RunInterrupted):
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return f"{exc}; continue with: {shlex.join(['weightshare', *again])}"
    return f"interrupted before training started; run again: {shlex.join(['weightshare', *argv])}"


if __name__ == "__main__":
    sys.exit(main())
