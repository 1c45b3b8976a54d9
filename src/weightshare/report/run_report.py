"""report.json and summary.json: the measured file first, the paper-style estimates beside it.

The report is built from the run's ``model.wsz`` alone: the compression rate quoted
first is measured from its bytes, and every other figure (paper-style accounting,
entropy, totals, layers) from the model decoded from it, so the figures are those of
the file that was evaluated (the error quoted first is that of the decoded model).
The paper-style figures (Han et al. CSR + Huffman; Yang et al. values-only) are
written beside the file rate under keys that say so, the Han-style one for the
weights only and for weights + biases (docs/methods.md#accounting-paper-style).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from weightshare.codec import InspectReport, decode, file_rates, inspect
from weightshare.core.errors import DependencyError, FormatError, MismatchError, RunDirError
from weightshare.core.io import write_json
from weightshare.core.quantized import QuantizedModel, load_quantized
from weightshare.export import dense_bytes, onnx_bytes, safetensors_bytes
from weightshare.report.accounting import (
    PaperStyleReport,
    deep_compression_estimate,
    paper_style,
    values_only,
    weight_entropy_bits,
)
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import COMPRESSED, QUANTIZED, REPORT, SUMMARY

__all__ = [
    "FORMAT_NAMES",
    "PAPER_SCOPES",
    "build_report",
    "format_sizes",
    "write_report",
    "summary_row",
    "format_summary",
]

# What each paper-style rate counts. The papers' |W| includes the biases (Ullrich et al. 2017, Table 1:
# 267K / 431K for the LeNets; Han et al. 2016 divide the size of every float32 parameter), so whenever the
# weights compress at all, a rate over the weights alone is higher than the papers' for the same model.
PAPER_SCOPES = {
    "cr_weights": "weights only: the quantized tensors with their codebooks (and any weight matrix kept dense); "
    "biases left out",
    "cr_all": "weights + biases: every parameter of the model, biases and other dense tensors at 32 bits, "
    "as the papers' |W| counts them",
}


def _read_compressed(run: RunDir) -> tuple[bytes, QuantizedModel]:
    """The bytes of the run's ``model.wsz`` and the model they decode to; a missing or corrupt file is refused."""
    path = run.path_of(COMPRESSED)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: the report is built from the run's compressed file")
    data = path.read_bytes()
    try:
        return data, decode(data)
    except FormatError as exc:
        raise FormatError(f"{path} cannot be decoded, so no report can be built from it: {exc}") from exc


def build_report(
    run: RunDir,
    *,
    errors: dict[str, dict[str, float]],
    written_bytes: int | None = None,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    coverage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything a compression run measured, for report.json, from the run's ``model.wsz`` alone.

    The byte count and file rates come from the file; every other figure from the model decoded from it.
    ``errors`` holds the measured test (and validation) errors, the decoded model's under ``"decoded"``.
    ``written_bytes``, what the encoder said it wrote, is only checked against the file. ``model`` (the
    architecture) and ``example_input`` let the export formats' sizes include ONNX. ``coverage``
    (``Method.coverage_reasons()``) says why each tensor the file keeps dense was not compressed.
    """
    data, qmodel = _read_compressed(run)
    if written_bytes is not None and len(data) != written_bytes:
        raise FormatError(f"{run.path_of(COMPRESSED)} holds {len(data)} bytes but the encoder wrote {written_bytes}")
    inspected = inspect(data)
    paper = paper_style(qmodel)
    config = run.config
    return {
        "method": config.get("method"),
        "model": qmodel.meta.get("model"),
        "dataset": config.get("data", {}).get("dataset"),
        "errors": errors,
        "file": _file_section(inspected),
        "formats": format_sizes(qmodel, len(data), model, example_input),
        "paper_style": _rates(paper, "paper-style (Han et al. 2016 CSR + relative index + Huffman)"),
        "dc_estimate": _rates(
            deep_compression_estimate(qmodel),
            "Han et al. 2016: per-layer codebook 32 bit/entry, 5-bit relative index + filler zeros, Huffman",
        ),
        "values_only_cr": _values_only(qmodel),
        "totals": _totals(qmodel.weights_only()),
        "coverage": _coverage(qmodel, coverage),
        "layers": _layers(qmodel, inspected, paper),
        "decoded_equals_quantized": _matches_checkpoint(run, qmodel),
    }


def _coverage(qmodel: QuantizedModel, reasons: dict[str, str] | None) -> dict[str, Any]:
    """Which tensors the file quantizes, keeps dense (and why, when the method's rule is known) and
    stores once for several names."""
    out: dict[str, Any] = {"quantized": list(qmodel.quantized), "dense": list(qmodel.dense)}
    out["shared"] = dict(qmodel.aliases)
    if reasons is not None:
        out["why_dense"] = {name: reasons.get(name, "not an entry of the method's model") for name in qmodel.dense}
    after = [name for name in qmodel.quantized if not qmodel.is_weight(name)]
    if after:
        why = reasons or {}
        out["dense_params_quantized"] = {
            name: f"left dense by the method ({why.get(name, 'not a covered weight')}), then quantized into a "
            f"codebook of its own of {qmodel.codebooks[qmodel.quantized[name].codebook].numel()} values by the "
            "finish stage ([finish] dense_param_bits); counted with the biases"
            for name in after
        }
    return out


# The export formats, as `weightshare export --format` names them, with what each holds (docs/export.md).
FORMAT_NAMES = {
    "wsz": "model.wsz (entropy-coded indices and positions)",
    "onnx": "ONNX (indices + codebooks)",
    "safetensors": "safetensors codebooks (bit-packed indices)",
    "dense": "dense float32 safetensors",
}


def format_sizes(
    qmodel: QuantizedModel,
    wsz_bytes: int,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The bytes of the same model in each export format beside ``.wsz``: ``{"bytes": {format: n or None},
    "unavailable": {format: why}}``. ONNX needs the architecture, an input and the ``onnx`` package.

    >>> from weightshare.core.quantized import QuantizedTensor
    >>> q = QuantizedModel([torch.tensor([0.0, 1.0])], {"w": QuantizedTensor(torch.zeros(64, 64, dtype=torch.int64))})
    >>> sizes = format_sizes(q, 30)
    >>> sizes["bytes"]["wsz"], sizes["bytes"]["dense"] > 4 * 64 * 64, sizes["unavailable"]["onnx"]
    (30, True, 'needs the model and an input')
    """
    sizes: dict[str, int | None] = {"wsz": wsz_bytes, "onnx": None}
    unavailable = {}
    if model is None or example_input is None:
        unavailable["onnx"] = "needs the model and an input"
    else:
        try:
            sizes["onnx"] = len(onnx_bytes(qmodel, model, example_input))
        except (DependencyError, MismatchError, RuntimeError) as exc:  # a size line never fails the run
            unavailable["onnx"] = str(exc).splitlines()[0]
    sizes["safetensors"] = len(safetensors_bytes(qmodel))
    sizes["dense"] = len(dense_bytes(qmodel))
    return {"bytes": sizes, "unavailable": unavailable}


def _values_only(qmodel: QuantizedModel) -> dict[str, Any]:
    return {
        "accounting": "Yang et al. 2020: log2(#distinct non-zeros) bits per non-zero, "
        "positions, codebooks and biases free; not comparable",
        "cr": values_only(qmodel),
    }


def _file_section(inspected: InspectReport) -> dict[str, Any]:
    """The file's size and rates, all read from its bytes; the weights-only rate leaves out the parameters
    quantized after the method (biases, norms), as every "weights only" figure does."""
    rates = file_rates(inspected)  # cr_weights: the quantized weights only, not biases quantized after the method
    sizes = {"path": COMPRESSED.path, "bytes": inspected.file_bytes, "dense_float32_bytes": 4 * rates["num_params"]}
    components = {"components": inspected.components}  # header, codebooks, tables, positions, values, biases
    return sizes | rates | {"entropy_bound_bytes": inspected.entropy_bound_bytes} | components


def _rates(report: PaperStyleReport, accounting: str) -> dict[str, Any]:
    """A Han-style estimate: both rates (Huffman coding) with what each counts, then every part of the budget."""
    parts = {k: v for k, v in report.to_dict().items() if k != "accounting"}
    return {
        "accounting": f"{accounting}; not the file size",
        "cr_weights": report.cr_weights,
        "cr_all": report.cr_all,
        "scopes": dict(PAPER_SCOPES),
        **parts,
    }


def _totals(qmodel: QuantizedModel) -> dict[str, Any]:
    entropy = weight_entropy_bits(qmodel)
    return {
        "weights": qmodel.num_quantized,
        "nnz": qmodel.nnz,
        "nonzero_fraction": qmodel.nnz / max(qmodel.num_quantized, 1),
        "unique_values": entropy.unique_values,
        "entropy_bits_per_weight": entropy.bits_per_weight,
        "dense_params": qmodel.num_dense,
    }


def _layers(qmodel: QuantizedModel, inspected: InspectReport, paper: PaperStyleReport) -> list[dict[str, Any]]:
    rows = {r.name: r for r in inspected.rows}
    paper_bits = {layer.name: layer.total_bits("huffman") for layer in paper.layers}
    out = []
    for entry in qmodel.summary():
        row = rows[entry["name"]]
        out.append({
            **entry,
            "weight": qmodel.is_weight(entry["name"]),
            "kept_fraction": entry["nnz"] / max(entry["numel"], 1),
            "layout": row.layout,
            "file_bytes": row.total_bytes + row.header_bytes,
            "bits_per_weight": row.bits_per_weight,
            "entropy_bound_bytes": row.entropy_bytes,
            "positions_bytes": row.positions_bytes,
            "values_bytes": row.values_bytes,
            "gap_bound_bytes": row.gap_bound_bytes,
            "paper_style_bits_per_weight": paper_bits.get(entry["name"], 0.0) / max(entry["numel"], 1),
        })  # fmt: skip
    return out


def _matches_checkpoint(run: RunDir, decoded: QuantizedModel) -> bool | None:
    """Whether the file decodes to the run's quantized checkpoint, bit for bit (None: the run has none)."""
    if not run.has(QUANTIZED):
        return None
    return _same_weights(load_quantized(run.path_of(QUANTIZED)), decoded)


def _same_weights(a: QuantizedModel, b: QuantizedModel) -> bool:
    sa, sb = a.to_state_dict(), b.to_state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and bool((sa[k] == sb[k]).all()) for k in sa)


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    """The paper's Table 1 columns, with the file-measured rate first and both paper-style rates labelled."""
    pre = report["errors"]["pretrained"]["test_error"]
    post = report["errors"]["decoded"]["test_error"]
    return {
        "model": report["model"],
        "method": report["method"],
        "error_pre": pre,
        "error_post": post,
        "delta": post - pre,
        "num_weights": report["totals"]["weights"],
        "nonzero_percent": 100 * report["totals"]["nonzero_fraction"],
        "cr_file": report["file"]["cr_all"],
        "cr_file_weights": report["file"]["cr_weights"],
        "cr_paper_style_weights": report["paper_style"]["cr_weights"],
        "cr_paper_style_with_biases": report["paper_style"]["cr_all"],
        "cr_dc_estimate": report["dc_estimate"]["cr_weights"],
    }


def write_report(run: RunDir, report: dict[str, Any]) -> None:
    write_json(run.path_of(REPORT), report)
    write_json(run.path_of(SUMMARY), summary_row(report))


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    s = summary_row(report)
    retrained = report["errors"].get("retrained", {}).get("test_error")
    lines = [
        f"{s['model']} / {s['method']}: test error {s['error_pre']:.2f}% (pretrained)"
        + (f" -> {retrained:.2f}% (retrained)" if retrained is not None else "")
        + f" -> {s['error_post']:.2f}% (decoded from model.wsz), delta {s['delta']:+.2f}",
        f"non-zero weights {s['nonzero_percent']:.2f}% of {s['num_weights']:,}; "
        f"{report['totals']['unique_values']} distinct values",
        f"model.wsz: {report['file']['bytes']:,} bytes = {s['cr_file']:.1f}x smaller than float32 "
        f"(weights only {s['cr_file_weights']:.1f}x)",
        f"paper-style estimate (Han et al. CSR + Huffman): {s['cr_paper_style_weights']:.1f}x weights only, "
        f"{s['cr_paper_style_with_biases']:.1f}x weights + biases",
    ]
    if "formats" in report:
        lines.append(_formats_line(report["formats"]["bytes"]))
    removed = sum(report.get("method_summary", {}).get("dead_weights_removed", {}).values())
    if removed:
        lines.insert(2, f"({removed:,} weights that never change the output removed after quantization; lossless)")
    dense = _dense_params_line(report)
    if dense:
        lines.insert(2, dense)
    return "\n".join(lines)


def _dense_params_line(report: dict[str, Any]) -> str | None:
    """``(410 biases and norms in 2 tensors quantized to 4 bits after the method: test error 2.03% -> 2.04%)``."""
    done = report.get("method_summary", {}).get("dense_params_quantized")
    if not done:
        return None
    values = sum(int(t["values"]) for t in done["tensors"].values())
    tensors, bits = len(done["tensors"]), done["bits"]
    line = f"({values:,} biases and norms in {tensors} tensors quantized to {bits} bits after the method"
    errors = report["errors"]
    if "snapped" in errors and "dense_quantized" in errors:
        line += f": test error {errors['snapped']['test_error']:.2f}% -> {errors['dense_quantized']['test_error']:.2f}%"
    return line + ")"


def _formats_line(sizes: dict[str, int | None]) -> str:
    """``exported: ONNX (indices + codebooks) 12,345 B (2.1x model.wsz); ...``: the formats that were sized."""
    wsz = sizes["wsz"] or 1
    parts = [f"{FORMAT_NAMES[name]} {n:,} B ({n / wsz:.1f}x model.wsz)" for name, n in sizes.items()
             if name != "wsz" and n is not None]  # fmt: skip
    return "the same model exported: " + "; ".join(parts)
