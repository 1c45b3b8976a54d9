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
