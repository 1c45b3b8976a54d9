"""Shared fixtures: the MNIST data directory of CI, a tiny digits bundle, a digits run and its compression."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("WEIGHTSHARE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on CI: keep torch from oversubscribing when tests run next to each other.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def mnist_dir() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"MNIST not found in {SHARED_DATA} (set WEIGHTSHARE_DATA)")
    return SHARED_DATA


@pytest.fixture
def fashion_dir() -> Path:
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST not found in {SHARED_DATA} (set WEIGHTSHARE_DATA)")
    return SHARED_DATA


@pytest.fixture
def fake_idx(monkeypatch):
    """``fake_idx(root, dataset, tamper=None)``: small random IDX files (30 training, 10 test images) with the
    official names in ``root``'s folder for ``dataset``, its MD5s patched to match them except ``tamper``'s;
    returns the arrays written."""
    import dataclasses
    import gzip
    import hashlib

    import numpy as np

    from weightshare.data import datasets as wsdata

    def write(root: Path, dataset: str, tamper: str | None = None) -> dict[str, np.ndarray]:
        spec = wsdata.IDX_DATASETS[dataset]
        folder = root / spec.folders[0]
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        arrays = {
            "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)).astype(np.uint8),
            "train-labels-idx1-ubyte": rng.integers(0, 10, 30).astype(np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)).astype(np.uint8),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10).astype(np.uint8),
        }
        md5s = {}
        for name, array in arrays.items():
            dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            raw = bytes([0, 0, 0x08, array.ndim]) + dims + array.tobytes()
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            md5s[name] = "0" * 32 if name == tamper else hashlib.md5(raw).hexdigest()
        monkeypatch.setitem(wsdata.IDX_DATASETS, dataset, dataclasses.replace(spec, md5=md5s))
        return arrays

    return write


@pytest.fixture(scope="session")
def digits():
    from weightshare.data.config import DataConfig
    from weightshare.data.datasets import load_data

    return load_data(DataConfig(dataset="digits"))


class _Interrupt(Exception):
    pass


@pytest.fixture
def resume_check(tmp_path):
    """Train once uninterrupted and once interrupted after epoch ``stop_epoch`` (0-based) then resumed
    with fresh objects (as a new process would); assert bit-equal weights; return both (model, method)."""
    from weightshare.runs.rundir import RunDir
    from weightshare.train.loop import fit

    def check(make, data, train, stop_epoch, batch_size=32):
        def run(path, resume=False, on_epoch=None):
            model, method = make()
            run_dir = RunDir.open(path) if resume else RunDir.create(path, {})
            fit(
                model,
                data,
                train,
                method=method,
                run=run_dir,
                resume=resume,
                batch_size=batch_size,
                progress=False,
                on_epoch=on_epoch,
            )
            return model, method

        def stop(epoch, model):
            if epoch == stop_epoch:
                raise _Interrupt

        whole = run(tmp_path / "whole")
        with pytest.raises(_Interrupt):
            run(tmp_path / "interrupted", on_epoch=stop)
        torch.manual_seed(123)  # a fresh process: another RNG state
        resumed = run(tmp_path / "interrupted", resume=True)
        for (name, a), b in zip(whole[0].state_dict().items(), resumed[0].state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        return whole, resumed

    return check


@pytest.fixture
def cli_compress(capsys):
    """``weightshare compress M --from SOURCE --out OUT --preset digits``; checks the run wrote
    model.wsz and that ``weightshare evaluate model.wsz`` prints the decoded error of report.json."""
    import json

    from weightshare.cli import main

    def run(method, source, out):
        assert main(["compress", method, "--from", str(source), "--out", str(out),
                     "--preset", "digits", "--quiet"]) == 0  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["method"] == method and report["decoded_equals_quantized"] is True
        assert report["file"]["bytes"] == (out / "model.wsz").stat().st_size
        capsys.readouterr()
        assert main(["evaluate", str(out / "model.wsz")]) == 0
        assert f"test error {report['errors']['decoded']['test_error']:.2f}%" in capsys.readouterr().out
        return report

    return run


@pytest.fixture
def cli_refuses(capsys):
    """``weightshare compress M --from SOURCE --out OUT --preset digits *EXTRA`` must exit 2
    before creating OUT; returns what it printed on stderr."""
    from weightshare.cli import main

    def run(method, source, out, *extra):
        args = ["compress", method, "--from", str(source), "--out", str(out), "--preset", "digits"]
        assert main([*args, *extra, "--quiet"]) == 2
        assert not out.exists()
        return capsys.readouterr().err

    return run


# Without the digits preset's distillation and 4-bit biases: the plain method's result, which the tests of the
# file, the report and the finishing stages take apart (the preset as shipped: tests/test_cli.py and
# tests/methods/test_configs.py).
_SWS_QUICK = ["--epochs", "3", "--assign", "ml", "--kd-temp", "0", "--dense-param-bits", "0"]


@pytest.fixture(scope="session")
def sws_quick() -> list[str]:
    """Flags for soft weight-sharing in three digits epochs. The weights have not settled on the components
    so soon, so the paper's MAP assignment would put all of them on the zero spike (a collapse, exit code 3);
    the ML assignment keeps a working network."""
    return list(_SWS_QUICK)


@pytest.fixture(scope="session")
def pretrained_digits(tmp_path_factory):
    """``weightshare pretrain --preset digits --epochs 12``: the run Deep Compression and PWFN start from."""
    from weightshare.cli import main

    out = tmp_path_factory.mktemp("methods") / "A"
    assert main(["pretrain", "--preset", "digits", "--out", str(out), "--epochs", "12", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """``weightshare pretrain --preset digits --epochs 6``: a pretraining run directory."""
    from weightshare.cli import main

    out = tmp_path_factory.mktemp("cli") / "pre"
    assert main(["pretrain", "--preset", "digits", "--epochs", "6", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def compressed(pretrained, sws_quick, tmp_path_factory):
    """``weightshare compress sws --from PRETRAINED --out OUT`` + ``sws_quick``: (OUT, what it printed)."""
    from weightshare.cli import main

    out = tmp_path_factory.mktemp("cli") / "sws"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compress", "sws", "--from", str(pretrained), "--out", str(out), *sws_quick, "--quiet"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def run_python():
    """``run_python(*ARGS, cwd=DIR)``: ``python ARGS`` in a subprocess importing this checkout's weightshare, one
    torch thread per process (torchrun and Lightning's DDP start several); returns the finished process.
    ``ranks=N``: ``torchrun --standalone --nproc_per_node=N ARGS`` instead; ``env``: more variables."""
    import subprocess
    import sys

    import weightshare

    base = {**os.environ, "PYTHONPATH": str(Path(weightshare.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}

    def run(*args: str, cwd: Path, ranks: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks else []
        command = [sys.executable, *torchrun, *args]
        every = {**base, **(env or {})}
        return subprocess.run(command, cwd=cwd, env=every, capture_output=True, text=True, timeout=300)

    return run
