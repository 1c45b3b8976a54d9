"""--format dense: the decoded model as plain float32 safetensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from weightshare.codec import save_compressed
from weightshare.core.errors import FormatError, MismatchError
from weightshare.export.dense import export_dense
from weightshare.models.architectures import build_model


def test_dense_file_is_the_decoded_state_dict(tmp_path, quantize):
    model = build_model("mlp")
    qmodel = quantize(model, [9])
    save_compressed(qmodel, tmp_path / "m.wsz")
    nbytes = export_dense(tmp_path / "m.wsz", tmp_path / "d.safetensors")
    assert nbytes == (tmp_path / "d.safetensors").stat().st_size
    loaded, expected = load_file(str(tmp_path / "d.safetensors")), qmodel.to_state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, expected[name]), name
    params = qmodel.num_quantized + qmodel.num_dense
    assert 4 * params < nbytes < 4 * params + 2_000  # float32 plus safetensors' JSON header


def test_with_a_model_the_file_loads_strictly(tmp_path, quantize, batchnorm_net):
    qmodel = quantize(batchnorm_net, [5])
    export_dense(qmodel, tmp_path / "d.safetensors", batchnorm_net)
    loaded = load_file(str(tmp_path / "d.safetensors"))
    assert loaded["bn.num_batches_tracked"].item() == 7  # the model's buffer, not a weight of the file
    fresh = type(batchnorm_net)()
    fresh.load_state_dict(loaded, strict=True)
    assert torch.equal(fresh.conv.weight, qmodel.dequantize("conv.weight"))


def test_mismatch_and_corruption_write_nothing(tmp_path, quantize):
    qmodel = quantize(build_model("mlp"), [3])
    out = tmp_path / "d.safetensors"
    with pytest.raises(MismatchError, match=r"does not match the model LeNet5"):
        export_dense(qmodel, out, build_model("lenet5"))
    (tmp_path / "bad.wsz").write_bytes(b"WSZ\x1a\x01\x00" + b"\x00" * 20)
    with pytest.raises(FormatError, match=r"bad\.wsz: "):
        export_dense(tmp_path / "bad.wsz", out)
    assert not out.exists()
