"""``torchrun --standalone --nproc_per_node=2 -m weightshare compress ...`` on digits, end to end, and its --resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from weightshare.pipeline.evaluate import evaluate_checkpoint

# ``weightshare`` with os.replace (every atomic write of a file) wrapped: each write into the run directory
# is logged as "RANK PATH" to $WS_WRITES, and with $WS_KILL set the writer SIGKILLs itself just after its
# first checkpoint lands (torchrun then stops the other rank): a run cut off after epoch 1, as a crash leaves it.
CHILD = """
import os, signal, sys
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    with open(os.environ["WS_WRITES"], "a") as log:
        log.write(f"{os.environ.get('RANK')} {os.path.relpath(dst, os.environ['WS_OUT'])}\\n")
    if os.environ.get("WS_KILL") and str(dst).endswith(os.path.join("checkpoints", "last.safetensors")):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
from weightshare.cli import main
sys.exit(main())
"""


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def _compress(run_python, pretrained, sws_quick, out: Path, *extra: str, kill: bool = False):
    """``torchrun --nproc_per_node=2`` CHILD ``compress sws ...`` into ``out``; returns it and the logged writes."""
    child, writes = out.parent / "child.py", out.parent / f"{out.name}.writes"
    child.write_text(CHILD)
    args = ["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, "--quiet", *extra]
    env = {"WS_WRITES": str(writes), "WS_OUT": str(out), **({"WS_KILL": "1"} if kill else {})}
    done = run_python(str(child), *args, cwd=out.parent, ranks=2, env=env)
    logged = [line.split(" ", 1) for line in writes.read_text().splitlines()] if writes.exists() else []
    return done, [(rank, path) for rank, path in logged if not path.startswith("..")]


@pytest.fixture(scope="module")
def ranked(pretrained, sws_quick, tmp_path_factory, run_python):
    """The digits compression of the ``compressed`` fixture, by two ranks: its directory, process, writes."""
    out = tmp_path_factory.mktemp("torchrun") / "sws"
    done, writes = _compress(run_python, pretrained, sws_quick, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done, writes


@pytest.mark.slow
def test_two_ranks_write_one_run_directory(ranked, compressed):
    out, done, writes = ranked
    single, printed = compressed
    assert _files(out) == _files(single)  # the same files as one process writes: no second set, no rank's own
    assert {rank for rank, _ in writes} == {"0"}  # rank 1 wrote nothing into it
    assert {"config.json", "metrics.csv", "checkpoints/last.safetensors", "model.wsz"} <= {p for _, p in writes}
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["phase"] == "retrain"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert done.stdout.count("model.wsz:") == 1 == printed.count("model.wsz:")  # only rank 0 reports


@pytest.mark.slow
def test_two_ranks_decode_to_what_one_process_does(ranked, compressed):
    out = ranked[0]
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
    killed, writes = _compress(run_python, pretrained, sws_quick, out, kill=True)
    assert killed.returncode != 0 and not (out / "model.wsz").exists()
    assert writes[-1] == ("0", "checkpoints/last.safetensors")
    rows = [r for r in csv.DictReader((out / "metrics.csv").open()) if r["phase"] == "retrain"]
    assert len(rows) == 1
    resumed, writes = _compress(run_python, pretrained, sws_quick, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {rank for rank, _ in writes} == {"0"}  # rank 1 only read the checkpoint
    assert (out / "model.wsz").read_bytes() == (ranked[0] / "model.wsz").read_bytes()
