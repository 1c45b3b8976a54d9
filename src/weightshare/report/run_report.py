"""report.json and summary.json: the measured file first, the paper-style estimate beside it.

The compression rate quoted first is measured from the bytes of ``model.wsz``;
the error quoted first is that of the model *decoded from that file*. The
paper-style figures (Han et al. CSR + Huffman; Yang et al. values-only) are
written beside them under keys that say so.
"""

from __future__ import annotations

from typing import Any

from weightshare.codec.inspect import file_rates, inspect
from weightshare.core.io import write_json
from weightshare.core.quantized import QuantizedModel
from weightshare.report.accounting import deep_compression_estimate, paper_style, values_only, weight_entropy_bits
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import COMPRESSED, REPORT, SUMMARY

__all__ = ["build_report", "write_report", "summary_row", "format_summary"]


def _layers(qmodel: QuantizedModel, inspected, paper) -> list[dict[str, Any]]:
    rows = {r.name: r for r in inspected.rows}
    paper_bits = {layer.name: layer.total_bits("huffman") for layer in paper.layers}
    out = []
    for entry in qmodel.summary():
        row = rows[entry["name"]]
        out.append({
            **entry,
            "kept_fraction": entry["nnz"] / max(entry["numel"], 1),
            "layout": row.layout,
            "file_bytes": row.total_bytes + row.header_bytes,
            "bits_per_weight": row.bits_per_weight,
            "entropy_bound_bytes": row.entropy_bytes,
            "paper_style_bits_per_weight": paper_bits.get(entry["name"], 0.0) / max(entry["numel"], 1),
        })  # fmt: skip
    return out


def build_report(
    run: RunDir,
    qmodel: QuantizedModel,
    decoded: QuantizedModel,
    *,
    nbytes: int,
    errors: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Everything a compression run measured, for report.json."""
    inspected = inspect(run.path_of(COMPRESSED))
    if inspected.file_bytes != nbytes:
        raise RuntimeError(f"model.wsz holds {inspected.file_bytes} bytes but the encoder wrote {nbytes}")
    rates = file_rates(inspected)
    paper = paper_style(qmodel)
    entropy = weight_entropy_bits(qmodel)
    config = run.config
    return {
        "method": config.get("method"),
        "model": qmodel.meta.get("model"),
        "dataset": config.get("data", {}).get("dataset"),
        "errors": errors,
        "file": {
            "path": "model.wsz",
            "bytes": nbytes,
            "dense_float32_bytes": 4 * rates["num_params"],
            **rates,
            "entropy_bound_bytes": inspected.entropy_bound_bytes,
        },
        "paper_style": {"cr_weights": paper.cr_weights, "cr_all": paper.cr_all, **paper.to_dict()},
        "dc_estimate": _dc_estimate(qmodel),
        "values_only_cr": {
            "accounting": "Yang et al. 2020: log2(#distinct non-zeros) bits per non-zero, "
            "positions, codebooks and biases free; not comparable",
            "cr": values_only(qmodel),
        },
        "totals": {
            "weights": qmodel.num_quantized,
            "nnz": qmodel.nnz,
            "nonzero_fraction": qmodel.nnz / max(qmodel.num_quantized, 1),
            "unique_values": entropy.unique_values,
            "entropy_bits_per_weight": entropy.bits_per_weight,
            "dense_params": qmodel.num_dense,
        },
        "coverage": {"quantized": list(qmodel.quantized), "dense": list(qmodel.dense)},
        "layers": _layers(qmodel, inspected, paper),
        "decoded_equals_quantized": _same_weights(qmodel, decoded),
    }


def _dc_estimate(qmodel: QuantizedModel) -> dict[str, Any]:
    """Deep Compression's own accounting (per-layer codebooks, 5-bit relative index + fillers, Huffman)."""
    e = deep_compression_estimate(qmodel)
    return {
        "accounting": "Han et al. 2016: per-layer codebook 32 bit/entry, 5-bit relative index + filler zeros, "
        "Huffman; biases float32; not the file size",
        "cr_weights": e.cr_weights,
        "cr_all": e.cr_all,
        **e.to_dict(),
    }


def _same_weights(a: QuantizedModel, b: QuantizedModel) -> bool:
    sa, sb = a.to_state_dict(), b.to_state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and bool((sa[k] == sb[k]).all()) for k in sa)


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    """The paper's Table 1 columns, with the file-measured rate first."""
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
        "cr_paper_style": report["paper_style"]["cr_weights"],
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
        f"paper-style estimate (Han et al. CSR + Huffman, weights): {s['cr_paper_style']:.1f}x",
    ]
    removed = sum(report.get("method_summary", {}).get("dead_weights_removed", {}).values())
    if removed:
        lines.insert(2, f"({removed:,} weights that never change the output removed after quantization; lossless)")
    return "\n".join(lines)
