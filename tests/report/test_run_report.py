"""report.json / summary.json are built from the written model.wsz alone, with both paper-style rates labelled."""

from __future__ import annotations

import json

import pytest
import torch

from weightshare.codec import save_compressed
from weightshare.core.errors import FormatError, RunDirError
from weightshare.core.quantized import QuantizedModel, QuantizedTensor, save_quantized
from weightshare.report.accounting import deep_compression_estimate, paper_style, values_only, weight_entropy_bits
from weightshare.report.run_report import PAPER_SCOPES, build_report, format_summary, summary_row, write_report
from weightshare.runs.rundir import RunDir
from weightshare.runs.schema import COMPRESSED, QUANTIZED, REPORT, SUMMARY

ERRORS = {"pretrained": {"test_error": 2.0}, "retrained": {"test_error": 1.9}, "decoded": {"test_error": 2.1}}


def _run(tmp_path, qmodel: QuantizedModel, *, checkpoint: bool = True) -> RunDir:
    """A run directory holding what the pipeline writes before the report: the checkpoint and model.wsz."""
    run = RunDir.create(tmp_path / "run", {"method": "sws", "data": {"dataset": "digits"}})
    if checkpoint:
        save_quantized(qmodel, run.path_of(QUANTIZED))
    save_compressed(qmodel, run.path_of(COMPRESSED))
    return run


# fc.weight (2 x 4) over the codebook [0, -0.5, 0.5], biases dense. Paper-style, 5-bit gap fields:
#   entries (row, col -> index): (0, 0 -> 1), (0, 3 -> 2), (1, 2 -> 1); no fillers
#   IR: 3 pointers x ceil(log2(3 + 1)) = 6 bits
#   IC: gaps 0, 3, 2 -> Huffman lengths 2, 1, 2 = 5 bits + table 3 x (5 + 5) = 35 bits
#   A:  indices 1, 2, 1 -> Huffman lengths 1, 1, 1 = 3 bits + table 2 x (1 + 5) = 15 bits
#   codebook: 2 non-zero entries x 32 = 64 bits (one tensor uses it: charged to the layer)
# weights only:    8 weights x 32 bits / (6 + 35 + 15 + 64 = 120 bits)
# weights + biases: (8 + 2) x 32 bits / (120 + 2 x 32 = 184 bits), the papers' |W| = 10
WEIGHTS_ONLY = 8 * 32 / 120
WITH_BIASES = 10 * 32 / 184


def _hand_model() -> QuantizedModel:
    idx = torch.tensor([[1, 0, 0, 2], [0, 0, 1, 0]])
    return QuantizedModel(
        [torch.tensor([0.0, -0.5, 0.5])],
        {"fc.weight": QuantizedTensor(idx)},
        {"fc.bias": torch.tensor([0.25, -1.0])},
        {"method": "sws", "model": "hand"},
    )


def _mixed_model() -> QuantizedModel:
    """Conv and fc layers, a per-layer and a shared codebook, dense biases and a dense (skipped) layer."""
    gen = torch.Generator().manual_seed(0)

    def sparse(shape: tuple[int, ...], k: int) -> torch.Tensor:
        return torch.randint(1, k, shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.1)

    codebooks = [torch.cat([torch.zeros(1), torch.randn(k - 1, generator=gen)]) for k in (9, 5)]
    quantized = {
        "conv.weight": QuantizedTensor(sparse((6, 3, 5, 5), 9), 0),
        "fc1.weight": QuantizedTensor(sparse((40, 150), 5), 1),
        "fc2.weight": QuantizedTensor(sparse((10, 40), 5), 1),
    }
    dense = {"conv.bias": torch.randn(6, generator=gen), "fc1.bias": torch.randn(40, generator=gen),
             "head.weight": torch.randn(3, 10, generator=gen)}  # fmt: skip
    return QuantizedModel(codebooks, quantized, dense, {"method": "dc", "model": "mixed"})


def test_paper_style_rates_weights_only_and_with_biases_by_hand(tmp_path) -> None:
    q = _hand_model()
    report = build_report(_run(tmp_path, q), errors=ERRORS)
    paper = report["paper_style"]
    assert paper["cr_weights"] == pytest.approx(WEIGHTS_ONLY)
    assert paper["cr_all"] == pytest.approx(WITH_BIASES)
    assert paper["totals"]["huffman"]["bits_weights"] == 120 and paper["totals"]["huffman"]["bits_all"] == 184
    assert (paper["num_weights"], paper["num_params"]) == (8, 10)
    assert paper["scopes"] == PAPER_SCOPES
    assert paper["scopes"]["cr_weights"].startswith("weights only")
    assert paper["scopes"]["cr_all"].startswith("weights + biases")
    assert report["file"]["bytes"] == (tmp_path / "run" / "model.wsz").stat().st_size
    assert report["file"]["cr_all"] == pytest.approx(40 / report["file"]["bytes"])  # 10 float32 parameters
    assert (report["model"], report["method"], report["dataset"]) == ("hand", "sws", "digits")


def test_summary_and_terminal_lines_label_both_paper_style_rates(tmp_path) -> None:
    run = _run(tmp_path, _hand_model())
    report = build_report(run, errors=ERRORS)
    write_report(run, report)
    summary = json.loads(run.path_of(SUMMARY).read_text())
    assert summary["cr_paper_style_weights"] == pytest.approx(WEIGHTS_ONLY)
    assert summary["cr_paper_style_with_biases"] == pytest.approx(WITH_BIASES)
    assert list(summary).index("cr_file") < list(summary).index("cr_paper_style_weights")  # the file rate first
    assert json.loads(run.path_of(REPORT).read_text())["paper_style"]["cr_all"] == pytest.approx(WITH_BIASES)
    lines = format_summary(report).splitlines()
    assert lines[2].startswith("model.wsz:") and lines[3].startswith("paper-style")  # the file rate first
    assert f"{WEIGHTS_ONLY:.1f}x weights only" in lines[3] and f"{WITH_BIASES:.1f}x weights + biases" in lines[3]


def test_the_file_gives_the_figures_of_the_in_memory_model(tmp_path) -> None:
    q = _mixed_model()
    report = build_report(_run(tmp_path, q), errors=ERRORS)
    labels = ("accounting", "cr_weights", "cr_all", "scopes")
    for key, accounting in (("paper_style", paper_style(q)), ("dc_estimate", deep_compression_estimate(q))):
        expected = {k: v for k, v in accounting.to_dict().items() if k != "accounting"}
        assert {k: v for k, v in report[key].items() if k not in labels} == expected, key
        assert (report[key]["cr_weights"], report[key]["cr_all"]) == (accounting.cr_weights, accounting.cr_all)
    assert report["values_only_cr"]["cr"] == values_only(q)
    entropy = weight_entropy_bits(q)
    assert report["totals"] == {
        "weights": q.num_quantized,
        "nnz": q.nnz,
        "nonzero_fraction": q.nnz / q.num_quantized,
        "unique_values": entropy.unique_values,
        "entropy_bits_per_weight": entropy.bits_per_weight,
        "dense_params": q.num_dense,
    }
    assert [{k: row[k] for k in ("name", "numel", "nnz")} for row in report["layers"]] == [
        {k: row[k] for k in ("name", "numel", "nnz")} for row in q.summary()
    ]
    assert report["coverage"] == {"quantized": list(q.quantized), "dense": list(q.dense), "shared": {}}
    assert report["decoded_equals_quantized"] is True
    assert report["paper_style"]["cr_all"] < report["paper_style"]["cr_weights"]  # biases cost 32 bits each


def test_decoded_file_is_compared_with_the_runs_checkpoint(tmp_path) -> None:
    q = _hand_model()
    assert build_report(_run(tmp_path / "none", q, checkpoint=False), errors=ERRORS)["decoded_equals_quantized"] is None
    run = _run(tmp_path / "other", q)
    changed = _hand_model()
    changed.dense["fc.bias"][0] = 0.5
    save_quantized(changed, run.path_of(QUANTIZED))
    assert build_report(run, errors=ERRORS)["decoded_equals_quantized"] is False


def test_refuses_a_missing_file(tmp_path) -> None:
    run = _run(tmp_path, _hand_model())
    run.path_of(COMPRESSED).unlink()
    with pytest.raises(RunDirError, match=r"model\.wsz does not exist"):
        build_report(run, errors=ERRORS)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_refuses_a_corrupt_file(tmp_path, damage: str) -> None:
    run = _run(tmp_path, _hand_model())
    path = run.path_of(COMPRESSED)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes({"truncate": data[:-3], "flip": data, "empty": b""}[damage]))
    with pytest.raises(FormatError, match=r"model\.wsz cannot be decoded, so no report can be built"):
        build_report(run, errors=ERRORS)


def test_refuses_a_file_of_another_size_than_written(tmp_path) -> None:
    run = _run(tmp_path, _hand_model())
    size = run.path_of(COMPRESSED).stat().st_size
    assert build_report(run, errors=ERRORS, written_bytes=size)["file"]["bytes"] == size
    with pytest.raises(FormatError, match=f"holds {size} bytes but the encoder wrote {size + 1}"):
        build_report(run, errors=ERRORS, written_bytes=size + 1)


def test_summary_row_reads_the_labelled_rates() -> None:
    report = {
        "model": "m", "method": "sws", "errors": ERRORS, "totals": {"weights": 8, "nonzero_fraction": 0.5},
        "file": {"cr_all": 3.0, "cr_weights": 4.0}, "paper_style": {"cr_weights": 6.0, "cr_all": 5.0},
        "dc_estimate": {"cr_weights": 7.0},
    }  # fmt: skip
    row = summary_row(report)
    assert (row["cr_file"], row["cr_file_weights"]) == (3.0, 4.0)
    assert (row["cr_paper_style_weights"], row["cr_paper_style_with_biases"], row["cr_dc_estimate"]) == (6.0, 5.0, 7.0)


def test_coverage_lists_quantized_dense_and_shared_tensors_and_why(tmp_path) -> None:
    from torch import nn

    from weightshare.core.coverage import CoverageRule

    net = nn.Sequential(nn.Embedding(6, 4), nn.LayerNorm(4), nn.Linear(4, 6, bias=False))
    net[2].weight = net[0].weight
    coverage = CoverageRule().select(net)
    indices = {name: torch.ones_like(p, dtype=torch.int64) for name, p in coverage.covered.items()}
    q = QuantizedModel.from_assignments(net.state_dict(), indices, [torch.tensor([0.0, 0.5])], meta={"model": "x"})
    report = build_report(_run(tmp_path, q), errors=ERRORS, coverage=coverage.reasons)
    assert report["coverage"] == {
        "quantized": ["0.weight"],
        "dense": ["1.weight", "1.bias"],
        "shared": {"2.weight": "0.weight"},
        "why_dense": {
            "1.weight": "LayerNorm is not a covered module type",
            "1.bias": "LayerNorm is not a covered module type",
        },
    }
    assert "why_dense" not in build_report(_run(tmp_path / "b", q), errors=ERRORS)["coverage"]


def test_each_export_format_is_sized_beside_the_file(tmp_path) -> None:
    from torch import nn

    from weightshare.export import dense_bytes, onnx_bytes, safetensors_bytes

    q = _hand_model()
    run = _run(tmp_path, q)
    bare = build_report(run, errors=ERRORS)["formats"]
    assert bare["bytes"]["onnx"] is None and bare["unavailable"] == {"onnx": "needs the model and an input"}
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 2))
    report = build_report(run, errors=ERRORS, model=model, example_input=torch.zeros(1, 4))
    sizes = report["formats"]["bytes"]
    assert sizes["wsz"] == run.path_of(COMPRESSED).stat().st_size == report["file"]["bytes"]
    assert sizes["safetensors"] == len(safetensors_bytes(q)) and sizes["dense"] == len(dense_bytes(q))
    line = format_summary(report | {"method_summary": {}}).splitlines()[-1]
    assert line.startswith("the same model exported: ")
    assert f"dense float32 safetensors {sizes['dense']:,} B ({sizes['dense'] / sizes['wsz']:.1f}x model.wsz)" in line
    pytest.importorskip("onnx")  # the extra weightshare[onnx], part of the dev extra
    assert report["formats"]["unavailable"] == {} and sizes["onnx"] == len(onnx_bytes(q, model, torch.zeros(1, 4)))
    assert f"ONNX (indices + codebooks) {sizes['onnx']:,} B" in line


def _with_quantized_biases() -> tuple[QuantizedModel, QuantizedModel]:
    """``_mixed_model`` and the same model with its two biases quantized after the method (own codebooks)."""
    from torch import nn

    from weightshare.finish.densequant import quantize_dense_params

    q = _mixed_model()
    net = nn.Module()  # the architecture of _mixed_model; the skipped head stays dense, as the method left it
    net.conv, net.fc1, net.fc2 = nn.Conv2d(3, 6, 5), nn.Linear(150, 40), nn.Linear(40, 10, bias=False)
    net.head = nn.Linear(10, 3, bias=False)
    return q, quantize_dense_params(net, q, 2)[0]


def test_biases_quantized_after_the_method_count_in_the_all_scope_only(tmp_path) -> None:
    q, biased = _with_quantized_biases()
    assert list(biased.dense) == ["head.weight"] and len(biased.codebooks) == 4
    before = build_report(_run(tmp_path / "a", q), errors=ERRORS)
    after = build_report(_run(tmp_path / "b", biased), errors=ERRORS)
    for key in ("paper_style", "dc_estimate"):
        b, a = before[key], after[key]
        assert (a["num_weights"], a["num_params"]) == (b["num_weights"], b["num_params"])
        assert a["totals"]["huffman"]["bits_weights"] == b["totals"]["huffman"]["bits_weights"]
        assert a["cr_weights"] == b["cr_weights"]  # weights only: the very same figure
        # 46 biases: 32 bits each before; after, CSR streams, code tables and two 3-entry codebooks
        assert a["totals"]["huffman"]["bits_all"] < b["totals"]["huffman"]["bits_all"] - 16 * 46
    paper = paper_style(biased)
    assert [layer.is_weight for layer in paper.layers] == [True, True, True, False, False]
    # The file: every byte still counts in cr_all; the weights-only rate moves only by the meta's few bytes.
    assert after["file"]["bytes"] < before["file"]["bytes"]
    assert after["file"]["num_weights"] == before["file"]["num_weights"] == q.num_quantized
    meta_growth = len(json.dumps(biased.meta)) - len(json.dumps(q.meta))  # the names of the quantized biases
    assert (
        before["file"]["weights_bytes"]
        <= after["file"]["weights_bytes"]
        <= before["file"]["weights_bytes"] + meta_growth
    )
    assert after["file"]["num_quantized"] == q.num_quantized + 46  # the file's own count: every quantized value
    # Totals, values-only and entropy are those of the weights, as before.
    assert after["totals"] == before["totals"] and after["values_only_cr"] == before["values_only_cr"]
    assert [row["weight"] for row in after["layers"]] == [True, True, True, False, False]


def test_coverage_says_which_parameters_were_quantized_after_the_method(tmp_path) -> None:
    _, biased = _with_quantized_biases()
    reasons = {"conv.bias": "bias of a covered layer (include_biases is off)"}
    coverage = build_report(_run(tmp_path, biased), errors=ERRORS, coverage=reasons)["coverage"]
    assert coverage["dense"] == ["head.weight"] and coverage["quantized"][-2:] == ["conv.bias", "fc1.bias"]
    assert coverage["dense_params_quantized"] == {
        "conv.bias": "left dense by the method (bias of a covered layer (include_biases is off)), then quantized "
        "into a codebook of its own of 4 values by the finish stage ([finish] dense_param_bits); counted with the "
        "biases",
        "fc1.bias": "left dense by the method (not a covered weight), then quantized into a codebook of its own "
        "of 4 values by the finish stage ([finish] dense_param_bits); counted with the biases",
    }


def test_the_file_section_names_its_components_and_each_layer_its_positions_and_values(tmp_path) -> None:
    q = _mixed_model()
    report = build_report(_run(tmp_path, q), errors=ERRORS)
    parts = report["file"]["components"]
    assert list(parts) == ["header", "codebooks", "tables", "positions", "values", "biases"]
    assert sum(parts.values()) == pytest.approx(report["file"]["bytes"])
    assert parts["codebooks"] == 4 * (8 + 4)  # two float32 codebooks of 9 and 5 entries, zeros implicit
    layers = {row["name"]: row for row in report["layers"]}
    assert sum(layers[n]["positions_bytes"] for n in q.quantized) == pytest.approx(parts["positions"])
    assert sum(layers[n]["values_bytes"] for n in q.quantized) == pytest.approx(parts["values"])
    fc1 = layers["fc1.weight"]  # ~600 non-zeros at random: positions cost about as much as the v2 gaps
    assert fc1["positions_bytes"] == pytest.approx(fc1["gap_bound_bytes"], rel=0.05)
    assert 8 * fc1["values_bytes"] / fc1["nnz"] == pytest.approx(2.0, abs=0.05)  # 4 values, about equally likely
