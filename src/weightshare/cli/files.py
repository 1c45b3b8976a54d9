"""The commands on files: ``evaluate``, ``encode``/``decode``/``inspect``, ``export``, ``plot``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from weightshare.models.architectures import MODELS

if TYPE_CHECKING:
    pass

from weightshare.cli.common import command

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


# --- encode / decode / inspect ----------------------------------------------------------------


def _add_codec(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="write model.wsz from a compression run or a quantized checkpoint")
    p.add_argument("source", help="run directory (uses its quantized.safetensors) or a quantized checkpoint")
    p.add_argument("--out", help="output file (default: model.wsz next to the source)")
    p.add_argument("--float16", action="store_true", help="store codebooks and dense tensors as float16")
    p = sub.add_parser("decode", help="decode a .wsz file into a safetensors state dict")
    p.add_argument("file", help=".wsz file")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p = sub.add_parser(
        "inspect",
        help="per-tensor table of a .wsz file: layout, positions and values (bytes, bits per non-zero, beside "
        "the version-2 gaps at their entropy), bits per weight; the file's bytes by component",
    )
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
