"""weightshare tune and compare from the command line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("optuna")

from weightshare.cli import main  # noqa: E402

QUICK_DC = ["--epochs", "1", "--prune-rounds", "1", "--prune-epochs", "1", "--quant-epochs", "0"]


def test_tune_writes_pareto_recipes_that_compress_reproduces(pretrained, tmp_path, capsys):
    config = tmp_path / "tune.toml"
    config.write_text("[tune]\ntrials = 2\nstartup_trials = 1\n[dc]\nkmeans_iter = 50\n")
    study = tmp_path / "study"
    code = main(["tune", "--method", "dc", "--from", str(pretrained), "--study-dir", str(study),
                 "--config", str(config), *QUICK_DC, "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "2 complete, 0 pruned, 0 fail" in printed
    pareto = json.loads((study / "pareto.json").read_text())["pareto"]
    assert pareto and all(f"-> {row['recipe']}" in printed for row in pareto)
    row = pareto[0]
    recipe = study / row["recipe"]
    assert "kmeans_iter = 50" in recipe.read_text()  # the base recipe's own settings travel with the trial's
    # The recipe file gives the same run again: same file bytes, same decoded errors.
    out = tmp_path / "again"
    assert (
        main(["compress", "dc", "--from", str(pretrained), "--out", str(out), "--config", str(recipe), "--quiet"]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["file"]["bytes"] == row["bytes"]
    assert report["errors"]["decoded"]["val_error"] == row["val_error"]


def test_tune_refuses_bad_input_in_one_line(pretrained, tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("[dc.bits_fc]\nlow = 0\nhigh = 4\n")
    args = ["tune", "dc", "--from", str(pretrained), "--study-dir", str(tmp_path / "s"), *QUICK_DC]
    assert main([*args, "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weightshare tune dc: error: dc search space: search range of [dc] bits_fc [0, 4]")
    assert len(err.splitlines()) == 1
    assert main([*args, "--tau", "0.1"]) == 2
    assert "--tau is a setting of sws, not of dc" in capsys.readouterr().err
    assert main([*args, "--trials", "0"]) == 2
    assert "trials" in capsys.readouterr().err
