"""The README's Python examples run as written, so the docs stay true."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "bytes" in printed
    qmodel = namespace["qmodel"]
    assert qmodel.codebooks[0][0].item() == 0.0
    assert 0 < qmodel.nnz < 0.5 * qmodel.num_quantized  # soft weight-sharing pruned most weights
    assert qmodel.unique_values() <= 17
