"""``weightshare export`` on a digits compression run: every format, its size beside .wsz, one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from weightshare.cli import main
from weightshare.codec import load_compressed
from weightshare.export import compare_outputs, load_safetensors_layout
from weightshare.models.architectures import build_model
from weightshare.pipeline.export import export_file


def test_onnx_from_a_run_checked_on_its_test_set(compressed, tmp_path, capsys, digits):
    pytest.importorskip("onnxruntime")
    run, _ = compressed
    out = tmp_path / "model.onnx"
    assert main(["export", str(run / "model.wsz"), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    wsz = (run / "model.wsz").stat().st_size
    assert f"{out.stat().st_size:,} bytes" in printed and f"the .wsz file's {wsz:,}" in printed
    assert "on 360 test images: largest difference " in printed  # the digits test split
    decoded = load_compressed(run / "model.wsz").load_into(build_model("mlp"))
    assert compare_outputs(out, decoded, digits.test.x).relative <= 1e-5
    # the run directory stands for its model.wsz; the figures are returned too
    result = export_file(run, "onnx", tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == out.read_bytes()  # deterministic
    assert result["difference"]["inputs"] == 360 and result["difference"]["relative"] <= 1e-5
    assert result["wsz_bytes"] == wsz and result["bytes"] == out.stat().st_size


def test_safetensors_and_dense_hold_the_decoded_weights(compressed, tmp_path, capsys):
    run, _ = compressed
    expected = load_compressed(run / "model.wsz").to_state_dict()
    for fmt in ("safetensors", "dense"):
        out = tmp_path / f"{fmt}.safetensors"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        assert f"{out}: " in capsys.readouterr().out
        state = load_safetensors_layout(out).to_state_dict() if fmt == "safetensors" else load_file(str(out))
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    # the report lists the same byte counts beside model.wsz
    sizes = json.loads((run / "report.json").read_text())["formats"]["bytes"]
    assert sizes["safetensors"] == (tmp_path / "safetensors.safetensors").stat().st_size
    assert sizes["dense"] == (tmp_path / "dense.safetensors").stat().st_size


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "onnx", "--model", "lenet5"], 2, "file made for mlp does not match the model lenet5"),
        (["--format", "dense", "--model", "mlp"], 2, "--model is used by --format onnx only"),
    ],
)
def test_mismatches_fail_in_one_line_and_write_nothing(compressed, tmp_path, capsys, args, code, message):
    run, _ = compressed
    out = tmp_path / "out.file"
    assert main(["export", str(run / "model.wsz"), *args, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "dense"])
def test_corrupt_files_fail_in_one_line_and_write_nothing(compressed, tmp_path, capsys, fmt):
    run, _ = compressed
    data = bytearray((run / "model.wsz").read_bytes())
    data[-3] ^= 0x40  # refused before any data set is loaded (the file lies outside its run directory)
    (tmp_path / "bad.wsz").write_bytes(bytes(data))
    out = tmp_path / "out.file"
    assert main(["export", str(tmp_path / "bad.wsz"), "--format", fmt, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"weightshare export: error: {tmp_path / 'bad.wsz'}: checksum mismatch" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wsz"]


def test_a_pretraining_run_is_refused(pretrained, tmp_path, capsys):
    assert main(["export", str(pretrained), "--format", "dense", "--out", str(tmp_path / "d")]) == 2
    assert "export reads a .wsz file or a compression run directory" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_inspect_lists_the_formats_beside_the_file(compressed, capsys):
    run, _ = compressed
    assert main(["inspect", str(run / "model.wsz"), "--json"]) == 0
    sizes = json.loads(capsys.readouterr().out)["formats"]["bytes"]
    assert sizes["wsz"] == (run / "model.wsz").stat().st_size and sizes["onnx"] is None
    assert main(["inspect", str(run / "model.wsz")]) == 0
    table = capsys.readouterr().out
    assert f"as dense float32 safetensors: {sizes['dense']:,} B" in table
    assert f"as safetensors codebooks (bit-packed indices): {sizes['safetensors']:,} B" in table


def test_without_the_onnx_extra_one_line_and_the_report_says_why(compressed, tmp_path, capsys, monkeypatch):
    import sys

    from weightshare.report.run_report import format_sizes

    run, _ = compressed
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if weightshare[onnx] were not installed
    out = tmp_path / "m.onnx"
    assert main(["export", str(run / "model.wsz"), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == "weightshare export: error: the ONNX export needs the onnx package: pip install 'weightshare[onnx]'\n"
    assert not out.exists()
    qmodel = load_compressed(run / "model.wsz")
    sizes = format_sizes(qmodel, 1, build_model("mlp"), torch.zeros(1, 64))
    assert sizes["bytes"]["onnx"] is None and "pip install 'weightshare[onnx]'" in sizes["unavailable"]["onnx"]
    assert sizes["bytes"]["dense"] > 4 * (qmodel.num_quantized + qmodel.num_dense)
