"""Runs you can trust: Ctrl-C, --resume, runs and files of the wrong kind, collapsed results; each one line."""

import importlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from weightshare.cli import main
from weightshare.codec import save_compressed
from weightshare.core.io import load_tensors, save_tensors
from weightshare.core.quantized import QuantizedModel
from weightshare.methods import DeepCompression, Method, SoftWeightSharing
from weightshare.models.architectures import build_model

SRC = Path(__file__).resolve().parents[1] / "src"
# The modules (weightshare.pipeline.compress, as an attribute, is the function of that name).
compress_stage, evaluate_stage, pretrain_stage = (
    importlib.import_module(f"weightshare.pipeline.{name}") for name in ("compress", "evaluate", "pretrain")
)


def _stop_after(epochs: int):
    """A stand-in for the training loop that is interrupted (Ctrl-C) once ``epochs`` epochs are checkpointed."""
    from weightshare.train.loop import fit

    def interrupted_fit(*args, on_epoch=None, **kwargs):
        if epochs == 0:
            raise KeyboardInterrupt

        def stop(epoch, model):
            if on_epoch is not None:
                on_epoch(epoch, model)
            if epoch + 1 == epochs:
                raise KeyboardInterrupt

        return fit(*args, on_epoch=stop, **kwargs)

    return interrupted_fit


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _continue_command(line: str) -> list[str]:
    """The argv of the command an interruption line says continues the run."""
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[0] == "weightshare" and command.count("--resume") == 1
    return command[1:]


# --- Ctrl-C ------------------------------------------------------------------------------------------------


def test_an_interrupted_compress_says_how_to_continue_and_ends_as_if_never_interrupted(
    compressed, pretrained, sws_quick, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "sws run"  # a space: the command printed must be quoted for the shell
    monkeypatch.setattr(compress_stage, "fit", _stop_after(1))
    assert main(["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, "--quiet"]) == 130
    line = _one_line(capsys)
    assert line.startswith("weightshare compress sws: interrupted after epoch 1 of 3; continue with: weightshare")
    assert shlex.quote(str(out)) in line
    monkeypatch.undo()
    assert main(_continue_command(line)) == 0
    assert (out / "model.wsz").read_bytes() == (compressed[0] / "model.wsz").read_bytes()


def test_a_pretraining_stopped_before_its_first_checkpoint_resumes_from_epoch_zero(tmp_path, monkeypatch, capsys):
    argv = ["pretrain", "--preset", "digits", "--epochs", "2", "--quiet", "--out"]
    out, whole = tmp_path / "pre", tmp_path / "whole"
    monkeypatch.setattr(pretrain_stage, "fit", _stop_after(0))
    assert main([*argv, str(out)]) == 130
    interrupted = _one_line(capsys)
    command = shlex.join(["weightshare", *argv, str(out), "--resume"])
    assert interrupted == f"weightshare pretrain: interrupted before epoch 1 of 2 ended; continue with: {command}"
    monkeypatch.undo()
    assert main([*argv, str(out)]) == 1  # starting it again in the same directory: refused, saying --resume works
    line = _one_line(capsys)
    assert f"run directory {out} holds a run stopped before its first epoch ended (no checkpoint)" in line
    assert "pass --resume to start it from epoch 0" in line
    assert main(_continue_command(interrupted)) == 0
    assert main([*argv, str(whole)]) == 0
    resumed, fresh = load_tensors(out / "model.safetensors"), load_tensors(whole / "model.safetensors")
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def test_ctrl_c_in_a_real_process_prints_one_line_and_exits_130(tmp_path):
    out = tmp_path / "pre"
    command = [sys.executable, "-m", "weightshare", "pretrain", "--preset", "digits", "--epochs", "500"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    # As from a terminal, even when this test runs in a background job (which starts children with SIGINT
    # ignored, and Python keeps it ignored): the child starts with Ctrl-C's default action.
    proc = subprocess.Popen([*command, "--out", str(out), "--quiet"], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.safetensors").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("weightshare pretrain: interrupted after epoch ") and " of 500; continue with: " in err
    assert err.rstrip().endswith("--quiet --resume")


# --- --resume keeps the settings a run was started with ---------------------------------------------------


def test_resume_refuses_a_setting_that_differs_from_the_stored_one(pretrained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sws"
    common = ["compress", "sws", "--from", str(pretrained), "--out", str(out), "--quiet"]
    monkeypatch.setattr(compress_stage, "fit", _stop_after(0))  # a run directory, no checkpoint: cheap
    assert main([*common, "--epochs", "4"]) == 130
    capsys.readouterr()
    assert main([*common, "--resume", "--tau", "5"]) == 2
    expected = "--resume with --tau 5: the run was started with tau = 0.03; start a new run to change it"
    assert _one_line(capsys) == f"weightshare compress sws: error: {expected}"
    assert main([*common, "--resume", "--epochs", "8"]) == 2
    assert "--resume with --epochs 8: the run was started with epochs = 4" in _one_line(capsys)
    (tmp_path / "c.toml").write_text("[finish]\nremove_dead = false\n")
    assert main([*common, "--resume", "--config", str(tmp_path / "c.toml")]) == 2
    expected = f"--resume with remove_dead = false (config file {tmp_path / 'c.toml'}): the run was started with"
    assert f"{expected} remove_dead = true" in _one_line(capsys)
    assert main([*common, "--resume", "--preset", "digits", "--epochs", "4", "--tau", "0.03"]) == 130  # the same
    assert "interrupted before epoch 1 of 4 ended" in _one_line(capsys)


def test_pretrain_resume_refuses_a_changed_setting(pretrained, capsys):
    argv = ["pretrain", "--preset", "digits", "--out", str(pretrained), "--quiet", "--resume"]
    assert main([*argv, "--epochs", "9"]) == 2
    expected = "--resume with --epochs 9: the run was started with epochs = 6; start a new run to change it"
    assert _one_line(capsys) == f"weightshare pretrain: error: {expected}"
    assert main([*argv, "--epochs", "6"]) == 0  # finished: nothing more to train


# --- runs and files of the wrong kind ---------------------------------------------------------------------


def test_compress_from_a_run_of_another_kind(compressed, pretrained, tmp_path, capsys):
    argv = ["compress", "sws", "--out", str(tmp_path / "x"), "--quiet", "--from"]
    assert main([*argv, str(compressed[0])]) == 2
    line = _one_line(capsys)
    assert f"{compressed[0]} is a compress run (sws), not a pretrain run" in line and "weightshare pretrain" in line
    assert main([*argv, str(tmp_path)]) == 1
    expected = (
        f"{tmp_path} is not a run directory (no config.json); expected a run directory made by weightshare pretrain"
    )
    assert _one_line(capsys) == f"weightshare compress sws: error: {expected}"
    assert not (tmp_path / "x").exists()


def test_resume_refuses_a_run_of_another_command_or_method(compressed, pretrained, capsys):
    assert main(["pretrain", "--out", str(compressed[0]), "--resume"]) == 2
    expected = f"{compressed[0]} is a compress run (sws), not a pretrain run: pretrain --resume continues a run"
    assert _one_line(capsys).startswith(f"weightshare pretrain: error: {expected}")
    assert main(["compress", "dc", "--from", str(pretrained), "--out", str(compressed[0]), "--resume"]) == 2
    expected = f"{compressed[0]} is a sws run, not a dc run: continue it with weightshare compress sws --resume"
    assert _one_line(capsys) == f"weightshare compress dc: error: {expected}"


def test_a_run_that_records_an_unknown_method(compressed, pretrained, tmp_path, capsys):
    config = json.loads((compressed[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "method": "xyz"}))
    assert main(["compress", "sws", "--from", str(pretrained), "--out", str(tmp_path), "--resume"]) == 1
    expected = "records method 'xyz', which this version of weightshare does not know (known: sws, dc, pwfn, admm)"
    assert _one_line(capsys) == f"weightshare compress sws: error: {tmp_path / 'config.json'} {expected}"


def test_evaluate_a_compress_run_directory_evaluates_its_file(compressed, tmp_path, capsys):
    out = compressed[0]
    assert main(["evaluate", str(out)]) == 0
    decoded = json.loads((out / "report.json").read_text())["errors"]["decoded"]["test_error"]
    assert f"test error {decoded:.2f}%" in capsys.readouterr().out
    shutil.copy(out / "model.wsz", tmp_path / "alone.wsz")  # outside a run: the model the file records
    assert main(["evaluate", str(tmp_path / "alone.wsz"), "--dataset", "digits"]) == 0
    assert f"test error {decoded:.2f}%" in capsys.readouterr().out
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(out / "config.json", unfinished)
    assert main(["evaluate", str(unfinished)]) == 1
    line = _one_line(capsys)
    assert "is a compress run (sws) that has not finished (no model.wsz); continue it with" in line
    assert f"--out {unfinished} --resume" in line


def test_evaluate_with_a_model_the_file_was_not_made_for(tmp_path, capsys):
    lenet = build_model("lenet300").state_dict()
    save_compressed(QuantizedModel([torch.zeros(1)], {}, lenet, {"model": "lenet300"}), tmp_path / "l.wsz")
    assert main(["evaluate", str(tmp_path / "l.wsz"), "--model", "mlp", "--dataset", "digits"]) == 2
    line = _one_line(capsys)
    expected = "file made for lenet300 does not match the model mlp: net.0.weight: shape (300, 784) in the file"
    assert line.startswith(f"weightshare evaluate: error: {tmp_path / 'l.wsz'}: {expected}, (128, 64) in the model")
    save_tensors(tmp_path / "l.safetensors", lenet)
    assert main(["evaluate", str(tmp_path / "l.safetensors"), "--model", "lenet300", "--dataset", "digits"]) == 2
    assert "model lenet300 does not take digits inputs of shape (1, 8, 8)" in _one_line(capsys)


# --- collapsed results and bugs ---------------------------------------------------------------------------


def test_a_collapsed_result_is_reported_as_a_failure(pretrained, tmp_path, capsys):
    out = tmp_path / "sws"
    assert main(["compress", "sws", "--from", str(pretrained), "--out", str(out), "--epochs", "1", "--quiet"]) == 3
    printed = capsys.readouterr()
    assert "smaller than float32" in printed.out  # the figures are there, and so is why they mean nothing
    prog = "weightshare compress sws"
    lines = printed.err.splitlines()
    assert lines[0] == f"{prog}: warning: the result collapsed: every one of the 17,024 covered weights is zero"
    assert lines[1].startswith(f"{prog}: warning: the result collapsed: its decoded test error ")
    assert "% is at chance level (90% for 10 classes)" in lines[1]
    assert "is far above the retrained" in lines[2] and "have not settled on the mixture components" in lines[2]
    assert lines[3:] == [f"{prog}: error: no usable compression; {out} keeps its files for inspection"]
    report = json.loads((out / "report.json").read_text())
    assert [w["kind"] for w in report["warnings"]] == ["collapsed", "collapsed", "assignment_gap"]
    assert (out / "model.wsz").is_file()


def test_a_large_loss_in_the_assignment_is_warned_about_with_the_method_hint(pretrained, tmp_path, capsys):
    out = tmp_path / "sws"
    argv = ["compress", "sws", "--from", str(pretrained), "--out", str(out), "--epochs", "3", "--init-sigma", "0.05"]
    assert main([*argv, "--quiet"]) == 0
    line = _one_line(capsys)
    assert line.startswith("weightshare compress sws: warning: the decoded test error ")
    assert line.endswith(SoftWeightSharing.collapse_hint())
    assert DeepCompression.collapse_hint() == Method.collapse_hint() != SoftWeightSharing.collapse_hint()


def test_a_bug_keeps_its_traceback(pretrained, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("dc")

    monkeypatch.setattr(evaluate_stage, "evaluate_checkpoint", broken)
    with pytest.raises(KeyError, match="dc"):
        main(["evaluate", str(pretrained)])
