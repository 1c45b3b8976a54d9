"""The finishing stages in order, as ``weightshare compress`` runs them: what each did is in report.json."""

import json

import torch

from weightshare.cli import main
from weightshare.core.quantized import QuantizedModel, load_quantized
from weightshare.finish.config import FinishConfig
from weightshare.finish.stages import pruned_error, run_finishing
from weightshare.train.loop import evaluate_model


def test_compress_quantizes_the_biases_then_tunes_their_codebooks(pretrained, compressed, sws_quick, tmp_path, capsys):
    plain_dir, _ = compressed  # the same run without [finish] dense_param_bits and codebook_epochs
    out = tmp_path / "biases"
    flags = ["--dense-param-bits", "4", "--codebook-epochs", "1", "--quiet"]
    assert main(["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, *flags]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    plain = json.loads((plain_dir / "report.json").read_text())
    q, q_plain = load_quantized(out / "quantized.safetensors"), load_quantized(plain_dir / "quantized.safetensors")
    weights = [n for n in q.quantized if q.is_weight(n)]
    assert weights == list(q_plain.quantized)  # the same retraining, so the same hard assignment
    assert all(torch.equal(q.quantized[n].indices, q_plain.quantized[n].indices) for n in weights)
    summary = report["method_summary"]["dense_params_quantized"]
    biases = [n for n, t in q_plain.dense.items() if t.numel() >= 16]  # not the 10 output biases: 16 levels
    assert summary["bits"] == 4 and list(summary["tensors"]) == q.meta["not_weights"] == biases
    assert len(biases) == 2 and [t.numel() for t in q.dense.values()] == [10]
    assert set(report["errors"]) >= {"pruned", "snapped", "dense_quantized", "decoded"}
    assert report["errors"]["snapped"]["test_error"] == plain["errors"]["decoded"]["test_error"]
    assert abs(report["errors"]["dense_quantized"]["test_error"] - plain["errors"]["decoded"]["test_error"]) < 2
    assert report["file"]["bytes"] < plain["file"]["bytes"] - 300  # the 192 quantized biases were 768 bytes
    assert report["totals"] == plain["totals"]  # weights only, the same weights
    assert list(report["coverage"]["dense_params_quantized"]) == biases
    assert report["decoded_equals_quantized"] is True
    errors = report["errors"]
    quantized_line = (
        f"({sum(t['values'] for t in summary['tensors'].values())} biases and norms in 2 tensors quantized to 4 bits "
        f"after the method: test error {errors['snapped']['test_error']:.2f}% -> "
        f"{errors['dense_quantized']['test_error']:.2f}%)"
    )
    assert quantized_line in printed.splitlines()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert sum(row.startswith("codebook,") for row in rows) == 1  # one epoch of codebook fine-tuning was recorded


def test_pruned_error_zeroes_only_the_zero_assigned_weights_and_restores_the_model(digits):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    weight = net[1].weight
    with torch.no_grad():  # small random weights: a third survive, and zeroing the rest changes the outputs
        weight.copy_(0.01 * torch.randn_like(weight))
    keep = weight.abs() > 0.01  # about a third of the weights survive
    indices = keep.long()
    q = QuantizedModel.from_assignments(net.state_dict(), {"1.weight": indices}, [torch.tensor([0.0, 0.5])])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    errors = pruned_error(net, q, digits)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # left as it was
    by_hand = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    by_hand.load_state_dict({"1.weight": before["1.weight"] * keep, "1.bias": before["1.bias"]})
    assert errors == evaluate_model(by_hand, digits) != evaluate_model(net, digits)
    assert run_finishing(net, q, digits, FinishConfig(), None).errors == {"pruned": errors}
