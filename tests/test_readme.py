"""The README's Python examples run as written, so the docs stay true."""

import json
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# The Lightning example starts a second process (strategy="ddp") from its own command: it runs as a script.
LIGHTNING = [b for b in BLOCKS if "WeightshareCallback" in b]


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = [b for b in BLOCKS if b not in LIGHTNING]
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    wsz = tmp_path / "digits.wsz"  # not the README's shared /tmp path: a concurrent run could overwrite it
    for block in blocks:
        exec(compile(block.replace('"/tmp/digits.wsz"', repr(str(wsz))), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "bytes" in printed
    qmodel = namespace["qmodel"]
    assert qmodel.codebooks[0][0].item() == 0.0
    assert 0 < qmodel.nnz < 0.5 * qmodel.num_quantized  # soft weight-sharing pruned most weights
    assert qmodel.unique_values() <= 17
    # The file round trip is lossless: the model loaded from it holds exactly the quantized weights
    # (codebook values at the indices, the dense tensors as they were), tensor by tensor.
    assert namespace["nbytes"] == wsz.stat().st_size
    expected, restored = qmodel.to_state_dict(), namespace["restored"].state_dict()
    assert restored.keys() == expected.keys()
    for name, tensor in restored.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    # "Export for deployment": the ten-line loader put the quantized weights into the trained model
    assert (tmp_path / "digits-codebooks.safetensors").is_file()
    loaded = namespace["model"].state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())

    # Every method in the same own loop (measured from the README's seed: decoded 2.78% DC, 3.33% ADMM,
    # 2.50% PWFN, from 2.78% pretrained; 30.0%, 11.5% and 80.0% non-zero).
    pretrained_error = namespace["evaluate"](_mlp_with(namespace, namespace["pretrained"]), namespace["data"].test)
    for name, nonzero in (("dc", (0.28, 0.32)), ("admm", (0.0, 0.12)), ("pwfn", (0.5, 1.0))):
        q = namespace[f"{name}_q"]
        assert nonzero[0] <= q.nnz / q.num_quantized <= nonzero[1], name
        assert f"{name}: {(tmp_path / f'{name}.wsz').stat().st_size} bytes" in printed
        decoded = namespace["load_compressed"](tmp_path / f"{name}.wsz").load_into(_mlp_with(namespace, None))
        for key, tensor in decoded.state_dict().items():
            assert torch.equal(tensor, q.to_state_dict()[key]), (name, key)
        error = namespace["evaluate"](decoded, namespace["data"].test)["error"]
        assert error <= pretrained_error["error"] + 2.0, (name, error)


def _mlp_with(namespace: dict, state: dict | None) -> torch.nn.Module:
    net = namespace["build_model"]("mlp")
    if state is not None:
        net.load_state_dict(state)
    return net


def test_readme_ten_line_loader_gives_the_quantized_weights(tmp_path, monkeypatch):
    """The loader of "Export for deployment" (safetensors and torch only) reads the exported layout exactly."""
    from weightshare import QuantizedModel, QuantizedTensor, export_safetensors

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    loader = next(b for b in blocks if "def load_codebook_safetensors" in b)
    assert "weightshare" not in loader.replace('f.metadata()["weightshare"]', "")  # needs only safetensors, torch
    lines = loader.split("def load_codebook_safetensors")[1].split("return state")[0].strip().splitlines()
    assert len(lines) <= 10
    gen = torch.Generator().manual_seed(0)
    codebooks = [torch.cat([torch.zeros(1), torch.randn(k - 1, generator=gen)]) for k in (2, 5, 17, 300)]
    shapes = [(3, 7), (4, 1, 3, 3), (5, 11), (2, 13)]  # 1, 3, 5 and 9 bits per index
    quantized = {f"l{i}.weight": QuantizedTensor(torch.randint(0, cb.numel(), s, generator=gen), i)
                 for i, (cb, s) in enumerate(zip(codebooks, shapes, strict=True))}  # fmt: skip
    qmodel = QuantizedModel(codebooks, quantized, {"l0.bias": torch.randn(3, generator=gen)})
    monkeypatch.chdir(tmp_path)
    export_safetensors(qmodel, "q.safetensors")
    namespace: dict = {}
    exec(compile(loader.split("\nmodel.load_state_dict")[0], str(README), "exec"), namespace)
    loaded, expected = namespace["load_codebook_safetensors"]("q.safetensors"), qmodel.to_state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, expected[name]), name


@pytest.mark.slow
def test_readme_lightning_example_runs_on_two_processes(tmp_path, run_python):
    pytest.importorskip("lightning")
    from weightshare import load_compressed

    assert len(LIGHTNING) == 1
    script = tmp_path / "example.py"
    script.write_text(LIGHTNING[0])
    done = run_python(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "lightning-dc"
    report = json.loads((out / "report.json").read_text())
    qmodel = load_compressed(out / "model.wsz")
    nonzero = qmodel.nnz / qmodel.num_quantized
    assert done.stdout.count(" bytes, ") == 1  # printed by rank 0 only
    assert f"{report['file']['bytes']} bytes, {nonzero:.1%} non-zero" in done.stdout
    assert abs(nonzero - 0.3) < 0.01  # the preset keeps 30% of every layer
    assert max(len(cb) for cb in qmodel.codebooks) <= 17  # 0 and at most 2^4 shared values per layer
