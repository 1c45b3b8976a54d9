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
