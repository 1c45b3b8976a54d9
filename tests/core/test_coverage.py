import pytest
import torch
from torch import nn

from weightshare.core.coverage import CoverageRule, covered_parameters, shared_names
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


class TiedLanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attention = nn.MultiheadAttention(16, 2)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight


def test_default_covers_embeddings_and_attention_projections():
    names = list(covered_parameters(TiedLanguageModel()))
    assert names == ["embed.weight", "attention.in_proj_weight", "attention.out_proj.weight"]
    separate = nn.MultiheadAttention(16, 2, kdim=8, vdim=4)
    assert list(covered_parameters(separate)) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    with_biases = covered_parameters(nn.MultiheadAttention(16, 2), include_biases=True)
    assert list(with_biases) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]


def test_a_shared_parameter_is_covered_once_under_its_first_name():
    model = TiedLanguageModel()
    covered = covered_parameters(model, pattern=r"^head\.")  # selected under its second name
    assert list(covered) == ["embed.weight"] and covered["embed.weight"] is model.head.weight
    assert shared_names(model) == {"head.weight": "embed.weight"}
    assert "head.weight" not in dict(model.named_parameters())


def test_every_entry_has_a_reason():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.Linear(2, 2))
    model.register_parameter("scale", nn.Parameter(torch.ones(1)))
    coverage = CoverageRule(skip_last=True).select(model)
    assert list(coverage.covered) == ["0.weight", "3.weight"]
    assert list(coverage.reasons) == list(model.state_dict())
    assert coverage.reasons == {
        "scale": "Sequential is not a covered module type",
        "0.weight": "covered",
        "0.bias": "bias of a covered layer (include_biases is off)",
        "1.weight": "BatchNorm2d is not a covered module type",
        "1.bias": "BatchNorm2d is not a covered module type",
        "1.running_mean": "buffer: stored exactly as it is",
        "1.running_var": "buffer: stored exactly as it is",
        "1.num_batches_tracked": "buffer: stored exactly as it is",
        "3.weight": "covered",
        "3.bias": "bias of a covered layer (include_biases is off)",
        "4.weight": "the last covered layer, left dense (skip_last)",
        "4.bias": "bias of a covered layer (include_biases is off)",
    }
    tied = CoverageRule(pattern="head").select(TiedLanguageModel())
    assert tied.reasons["head.weight"] == "the same tensor as 'embed.weight', covered once under that name"
    assert tied.reasons["attention.in_proj_weight"] == "does not match the pattern 'head'"
    assert "head.weight" not in tied.dense and "norm.weight" in tied.dense


def test_exclude_takes_tensors_out():
    model = TiedLanguageModel()
    assert list(covered_parameters(model, exclude="attention")) == ["embed.weight"]
    assert CoverageRule(exclude="out_proj").select(model).reasons["attention.out_proj.weight"] == (
        "matches the exclude pattern 'out_proj'"
    )


def test_impossible_requests_name_the_module_and_tensor():
    model = TiedLanguageModel()
    with pytest.raises(CoverageError, match="'head.weight' and 'embed.weight' are the same tensor, covered as"):
        covered_parameters(model, exclude="^embed")
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(
        CoverageError, match="pattern '1' matches buffer '1.running_mean' of module '1' \\(BatchNorm1d\\)"
    ):
        covered_parameters(bn, pattern="1")
    norm = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2, elementwise_affine=False))
    with pytest.raises(CoverageError, match="module '1' \\(LayerNorm\\) is of a covered type but has no weight"):
        covered_parameters(norm, module_types=[nn.Linear, nn.LayerNorm])
    with pytest.raises(CoverageError, match="'0.weight' of module '0' \\(LazyLinear\\) is not initialised yet"):
        covered_parameters(nn.Sequential(nn.LazyLinear(2)))
    ints = nn.Linear(2, 2)
    ints.register_parameter("steps", nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False))
    with pytest.raises(CoverageError, match="'steps' of module '' \\(Linear\\) is torch.int64"):
        covered_parameters(ints, pattern="steps")
    with pytest.raises(CoverageError, match="'\\(' is not a regular expression"):
        covered_parameters(ints, pattern="(")
