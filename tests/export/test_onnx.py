"""ONNX export: covered weights stored as indices + codebooks, onnxruntime computes the decoded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightshare.codec import save_compressed
from weightshare.core.errors import FormatError, MismatchError
from weightshare.data.config import DataConfig
from weightshare.data.datasets import load_data
from weightshare.export.onnx import OPSET, compare_outputs, export_onnx, index_type
from weightshare.models.architectures import build_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5  # docs/export.md#onnx: onnxruntime's outputs equal the decoded PyTorch model's within this
ELEMENT = onnx.TensorProto


@pytest.fixture
def mnist_test(mnist_dir) -> torch.Tensor:
    """The first 300 MNIST test images, scaled as the LeNet presets read them."""
    data = load_data(DataConfig(dataset="mnist", data_dir=str(mnist_dir), normalize="pixels", val_size=0))
    return data.test.x[:300]


def _export(tmp_path, qmodel, model, example):
    path = tmp_path / "model.onnx"
    nbytes = export_onnx(qmodel, model, example, path)
    assert nbytes == path.stat().st_size
    return path, onnx.load(str(path))


def _check_graph(proto, qmodel) -> None:
    """Each covered weight: no float initializer of its name, an index initializer of the type its codebook
    needs, and Cast -> Gather from its codebook producing exactly its name."""
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == OPSET
    inits = {t.name: t for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    for name, qt in qmodel.quantized.items():
        assert name not in inits, name
        size = qmodel.codebooks[qt.codebook].numel()
        indices = inits[f"{name}:indices"]
        assert indices.data_type == getattr(ELEMENT, index_type(size)) and list(indices.dims) == list(qt.shape)
        stored = onnx.numpy_helper.to_array(indices).astype(np.int64)
        assert np.array_equal(stored, qt.indices.numpy()), name
        gather = producers[name]
        assert gather.op_type == "Gather" and gather.input[0] == f"codebook:{qt.codebook}"
        assert producers[gather.input[1]].op_type == "Cast" and producers[gather.input[1]].input[0] == indices.name
        codebook = onnx.numpy_helper.to_array(inits[f"codebook:{qt.codebook}"])
        assert np.array_equal(codebook, qmodel.codebooks[qt.codebook].numpy())
    for name, tensor in qmodel.dense.items():  # every other tensor an ordinary initializer
        if not tensor.is_floating_point():
            assert name not in inits, name  # num_batches_tracked: the file keeps it, inference never reads it
            continue
        assert np.array_equal(onnx.numpy_helper.to_array(inits[name]), tensor.numpy()), name


def test_lenets_on_mnist(tmp_path, quantize, mnist_test):
    # LeNet-300-100 with one 16-entry codebook (UINT4); LeNet-5 with one per layer, UINT8 and UINT16 among them
    for name, sizes, kinds in [("lenet300", [16], {"UINT4"}), ("lenet5", [200, 16, 9, 300], {"UINT8", "UINT16"})]:
        torch.manual_seed(0)
        model = build_model(name).eval()
        qmodel = quantize(model, sizes, {"model": name})
        path, proto = _export(tmp_path, qmodel, model, mnist_test[:1])
        _check_graph(proto, qmodel)
        stored = {t.data_type for t in proto.graph.initializer if t.name.endswith(":indices")}
        assert {getattr(ELEMENT, kind) for kind in kinds} <= stored
        decoded = qmodel.load_into(build_model(name))
        assert compare_outputs(path, decoded, mnist_test).relative <= TOLERANCE
        if name == "lenet300":  # 4-bit indices: 266,200 weights at half a byte + 410 float32 biases + the graph
            assert path.stat().st_size < 0.5 * 266_200 + 4 * 410 + 2_000


def test_the_vision_transformer(tmp_path, quantize):
    """Attention, LayerNorm, GELU, the class token and the position embedding export too (one 16-value codebook)."""
    torch.manual_seed(0)
    model = build_model("vit").eval()
    with torch.no_grad():  # trained values: the exporter merges initializers that are equal, as fresh LayerNorms are
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    qmodel = quantize(model, [16], {"model": "vit"})
    images = torch.rand(20, 1, 28, 28)
    path, proto = _export(tmp_path, qmodel, model, images[:1])
    _check_graph(proto, qmodel)
    assert compare_outputs(path, qmodel.load_into(build_model("vit")).eval(), images).relative <= TOLERANCE


def test_mlp_and_batchnorm_on_digits(tmp_path, quantize, digits, batchnorm_net):
    mlp = build_model("mlp").eval()
    cases = [(mlp, [5], digits.test.x), (batchnorm_net, [70000], digits.test.x.reshape(-1, 1, 8, 8))]
    for model, sizes, inputs in cases:  # 70,000 entries: INT32 indices, beyond UINT16
        qmodel = quantize(model, sizes)
        path, proto = _export(tmp_path, qmodel, model, inputs[:1])
        _check_graph(proto, qmodel)
        decoded = qmodel.load_into(type(model)() if model is batchnorm_net else build_model("mlp")).eval()
        assert compare_outputs(path, decoded, inputs).relative <= TOLERANCE


def test_batchnorm_statistics_stay_ordinary_initializers(tmp_path, quantize, batchnorm_net):
    qmodel = quantize(batchnorm_net, [300])  # UINT16 indices
    _, proto = _export(tmp_path, qmodel, batchnorm_net, torch.zeros(1, 1, 8, 8))
    ops = [node.op_type for node in proto.graph.node]
    assert "BatchNormalization" in ops and ops.count("Gather") == 2  # not fused into the convolution
    inits = {t.name: t for t in proto.graph.initializer}
    assert inits["conv.weight:indices"].data_type == ELEMENT.UINT16
    mean = onnx.numpy_helper.to_array(inits["bn.running_mean"])
    assert np.array_equal(mean, batchnorm_net.bn.running_mean.numpy())


def test_the_callers_model_is_not_changed(tmp_path, quantize):
    model = build_model("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quantize(model, [3])
    export_onnx(qmodel, model, torch.zeros(1, 64), tmp_path / "m.onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # not switched to eval either


def test_from_a_wsz_file_with_a_dynamic_batch(tmp_path, quantize, digits):
    model = build_model("mlp")
    qmodel = quantize(model, [17])  # 17 entries: UINT8
    save_compressed(qmodel, tmp_path / "m.wsz")
    path = tmp_path / "m.onnx"
    export_onnx(tmp_path / "m.wsz", model, digits.test.x[:1], path)
    decoded = qmodel.load_into(build_model("mlp"))
    for batch in (1, 7, 360):  # traced with one image; any batch size runs
        assert compare_outputs(path, decoded, digits.test.x[:batch], batch_size=batch).relative <= TOLERANCE


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, quantize):
    model = build_model("mlp")
    qmodel = quantize(model, [5])
    out = tmp_path / "m.onnx"
    with pytest.raises(
        MismatchError,
        match=r"does not match the model LeNet300: net\.0\.weight: shape \(128, 64\) in the file, \(300, 784\)",
    ):
        export_onnx(qmodel, build_model("lenet300"), torch.zeros(1, 784), out)
    with pytest.raises(MismatchError, match=r"MLP does not take an input of shape \(1, 784\)"):
        export_onnx(qmodel, model, torch.zeros(1, 784), out)
    save_compressed(qmodel, tmp_path / "m.wsz")
    data = bytearray((tmp_path / "m.wsz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.wsz").write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"bad\.wsz: .*checksum") as info:
        export_onnx(tmp_path / "bad.wsz", model, torch.zeros(1, 64), out)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.wsz does not exist"):
        export_onnx(tmp_path / "missing.wsz", model, torch.zeros(1, 64), out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.wsz", "m.wsz"]
