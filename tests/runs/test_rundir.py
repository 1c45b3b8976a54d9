import json
import os

import pytest
import torch

from weightshare.core.errors import RunDirError
from weightshare.core.io import atomic_write_bytes, load_tensors, read_json, save_tensors, write_json
from weightshare.runs.rundir import RunDir


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b'{"a": 2}')
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temp file left behind


def test_tensors_round_trip_without_pickle(tmp_path):
    tensors = {"w": torch.randn(3, 4), "i": torch.arange(5)}
    save_tensors(tmp_path / "t.safetensors", tensors, {"epoch": "3"})
    loaded = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(tensors[k], loaded[k]) for k in tensors)
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RunDirError, match="bad.safetensors is not a valid safetensors file"):
        load_tensors(tmp_path / "bad.safetensors")


def test_run_directory_files(tmp_path):
    run = RunDir.create(tmp_path / "run", {"command": "pretrain"})
    env = json.loads(run.file("env.json").read_text())
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1
    run.write_metrics([{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "sparsity": 0.9}])
    rows = run.read_metrics()
    assert rows[1] == {"epoch": "2", "loss": "0.25", "sparsity": "0.9"} and rows[0]["sparsity"] == ""
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.open(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RunDirError, match="broken.json is not valid JSON"):
        read_json(tmp_path / "broken.json")


def test_write_json_writes_non_finite_floats_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"val_error": float("nan"), "rows": [1.5, float("inf")], "ok": 2.0})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_error": None, "rows": [1.5, None], "ok": 2.0}
