"""The README's Python examples run as written, so the docs stay true."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
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
