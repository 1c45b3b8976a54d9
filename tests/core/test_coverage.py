import pytest
from torch import nn

from weightshare.core.coverage import covered_parameters
from weightshare.core.errors import CoverageError
from weightshare.models.architectures import build_model


def test_default_covers_conv_and_linear_weights_only():
    names = list(covered_parameters(build_model("lenet5")))
    assert names == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]


def test_biases_and_skip_last():
    names = list(covered_parameters(build_model("lenet300"), include_biases=True, skip_last=True))
    assert names == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]


def test_batchnorm_is_not_covered_by_default():
    names = covered_parameters(build_model("wrn16_4"))
    assert all(".bn" not in n and not n.startswith("bn") for n in names)
    assert sum(p.numel() for p in names.values()) == 2_745_264


def test_pattern_selects_any_parameter():
    net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    assert list(covered_parameters(net, pattern=r"^1\.")) == ["1.weight", "1.bias"]


def test_a_rule_matching_nothing_is_an_error():
    with pytest.raises(CoverageError, match=r"the coverage rule \(pattern 'nope'\) matches no parameter of Sequential"):
        covered_parameters(nn.Sequential(nn.Linear(2, 2)), pattern="nope")
    with pytest.raises(CoverageError, match="module types"):
        covered_parameters(nn.Sequential(nn.LayerNorm(3)))
