"""``torchrun --standalone --nproc_per_node=2 -m weightshare compress ...`` on digits, end to end, and its --resume."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from weightshare.pipeline.evaluate import evaluate_checkpoint

# Rank 0 SIGKILLs itself just after its first checkpoint lands (torchrun then stops rank 1): a run cut off
# after epoch 1, as a crash leaves it.
KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if str(dst).endswith(os.path.join("checkpoints", "last.safetensors")):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from weightshare.cli import main
sys.exit(main())
"""


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def ranked(pretrained, sws_quick, tmp_path_factory, run_python) -> tuple[Path, subprocess.CompletedProcess]:
    """The digits compression of the ``compressed`` fixture, by two ranks."""
    out = tmp_path_factory.mktemp("torchrun") / "sws"
    args = ["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, "--quiet"]
    done = run_python("-m", "weightshare", *args, cwd=out.parent, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.mark.slow
def test_two_ranks_write_one_run_directory(ranked, compressed):
    out, done = ranked
    single, printed = compressed
    assert _files(out) == _files(single)  # the same files as one process writes: no second set, no rank's own
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["phase"] == "retrain"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # one writer: each epoch once
    assert done.stdout.count("model.wsz:") == 1 == printed.count("model.wsz:")  # only rank 0 reports


@pytest.mark.slow
def test_two_ranks_decode_to_what_one_process_does(ranked, compressed):
    out, _ = ranked
    report = json.loads((out / "report.json").read_text())
    single = json.loads((compressed[0] / "report.json").read_text())
    assert report["decoded_equals_quantized"] is True
    decoded = report["errors"]["decoded"]["test_error"]
    assert evaluate_checkpoint(out / "model.wsz")["test_error"] == pytest.approx(decoded)
    # The same recipe: the two ranks see the same batches but for one padded repeat per epoch, and
    # float32 sums in another order, so the results agree closely but not bit for bit.
    assert abs(decoded - single["errors"]["decoded"]["test_error"]) <= 2.0
    assert abs(report["totals"]["nnz"] - single["totals"]["nnz"]) <= 0.02 * single["totals"]["weights"]


@pytest.mark.slow
def test_resume_under_torchrun_ends_with_the_same_file(ranked, pretrained, sws_quick, tmp_path, run_python):
    out = tmp_path / "sws"
    args = ["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, "--quiet"]
    child = tmp_path / "child.py"
    child.write_text(KILL_AFTER_FIRST_CHECKPOINT)
    killed = run_python(str(child), *args, cwd=tmp_path, ranks=2)
    assert killed.returncode != 0 and not (out / "model.wsz").exists()
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["phase"] == "retrain"]
    assert len(rows) == 1
    resumed = run_python("-m", "weightshare", *args, "--resume", cwd=tmp_path, ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "model.wsz").read_bytes() == (ranked[0] / "model.wsz").read_bytes()
