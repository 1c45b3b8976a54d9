import csv
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightshare.cli import main
from weightshare.core.errors import ConfigError
from weightshare.core.settings import validate
from weightshare.data.datasets import Split
from weightshare.methods.dc.config import DCConfig
from weightshare.methods.dc.method import DeepCompression
from weightshare.models.architectures import build_model
from weightshare.pipeline.sensitivity import SensitivityRow, derive_settings, run_sensitivity, sensitivity_analysis


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens") / "A"
    assert main(["pretrain", "--preset", "digits", "--out", str(out), "--epochs", "10", "--quiet"]) == 0
    return out


def test_cli_writes_one_row_per_layer_and_fraction(pretrained, capsys):
    assert main(["sensitivity", str(pretrained), "--fractions", "0.5,0.9,0.99", "--max-drop", "1.0"]) == 0
    printed = capsys.readouterr().out
    with (pretrained / "sensitivity.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    layers = ["net.0.weight", "net.2.weight", "net.4.weight"]
    expected = [(n, f) for n in layers for f in (0.5, 0.9, 0.99)]
    assert [(r["layer"], float(r["pruned_fraction"])) for r in rows] == expected
    assert all(float(r["kept_fraction"]) == pytest.approx(1 - float(r["pruned_fraction"])) for r in rows)
    result = json.loads((pretrained / "sensitivity.json").read_text())
    assert list(result["layers"]) == layers and (pretrained / "figures" / "sensitivity.png").stat().st_size > 1000
    assert f"--kept {result['kept']}" in printed
    # the derived kept fractions are a valid --kept for Deep Compression on the same model
    model = build_model("mlp")
    kept = [float(v) for v in result["kept"].split(",")]  # the string --kept takes
    dc = DeepCompression(model, validate(DCConfig(kept=kept, prune_rounds=1, prune_epochs=1)))
    assert list(dc.targets.values()) == [result["layers"][n]["kept"] for n in layers]
    for layer, setting in result["layers"].items():  # each derived point is within the allowed drop
        within = [r for r in rows if r["layer"] == layer and float(r["pruned_fraction"]) <= setting["pruned_fraction"]]
        assert all(float(r["error_increase"]) <= 1.0 for r in within)


def test_analysis_leaves_the_model_unchanged_and_prunes_by_magnitude(digits):
    torch.manual_seed(0)
    model = build_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    baseline, rows = sensitivity_analysis(model, digits.val, [0.0, 0.5, 1.0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    zero = [r for r in rows if r.pruned_fraction == 0.0]
    assert all(r.error_increase == 0.0 and r.threshold == 0.0 for r in zero)
    half = next(r for r in rows if r.layer == "net.0.weight" and r.pruned_fraction == 0.5)
    w = before["net.0.weight"].abs()
    assert float((w >= half.threshold).float().mean()) == pytest.approx(0.5, abs=1 / w.numel())
    empty_last = next(r for r in rows if r.layer == "net.4.weight" and r.pruned_fraction == 1.0)
    bias_only = before["net.4.bias"].expand(len(digits.val), -1)  # no last layer: only its biases decide
    assert empty_last.val_loss == pytest.approx(float(F.cross_entropy(bias_only, digits.val.y)), rel=1e-5)
    assert baseline != empty_last.val_error


def test_derived_setting_stops_at_the_first_fraction_over_the_limit():
    curve = [("a", 0.3, 0.1), ("a", 0.5, 0.6), ("a", 0.7, 0.2), ("b", 0.3, 2.0), ("b", 0.5, 0.0)]
    rows = [SensitivityRow(layer, f, 1 - f, f / 10, 0.0, 0.0, d) for layer, f, d in curve]
    settings = derive_settings(rows, 0.5, {"a": 0.01, "b": 0.0})
    assert settings["a"] == {"pruned_fraction": 0.3, "kept": 0.7, "threshold": 0.03, "quality": 3.0}
    assert settings["b"]["kept"] == 1.0 and settings["b"]["threshold"] == 0.0  # the noisy 0.5 point is not taken


def test_bad_fractions_are_refused(pretrained, capsys):
    with pytest.raises(ConfigError, match="setting 'fractions': value 1.5 is outside"):
        run_sensitivity(pretrained, fractions="0.5,1.5")
    assert main(["sensitivity", str(pretrained), "--fractions", "half"]) == 2
    assert "setting 'fractions': 'half' is not a number" in capsys.readouterr().err
    assert main(["sensitivity", str(pretrained), "--max-drop", "-1"]) == 2


def test_analysis_of_a_conv_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    split = Split(torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,)))
    _, rows = sensitivity_analysis(net, split, [0.25, 0.75])
    assert [(r.layer, r.kept_fraction) for r in rows] == [
        ("0.weight", 0.75),
        ("0.weight", 0.25),
        ("2.weight", 0.75),
        ("2.weight", 0.25),
    ]
