import pytest
import torch

from weightshare.models.architectures import MODELS, build_model, count_parameters


@pytest.mark.parametrize(
    ("name", "params", "weights", "shape"),
    [
        ("lenet300", 266_610, 266_200, (1, 28, 28)),
        ("lenet5", 431_080, 430_500, (1, 28, 28)),
        ("tutorialnet", 642_460, 641_875, (1, 28, 28)),
        ("wrn16_4", 2_748_890, 2_745_264, (3, 32, 32)),
        ("mlp", 17_226, 17_024, (1, 8, 8)),
        ("vit", 139_018, 132_736, (1, 28, 28)),
    ],
)
def test_parameter_counts_and_output(name, params, weights, shape):
    model = build_model(name)
    assert count_parameters(model) == params
    conv_fc = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert conv_fc == weights
    assert model.eval()(torch.zeros(2, *shape)).shape == (2, 10)


def test_lenet5_has_no_relu_after_convolutions():
    model = build_model("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    conv_out = torch.nn.functional.max_pool2d(model.conv1(x), 2)
    assert (conv_out < 0).any()  # negative activations pass on to conv2, as in the Caffe prototxt


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'vgg'; known: " + ", ".join(MODELS)):
        build_model("vgg")


def test_cifar100_head():
    assert build_model("wrn16_4", 100).fc.out_features == 100
