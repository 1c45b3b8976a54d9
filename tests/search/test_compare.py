"""weightshare compare: every method from one pretrained run, one table, one plot."""

from __future__ import annotations

import csv
import json

import pytest

from weightshare.core.errors import ConfigError
from weightshare.search.compare import compare, plan_entries

QUICK = {
    "dc": "[train]\nepochs = 1\n[dc]\nprune_rounds = 1\nprune_epochs = 1\nquant_epochs = 0\n",
    "pwfn": "[train]\nepochs = 2\n[pwfn]\nschedule = [0.5, 1.0]\nfirst_epochs = 1\nrest_epochs = 1\n",
}


def test_default_plan_is_every_method_with_a_preset_for_the_model():
    source = {"train": {"model": "mlp", "seed": 3}}
    entries = plan_entries(source)
    assert [(e.label, e.recipe) for e in entries] == [(m, "preset digits") for m in ("sws", "dc", "pwfn", "admm")]
    assert all(e.config.train.seed == 3 and e.config.train.model == "mlp" for e in entries)
    with pytest.raises(ConfigError, match="sws has no preset for model 'wrn_x'.*--recipe sws=FILE.toml"):
        plan_entries({"train": {"model": "wrn_x", "seed": 0}}, ["sws"])


def test_compare_tables_what_each_file_and_report_say(pretrained, tmp_path):
    recipes = {}
    for method, text in QUICK.items():
        (tmp_path / f"{method}.toml").write_text(text)
        recipes[method] = [str(tmp_path / f"{method}.toml")]
    out = tmp_path / "cmp"
    result = compare(pretrained, out, methods=["dc", "pwfn"], recipes=recipes, progress=False)
    assert [r["label"] for r in result["rows"]] == ["dc-dc", "pwfn-pwfn"]
    for row in result["rows"]:
        report = json.loads((out / row["label"] / "report.json").read_text())
        assert row["bytes"] == (out / row["label"] / "model.wsz").stat().st_size == report["file"]["bytes"]
        assert row["test_error"] == report["errors"]["decoded"]["test_error"]
        assert row["dense_bytes"] > row["safetensors_bytes"] > row["bytes"]  # each export format beside .wsz
        assert row["onnx_bytes"] == report["formats"]["bytes"]["onnx"] > row["bytes"]
        assert row["nonzero_percent"] == pytest.approx(100 * report["totals"]["nnz"] / report["totals"]["weights"])
        assert row["wall_s"] > 0
    with (out / "compare.csv").open() as handle:
        assert [r["label"] for r in csv.DictReader(handle)] == ["dc-dc", "pwfn-pwfn"]
    table = (out / "compare.md").read_text()
    assert table.startswith("| run | method | recipe | decoded test error (%) | file bytes | ONNX bytes |")
    assert f"{result['rows'][0]['bytes']:,}" in table
    assert (out / "pareto.png").stat().st_size > 10_000
    # Run again: the finished runs are reused, not retrained.
    stamp = (out / "dc-dc" / "report.json").stat().st_mtime_ns
    assert compare(pretrained, out, methods=["dc", "pwfn"], recipes=recipes, progress=False)["rows"] == result["rows"]
    assert (out / "dc-dc" / "report.json").stat().st_mtime_ns == stamp
