"""The Method contract, for every registered method: build -> 1 epoch on digits -> finalize -> file -> decode.

Whatever a method does inside, what it hands the pipeline must hold the common result's
invariants, and the file must give back exactly that result.
"""

from __future__ import annotations

import pytest
import torch

from weightshare.codec import load_compressed, save_compressed
from weightshare.methods import METHODS, build_method
from weightshare.methods.base import Method, MethodConfig
from weightshare.models.architectures import build_model
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit

# One epoch of each method's digits recipe: the schedules of rounds must fit in it.
ONE_EPOCH = {
    "sws": {"train": {"epochs": 1}},
    "dc": {"train": {"epochs": 1}, "dc": {"prune_rounds": 1, "prune_epochs": 1, "quant_epochs": 0}},
    "pwfn": {"train": {"epochs": 1}, "pwfn": {"schedule": [1.0], "first_epochs": 1}},
    "admm": {"train": {"epochs": 1}, "admm": {"finetune_epochs": 0}},
}


def test_every_registered_method_is_covered_here():
    assert sorted(cls.method for cls in METHODS) == sorted(ONE_EPOCH)


@pytest.fixture(scope="module")
def pretrained(digits):
    torch.manual_seed(0)
    model = build_model("mlp", digits.num_classes)
    fit(model, digits, TrainConfig(epochs=3, lr=2e-3), batch_size=32, progress=False)
    return model.state_dict()


def _recipe(name: str) -> MethodConfig:
    cls = next(c for c in METHODS if c.method == name)
    return cls.preset("digits").updated(ONE_EPOCH[name])


@pytest.mark.parametrize("name", sorted(ONE_EPOCH))
def test_method_contract(name, digits, pretrained, tmp_path):
    config = _recipe(name)
    model = build_model("mlp", digits.num_classes)
    model.load_state_dict(pretrained)
    torch.manual_seed(0)
    method = build_method(config, model, len(digits.train))
    assert isinstance(method, Method) and method.name == name
    method.check_train(config.train)
    fit(model, digits, config.train, method=method, batch_size=64, progress=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    covered = method.covered_tensors()
    assert covered and set(covered) <= set(state)
    qmodel = method.finalize(model)

    # The common result: entry 0 of every codebook is exactly 0.0; indices point into their codebook;
    # a tensor takes no more distinct values than its codebook has entries.
    for codebook in qmodel.codebooks:
        assert codebook.dtype == torch.float32 and codebook[0].item() == 0.0 and not torch.signbit(codebook[0])
    for tensor_name, qt in qmodel.quantized.items():
        size = qmodel.codebooks[qt.codebook].numel()
        assert int(qt.indices.min()) >= 0 and int(qt.indices.max()) < size
        assert torch.unique(qmodel.dequantize(tensor_name)).numel() <= size
    assert set(qmodel.quantized) == set(covered)
    # What the method does not cover travels unchanged, exactly as the model holds it.
    for tensor_name, tensor in qmodel.dense.items():
        assert torch.equal(tensor, state[tensor_name]), tensor_name
    assert set(qmodel.quantized) | set(qmodel.dense) == set(state)

    # The file gives back exactly this result, and the decoded network is the quantized one.
    path = tmp_path / f"{name}.wsz"
    assert save_compressed(qmodel, path) == path.stat().st_size
    decoded = load_compressed(path)
    net = decoded.load_into(build_model("mlp", digits.num_classes))
    for key, tensor in net.state_dict().items():
        want = qmodel.dequantize(key) if key in qmodel.quantized else qmodel.dense[key]
        assert torch.equal(tensor, want), key
