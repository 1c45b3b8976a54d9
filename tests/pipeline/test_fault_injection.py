"""Fault injection: ``weightshare compress`` killed at seeded moments and resumed ends with the same file.

A digits compression runs in a subprocess and is interrupted again and again -- SIGKILL and SIGINT at random
moments of the training, SIGKILL just before or just after the atomic replacement of a chosen file (a write
of the last epoch, final files) -- and resumed with ``--resume`` each time until it finishes. Its
``model.wsz`` must be byte-identical to that of a run never interrupted.

What a SIGKILL leaves on disk depends only on which atomic writes (temporary file, then ``os.replace``) had
completed, so killing just before / just after an ``os.replace`` into the run directory reaches the state a
kill at any moment in between leaves (a half-written temporary file is never read). The child wraps
``os.replace`` to name those writes, to record them (the uninterrupted run) and to kill itself at one of
them; random moments are drawn in the child's CPU time (a timer armed at its first checkpoint), so that
they fall in the same epoch however loaded the machine is.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import weightshare
from weightshare.cli import main

EPOCHS = 4
# The child: os.replace wrapped to name each write into the run directory ("metrics.csv@3": the metrics after
# 3 retraining epochs, "checkpoints/last.safetensors@3": the checkpoint after epoch 3, else the path), to record
# them with the CPU time (WS_RECORD), to SIGKILL itself just before / after one (WS_KILL = "before NAME"), and
# to send itself a signal DELAY CPU seconds after its first checkpoint (WS_TIMER = "SIGINT DELAY").
CHILD = """
import os, signal, sys, time
from safetensors import safe_open

out = os.path.realpath(os.environ["WS_OUT"])
record, kill = os.environ.get("WS_RECORD"), os.environ.get("WS_KILL", " ").split(" ", 1)
timer = os.environ.get("WS_TIMER")
real_replace = os.replace

def name(src, dst):
    rel = os.path.relpath(os.path.realpath(dst), out)
    if rel == os.path.join("checkpoints", "last.safetensors"):
        with safe_open(src, framework="pt") as handle:
            return f"{rel}@{int(handle.metadata()['epoch']) + 1}"
    if rel == "metrics.csv":
        with open(src) as handle:
            return f"{rel}@{sum(line.startswith('retrain,') for line in handle)}"
    return rel

def replace(src, dst, *args, **kwargs):
    global timer
    inside = os.path.realpath(dst).startswith(out + os.sep)
    written = name(src, dst) if inside else None
    if kill == ["before", written]:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if inside and record:
        with open(record, "a") as handle:
            handle.write(f"{written} {time.process_time()}\\n")
    if kill == ["after", written]:
        os.kill(os.getpid(), signal.SIGKILL)
    if timer and inside and written.startswith("checkpoints"):
        sig, delay = timer.split()
        signal.signal(signal.SIGVTALRM, lambda *_: os.kill(os.getpid(), getattr(signal, sig)))
        signal.setitimer(signal.ITIMER_VIRTUAL, max(float(delay), 1e-4))
        timer = None

os.replace = replace
# Python keeps SIGINT ignored if it started ignored (a test run from a background job): restore Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)
from weightshare.cli import main
sys.exit(main())
"""


def _run(args: list[str], out: Path, **extra: str) -> tuple[int, str]:
    src = str(Path(weightshare.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WS_OUT": str(out), **extra}
    done = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def _epochs_done(out: Path) -> int:
    """Retraining epochs in the checkpoint on disk (0 if none): where a resumed run starts."""
    from safetensors import safe_open

    path = out / "checkpoints" / "last.safetensors"
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.metadata()["epoch"]) + 1


def _same_tensors_file(a: Path, b: Path) -> bool:
    """Same tensors and metadata. Not the same bytes: safetensors writes its metadata map in a per-process
    hash order, so two uninterrupted runs already differ there (measured)."""
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())  # noqa: SIM118


def _metrics_without_timings(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory) -> Path:
    pre = tmp_path_factory.mktemp("faults") / "pre"
    assert main(["pretrain", "--preset", "digits", "--epochs", "3", "--out", str(pre), "--quiet"]) == 0
    return pre


def _compress_args(pre: Path, out: Path) -> list[str]:
    # init_sigma 0.02: after 4 epochs a quarter of the weights sit on a handful of non-zero means, so
    # model.wsz depends on the whole trajectory (from the preset's 0.25, four epochs assign every weight
    # to the zero spike and the file holds little but the biases). One thread: several processes share
    # the CI cores, and two OpenMP threads per process contend for them (20x slower per epoch, measured).
    return ["compress", "sws", "--preset", "digits", "--epochs", str(EPOCHS), "--init-sigma", "0.02"] + [
        "--threads", "1", "--from", str(pre), "--out", str(out), "--quiet",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_and_resumed_compression_writes_the_same_file(tiny_pretrained, tmp_path) -> None:
    rng = random.Random(20240601)
    ref, record = tmp_path / "ref", tmp_path / "writes.txt"
    rc, err = _run(_compress_args(tiny_pretrained, ref), ref, WS_RECORD=str(record))
    assert rc == 0, err
    writes, cpu = zip(*(line.split() for line in record.read_text().splitlines()), strict=True)
    assert writes[-1] == "summary.json" and f"checkpoints/last.safetensors@{EPOCHS}" in writes
    ckpt_cpu = [float(t) for w, t in zip(writes, cpu, strict=True) if w.startswith("checkpoints")]
    epoch_cpu = min(b - a for a, b in zip(ckpt_cpu, ckpt_cpu[1:], strict=False))  # CPU seconds of one epoch

    # 1. Killed between creating the run directory and writing its config.json: --resume either finishes
    # with the same file or refuses in one line that names the directory (this is what happens today).
    early = tmp_path / "early"
    assert _run(_compress_args(tiny_pretrained, early), early, WS_KILL="before config.json")[0] == -signal.SIGKILL
    rc, err = _run([*_compress_args(tiny_pretrained, early), "--resume"], early)
    if rc == 0:
        print("killed before config.json: resumed")
        assert (early / "model.wsz").read_bytes() == (ref / "model.wsz").read_bytes()
    else:
        print(f"killed before config.json: resume refused: {err.strip()}")
        assert rc == 1 and len(err.strip().splitlines()) == 1 and f"{early} is not a run directory" in err, err
        assert "again without --resume" in err, err
        assert _run(_compress_args(tiny_pretrained, early), early)[0] == 0  # ... and starting over works
        assert (early / "model.wsz").read_bytes() == (ref / "model.wsz").read_bytes()

    # 2. Interrupted again and again, resumed each time.
    out, events = tmp_path / "out", []

    def attempt(**extra: str) -> int:
        args = [*_compress_args(tiny_pretrained, out), *(["--resume"] if out.exists() else [])]
        rc, err = _run(args, out, **extra)
        events.append(f"{extra or 'resume'}: exit {rc}, {_epochs_done(out)} epochs checkpointed")
        assert rc in (0, -signal.SIGKILL, 130), err
        if rc == 130:  # Ctrl-C: one line saying how to continue, no traceback
            assert len(err.strip().splitlines()) == 1 and "continue with:" in err, err
        return rc

    # At random moments within the epoch after the child's first checkpoint: SIGKILL, then SIGINT
    # (KeyboardInterrupt: the usual exit of Ctrl-C).
    assert attempt(WS_TIMER=f"SIGKILL {rng.uniform(0, 0.8 * epoch_cpu)}") == -signal.SIGKILL
    assert attempt(WS_TIMER=f"SIGINT {rng.uniform(0, 0.8 * epoch_cpu)}") == 130
    # SIGKILL at seeded writes still ahead: one of the last epoch, then two of the final files.
    done = _epochs_done(out)
    assert done < EPOCHS, events
    ahead = writes[writes.index(f"checkpoints/last.safetensors@{done}") + 1 :] if done else writes
    last_epoch = [w for w in ahead if w.endswith(f"@{EPOCHS}")]
    final = [w for w in ahead if "@" not in w and w not in ("config.json", "env.json", "model_init.safetensors")]
    for point in [rng.choice(last_epoch), *sorted(rng.sample(final, 2), key=final.index)]:
        assert attempt(WS_KILL=f"{rng.choice(['before', 'after'])} {point}") == -signal.SIGKILL, events
    assert attempt() == 0, events
    print("\n".join(events))
    assert (out / "model.wsz").read_bytes() == (ref / "model.wsz").read_bytes(), events
    for name in ("quantized.safetensors", "model_final.safetensors"):
        assert _same_tensors_file(out / name, ref / name), (name, events)
    # What else the run leaves: the mixture records and the metrics rows (but their timings) are the same too.
    for name in ("mixture_final.json", "mixture_merged.json", *(f"mixture_epochs/epoch_{e:04d}.json" for e in (1, 4))):
        assert (out / name).read_text() == (ref / name).read_text(), name
    assert _metrics_without_timings(out) == _metrics_without_timings(ref)
