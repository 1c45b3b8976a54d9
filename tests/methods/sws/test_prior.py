"""MixturePrior: parametrisation, loss, merging, assignment, quantisation, config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightshare.methods.sws.prior import MergedMixture, MixtureConfig, MixturePrior, assign_components, merge_mixture


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_layout_and_init() -> None:
    w = [torch.linspace(-0.4, 0.8, 50)]
    prior = MixturePrior(w, MixtureConfig(num_components=5))
    assert prior.all_means().tolist()[0] == 0.0
    assert torch.allclose(prior.means, torch.linspace(-0.4, 0.8, 4))
    assert torch.allclose(prior.sigmas(), torch.full((5,), 0.25))
    pis = prior.pis()
    assert pis[0].item() == pytest.approx(0.999) and torch.allclose(pis[1:], torch.full((4,), 0.001 / 4))
    fixed = MixturePrior(w, MixtureConfig(num_components=4, init_means="fixed"))
    assert torch.allclose(fixed.means, torch.tensor([-0.6, 0.0, 0.6]))
    assert {n for n, _ in prior.named_parameters()} == {"means", "log_precisions", "mixing_logits"}


@pytest.mark.parametrize("learn_pi0", [False, True])
def test_complexity_loss_fast_matches_naive_float64(learn_pi0: bool) -> None:
    net = _net()
    prior = MixturePrior.from_model(net, num_components=6, learn_pi0=learn_pi0, pi0=0.9)
    with torch.no_grad():
        prior.means.add_(torch.randn(5) * 0.05)
        prior.log_precisions.add_(torch.randn(6))
        prior.mixing_logits.add_(torch.randn(5))
    weights = [net[0].weight, net[2].weight]
    grads = {}
    for mode, model_prior in (("naive", prior.double()), ("fast", prior)):
        params = [p for _, p in sorted(model_prior.named_parameters())]
        ws = [w.detach().to(params[0].dtype).requires_grad_() for w in weights]
        loss = model_prior.complexity_loss(ws, mode=mode)
        grads[mode] = [float(loss.detach()), *torch.autograd.grad(loss, ws + params)]
        model_prior.float()
    assert grads["fast"][0] == pytest.approx(grads["naive"][0], rel=1e-5)
    for got, want in zip(grads["fast"][1:], grads["naive"][1:], strict=True):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-7)
    assert ("pi0_logit" in dict(prior.named_parameters())) == learn_pi0


def test_hyperprior_terms() -> None:
    prior = MixturePrior([torch.randn(10)], MixtureConfig(num_components=3))
    lam = prior.precisions().detach()
    expected = (1 - 5000) * lam[0].log() + 2 * lam[0] + ((1 - 250) * lam[1:].log() + 0.1 * lam[1:]).sum()
    assert float(prior.hyperprior_loss().detach()) == pytest.approx(float(expected), rel=1e-6)
    off = MixturePrior([torch.randn(10)], MixtureConfig(num_components=3, hyperprior=False))
    assert float(off.hyperprior_loss()) == 0.0
    beta = MixturePrior([torch.randn(10)], MixtureConfig(num_components=3, hyperprior=False, learn_pi0=True))
    theta = beta.pi0_logit.detach()
    want = -999 * math.log(torch.sigmoid(theta)) - 1 * math.log(torch.sigmoid(-theta))
    assert float(beta.hyperprior_loss().detach()) == pytest.approx(want, rel=1e-5)


def _mix(means, variances, pis) -> MergedMixture:
    return MergedMixture(*(torch.tensor(v, dtype=torch.float64) for v in (means, variances, pis)))


def test_merge_identical_and_distinct() -> None:
    merged = merge_mixture(_mix([0.0, 0.3, 0.3, -0.3], [0.01, 0.02, 0.02, 0.02], [0.7, 0.1, 0.1, 0.1]), 1e-10)
    assert merged.means.tolist() == [0.0, 0.3, -0.3]
    assert merged.pis.tolist() == pytest.approx([0.7, 0.2, 0.1])
    distinct = merge_mixture(_mix([0.0, 0.3, 0.31], [0.01, 0.02, 0.02], [0.8, 0.1, 0.1]), 1e-10)
    assert len(distinct) == 3


def test_merge_closest_pair_first_and_eq8() -> None:
    # Equal variances: symmetric KL = dm^2 / 2, so (1, 2) = 0.005 and (2, 3) = 0.00125; only (2, 3) merges.
    mix = _mix([0.0, 1.0, 1.1, 1.15], [1.0, 1.0, 1.0, 1.0], [0.4, 0.2, 0.1, 0.3])
    merged = merge_mixture(mix, 0.005)
    assert len(merged) == 3
    assert merged.means[2].item() == pytest.approx((0.1 * 1.1 + 0.3 * 1.15) / 0.4)
    assert merged.pis[2].item() == pytest.approx(0.4)
    # Same mean, variances 0.1 and 0.3: symmetric KL 1/3 < 0.5; the spike at 0 stays apart.
    v = merge_mixture(_mix([0.0, 5.0, 5.0], [0.01, 0.1, 0.3], [0.5, 0.1, 0.4]), 0.5)
    assert len(v) == 2 and v.variances[1].item() == pytest.approx((0.1 * 0.1 + 0.4 * 0.3) / 0.5)


def test_merge_into_zero_component_keeps_index_and_exact_zero() -> None:
    merged = merge_mixture(_mix([0.0, 0.5, 1e-6], [0.01, 0.01, 0.01], [0.6, 0.3, 0.1]), 1e-3)
    assert len(merged) == 2
    assert merged.means[0].item() == 0.0 and merged.pis[0].item() == pytest.approx(0.7)
    assert merged.means[1].item() == 0.5


def test_assignment_map_vs_ml_failure_case() -> None:
    # A narrow component near 0 (sigma^2 = 1e-4 < the spike's 1e-2) with a small pi.
    mix = _mix([0.0, 0.005, 0.5], [1e-2, 1e-4, 1e-2], [0.98, 0.01, 0.01])
    near_zero = torch.tensor([0.0, 0.004, -0.003, 0.01])
    assert assign_components(near_zero, mix, "map").tolist() == [0, 0, 0, 0]
    assert assign_components(near_zero, mix, "ml").tolist() == [1, 1, 1, 1]  # sparsity vanishes
    assert assign_components(torch.tensor([0.49]), mix, "map").tolist() == [2]
    with pytest.raises(ValueError, match="rule"):
        assign_components(near_zero, mix, "mode")


def test_assign_and_responsibilities_shapes() -> None:
    prior = MixturePrior([torch.randn(4, 5)], MixtureConfig(num_components=4))
    idx = prior.assign([torch.randn(4, 5), torch.randn(3)])
    assert [t.shape for t in idx] == [torch.Size([4, 5]), torch.Size([3])] and idx[0].dtype == torch.int64
    r = prior.responsibilities(torch.randn(6))
    assert r.shape == (6, 4) and torch.allclose(r.sum(1), torch.ones(6, dtype=torch.float64))


def test_quantize_global_codebook() -> None:
    net = _net()
    prior = MixturePrior.from_model(net, num_components=5)
    with torch.no_grad():
        prior.log_precisions.fill_(math.log(1 / 0.02**2))
        prior.means.copy_(torch.tensor([-0.15, -0.05, 0.05, 0.15]))
        prior.means[1] = 0.05  # identical to component 3: merged away
    bias_before = net[0].bias.detach().clone()
    q = prior.quantize(net)
    cb = q.codebooks[0]
    assert len(q.codebooks) == 1 and cb[0].item() == 0.0
    assert cb.numel() <= 4 and torch.all(cb[1:] != 0)
    assert set(q.quantized) == {"0.weight", "2.weight"} and set(q.dense) == {"0.bias", "2.bias"}
    assert torch.equal(q.dense["0.bias"], bias_before)
    assert q.unique_values() == cb.numel()
    mix = prior.merged()
    for name, param in (("0.weight", net[0].weight), ("2.weight", net[2].weight)):
        comp = assign_components(param, mix)
        values = q.dequantize(name)
        assert torch.all(values[comp == 0] == 0.0) and torch.all(values[comp != 0] != 0.0)
        assert torch.allclose(values[comp != 0], mix.means[comp[comp != 0]].float())
    assert 0 < q.nnz < q.num_quantized


def test_quantize_needs_names() -> None:
    net = _net()
    prior = MixturePrior.from_weights([net[0].weight], num_components=3)
    with pytest.raises(ValueError, match="names"):
        prior.quantize(net)
    q = MixturePrior.from_weights([net[0].weight], num_components=3, names=["0.weight"]).quantize(net)
    assert set(q.quantized) == {"0.weight"} and "2.weight" in q.dense


def test_json_roundtrip() -> None:
    prior = MixturePrior.from_model(_net(), num_components=4, learn_pi0=True, pi0=0.95)
    with torch.no_grad():
        prior.mixing_logits.copy_(torch.tensor([0.1, -0.5, 2.0]))
    data = prior.to_json()
    assert len(data["means"]) == 4 and data["means"][0] == 0.0
    back = MixturePrior.from_json(data)
    assert torch.allclose(back.pis(), prior.pis(), rtol=1e-5)
    assert torch.allclose(back.sigmas(), prior.sigmas()) and back.names == prior.names
    assert back.config.learn_pi0 and back.config.init_means == "weights"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"pi0": 1.0}, "pi0"),
        ({"pi0": 0.0}, "pi0"),
        ({"num_components": 1}, "num_components"),
        ({"init_sigma": 0.0}, "init_sigma"),
        ({"gamma_alpha": -1.0}, "gamma_alpha"),
        ({"gamma_beta_zero": 0.0}, "gamma_beta_zero"),
        ({"pi0_beta_a": 0.0}, "pi0_beta_a"),
        ({"kernel": "gpu"}, "kernel"),
        ({"init_means": "random"}, "init_means"),
        ({"init_range_min": 0.5, "init_range_max": 0.5}, "init_range_min"),
    ],
)
def test_config_validation_names_the_setting(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        MixtureConfig(**kwargs).validate()
    with pytest.raises(ValueError, match=setting):
        MixturePrior([torch.randn(5)], MixtureConfig(**kwargs))


def test_stable_with_extreme_pi0_and_precisions() -> None:
    prior = MixturePrior.from_weights([torch.randn(10)], num_components=4, pi0=1 - 1e-9, learn_pi0=True)
    with torch.no_grad():
        prior.log_precisions.copy_(torch.tensor([math.log(1e8), math.log(1e-4), 0.0, 5.0]))
    w = torch.tensor([0.0, 1e-6, 40.0, -3.0], requires_grad=True)
    loss = prior.complexity_loss([w])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(w.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in prior.parameters())


def test_a_tied_embedding_is_penalised_and_quantized_once():
    """The issue's own case: an embedding shared with the output layer, as in most language models."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False))
    model[2].weight = model[0].weight
    prior = MixturePrior.from_model(model, num_components=5, kernel="fast")
    assert prior.names == ["0.weight", "1.weight"]
    once = prior.complexity_loss([model[0].weight, model[1].weight])
    assert torch.equal(prior.complexity_loss(model), once)
    qmodel = prior.quantize(model)
    assert list(qmodel.quantized) == ["0.weight", "1.weight"] and qmodel.aliases == {"2.weight": "0.weight"}
    assert list(qmodel.dense) == ["1.bias"]
