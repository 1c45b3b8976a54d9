import pytest
import torch
import torch.nn.functional as F

from weightshare.core.errors import ConfigError
from weightshare.core.quantized import load_quantized
from weightshare.core.settings import validate
from weightshare.data.datasets import DataBundle, Split
from weightshare.methods import CONFIGS, METHODS
from weightshare.methods.pwfn.config import PWFN_PRESETS, PWFNConfig
from weightshare.methods.pwfn.method import ProbabilisticWeightFixing, check_epochs, join_sigma
from weightshare.methods.pwfn.pow2 import SIGMA_MAX, prior_sigma
from weightshare.models.architectures import build_model
from weightshare.train.config import TrainConfig
from weightshare.train.hooks import TrainContext
from weightshare.train.loop import fit


def _small(digits, n=256):
    return DataBundle("digits", Split(digits.train.x[:n], digits.train.y[:n]), digits.val, digits.test, 10)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp")


def _is_centre(values: torch.Tensor, b: int, terms: int) -> bool:
    """Every value is 0 or +-n * 2^-b with at most ``terms`` ones in n (a sum of <= terms powers of two)."""
    n = values.double().abs() * 2.0**b
    ints = n.round()
    return bool((n == ints).all()) and all(bin(int(v)).count("1") <= terms for v in ints.tolist())


# --- joining sigmas ---------------------------------------------------------------------------------


def test_sigma_join_rules():
    mu, sigma, group = (
        torch.tensor([1.0, 3.0, 0.5, 0.5]),
        torch.tensor([0.1, 0.2, 0.4, 0.4]),
        torch.tensor([0, 0, 1, 1]),
    )
    assert join_sigma("std_mu", mu, sigma, group)[:2].tolist() == [1.0, 1.0]
    assert join_sigma("divide_by_10", mu, sigma, group).tolist() == pytest.approx([0.01, 0.02, 0.04, 0.04])
    assert join_sigma("allow_retraining", mu, sigma, group).tolist() == pytest.approx(sigma.tolist())
    precision = (1 / 0.1**2 + 1 / 0.2**2) / 2
    assert join_sigma("mean_sigma", mu, sigma, group).tolist() == pytest.approx([precision**-0.5] * 2 + [0.4] * 2)


# --- the model: sigma, noise, regulariser ----------------------------------------------------------------


def test_sigma_starts_at_the_prior_and_is_finite_for_zero_weights():
    model = _mlp()
    with torch.no_grad():
        model.net[0].weight[:5] = 0.0
        model.net[0].weight[5, :3] = torch.tensor([1e-40, -1e-42, 2.0**-30])
    pw = ProbabilisticWeightFixing(model, PWFNConfig())
    for name, p in pw.covered.items():
        assert torch.equal(pw.sigma[name].detach(), prior_sigma(p.detach()))
        assert bool(torch.isfinite(pw.sigma[name]).all())
    assert list(pw.covered) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    flat = ProbabilisticWeightFixing(_mlp(), PWFNConfig(prior=False))
    assert all(bool((s == 1e-4).all()) for s in flat.sigma.values())


def test_noise_in_training_mode_only_and_gradients_reach_sigma(digits):
    model, x = _mlp(), digits.train.x[:32]
    plain = model(x).detach()
    pw = ProbabilisticWeightFixing(model, PWFNConfig())
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    F.cross_entropy(a, digits.train.y[:32]).backward()
    assert all(float(s.grad.abs().sum()) > 0 for s in pw.sigma.values())
    model.eval()
    assert torch.equal(model(x), plain)  # evaluation uses mu
    assert set(model.state_dict()) == {f"net.{i}.{k}" for i in (0, 2, 4) for k in ("weight", "bias")}
    pw.remove_hooks()
    model.train()
    assert torch.equal(model(x), plain)


def test_regulariser_gradient_is_the_papers_sigma_edit(digits):
    model = _mlp()
    pw = ProbabilisticWeightFixing(model, PWFNConfig(reg=0.5))
    model.train()
    model(digits.train.x[:8])
    eps = dict(pw._eps)
    penalty = pw.penalty(model)
    assert penalty.item() >= 0 and pw.penalty(model) is None  # the noise of one forward is used once
    penalty.backward()
    for name, s in pw.sigma.items():
        expected = -0.5 * torch.relu(SIGMA_MAX - s.detach()) * eps[name].abs()
        assert torch.allclose(s.grad, expected, atol=1e-12)


# --- fixing rounds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("optimizer", "join"), [("sgd", "std_mu"), ("adam", "allow_retraining")])
def test_fixed_weights_never_move_and_every_weight_ends_on_a_centre(digits, optimizer, join):
    model = _mlp()
    cfg = PWFNConfig(
        schedule=[0.3, 0.6, 0.9, 1.0], first_epochs=1, rest_epochs=1, b=6, sigma_join=join, reg=0.1, lr_sigma=1e-2
    )
    pw = ProbabilisticWeightFixing(model, cfg)
    snapshot: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fractions = []

    def check(epoch, net):
        for name, p in pw.covered.items():
            if name in snapshot:  # weights fixed in earlier epochs hold exactly the value they were fixed to
                mask, before = snapshot[name]
                assert torch.equal(p.detach()[mask], before[mask]), (epoch, name)
                assert bool(pw.fixed[name][mask].all())
            snapshot[name] = (pw.fixed[name].clone(), p.detach().clone())
        fractions.append(round(pw.fixed_fraction(), 4))

    # large lr and weight decay: momentum and L2 would move fixed weights if they could
    train = TrainConfig(epochs=cfg.total_epochs, lr=1e-2, weight_decay=1e-2, optimizer=optimizer)
    fit(model, _small(digits), train, method=pw, batch_size=32, progress=False, on_epoch=check)
    assert fractions == [0.3, 0.6, 0.9, 1.0]
    assert [row["round"] for row in pw.rounds] == [1, 2, 3, 4]
    q = pw.finalize(model)
    values = torch.cat([p.detach().reshape(-1) for p in pw.covered.values()])
    assert _is_centre(values, cfg.b, cfg.max_terms)
    assert len(q.codebooks) == 1 and q.codebooks[0][0].item() == 0.0
    assert q.unique_values() == torch.unique(values).numel() == pw.rounds[-1]["unique_values"]
    for name, p in pw.covered.items():
        assert torch.equal(q.dequantize(name), p.detach())
    assert sorted(q.dense) == ["net.0.bias", "net.2.bias", "net.4.bias"]


def test_frozen_sigma_of_fixed_weights_stays_put(digits):
    model = _mlp()
    cfg = PWFNConfig(schedule=[0.5, 1.0], first_epochs=1, rest_epochs=1, reg=1.0)
    pw = ProbabilisticWeightFixing(model, cfg)
    frozen = {}

    def record(epoch, net):
        if epoch == 0:
            frozen.update({n: (pw.fixed[n].clone(), pw.sigma[n].detach().clone()) for n in pw.covered})

    fit(
        model,
        _small(digits, 128),
        TrainConfig(epochs=2, lr=1e-2, optimizer="sgd", weight_decay=1e-2),
        method=pw,
        batch_size=32,
        progress=False,
        on_epoch=record,
    )
    for name, (mask, sigma) in frozen.items():
        assert torch.equal(pw.sigma[name].detach()[mask], sigma[mask])


def test_biases_are_covered_on_request_and_reported_dense_otherwise():
    model = _mlp()
    pw = ProbabilisticWeightFixing(model, PWFNConfig(schedule=[1.0], first_epochs=0, include_biases=True))
    q = pw.finalize(model)
    assert sorted(q.quantized) == sorted(f"net.{i}.{k}" for i in (0, 2, 4) for k in ("weight", "bias"))
    assert q.dense == {}


def test_the_schedule_fixes_the_epoch_count():
    cfg = PWFNConfig(schedule=[0.5, 1.0], first_epochs=1, rest_epochs=2)
    with pytest.raises(ConfigError, match=r"setting 'epochs' is 4 but the PWFN fixing schedule needs 3"):
        check_epochs(cfg, TrainConfig(epochs=4))
    pw = ProbabilisticWeightFixing(_mlp(), cfg)
    pw.check_train(TrainConfig(epochs=3))
    with pytest.raises(ConfigError, match=r"stopped before its last fixing round.*'epochs' to 3"):
        pw.finalize(_mlp())
    opt = torch.optim.SGD(_mlp().parameters(), lr=0.1)
    for epoch in range(3):
        pw.on_epoch_end(_mlp(), TrainContext(opt, epoch=epoch))
    with pytest.raises(ConfigError, match="larger than the PWFN fixing schedule"):
        pw.on_epoch_end(_mlp(), TrainContext(opt, epoch=3))


def test_presets_match_their_epochs():
    assert CONFIGS["pwfn"] is PWFNConfig and METHODS[PWFNConfig] is ProbabilisticWeightFixing
    assert PWFNConfig.presets is PWFN_PRESETS
    for name in PWFN_PRESETS:
        cfg = PWFNConfig.preset(name)
        check_epochs(cfg, cfg.train)
    paper = PWFN_PRESETS["lenet300"]["train"]
    assert (paper["optimizer"], paper["lr"], paper["momentum"], paper["weight_decay"]) == ("sgd", 1e-3, 0.9, 1e-4)
    assert PWFNConfig().total_epochs == 28  # 1 + 9 x 3, the paper's schedule


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": [0.2, 0.2, 1]}, "setting 'schedule' must be strictly increasing: 0.2 follows 0.2"),
        ({"schedule": [0.5, 0.9]}, "setting 'schedule' must end at 1 .* it ends at 0.9"),
        ({"schedule": [0, 1]}, "setting 'schedule' must be > 0; got 0.0"),
        ({"schedule": [0.5, 1.5]}, "setting 'schedule' must be <= 1; got 1.5"),
        ({"schedule": "0.5,1"}, "setting 'schedule' must be a list, got '0.5,1'"),
        ({"b": 0}, "setting 'b' must be >= 1; got 0"),
        ({"inc": 1.0}, "setting 'inc' must be > 1"),
        ({"sigma_join": "mean_mu"}, "setting 'sigma_join' must be one of std_mu"),
    ],
)
def test_bad_settings_name_the_setting(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(PWFNConfig(**changes))


# --- resume and the command line -------------------------------------------------------------------------


def test_resume_equals_uninterrupted(digits, resume_check):
    cfg = PWFNConfig(schedule=[0.4, 0.8, 1.0], first_epochs=1, rest_epochs=1, reg=0.1, lr_sigma=1e-2)
    train = TrainConfig(epochs=cfg.total_epochs, lr=1e-2, optimizer="sgd", weight_decay=1e-4)
    data = _small(digits)
    (whole, pw), (second, pw2) = resume_check(
        lambda: (m := _mlp(), ProbabilisticWeightFixing(m, cfg)), data, train, stop_epoch=1
    )
    assert pw2.rounds == pw.rounds and pw2.epochs_done == pw.epochs_done == 3
    for name in pw.covered:
        assert torch.equal(pw.sigma[name], pw2.sigma[name]) and torch.equal(pw.fixed[name], pw2.fixed[name])
    qa, qb = pw.finalize(whole), pw2.finalize(second)
    assert torch.equal(qa.codebooks[0], qb.codebooks[0])


def test_cli_end_to_end_on_digits(pretrained_digits, tmp_path, cli_compress):
    out = tmp_path / "B"
    report = cli_compress("pwfn", pretrained_digits, out)
    assert report["errors"]["decoded"] == report["errors"]["retrained"]  # every weight was already on a centre
    assert report["totals"]["nonzero_fraction"] >= 0.95  # powers of two, none of them zero here: 1.0 for seeds 0-5
    assert report["coverage"]["dense"] == ["net.0.bias", "net.2.bias", "net.4.bias"]
    why = "bias of a covered layer (include_biases is off)"
    assert report["coverage"]["why_dense"] == {name: why for name in report["coverage"]["dense"]}
    q = load_quantized(out / "quantized.safetensors")
    assert len(q.codebooks) == 1 and report["totals"]["unique_values"] == q.unique_values()
    assert 2 < report["totals"]["unique_values"] < 64 and 0 < report["totals"]["entropy_bits_per_weight"] < 6
    assert report["errors"]["decoded"]["test_error"] < report["errors"]["pretrained"]["test_error"] + 3
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert "fixed_fraction" in metrics[0] and sum(line.startswith("retrain") for line in metrics) == 19


def test_cli_refuses_bad_settings(pretrained_digits, tmp_path, cli_refuses):
    err = cli_refuses("pwfn", pretrained_digits, tmp_path / "C", "--schedule", "0.5,0.4,1")
    assert "setting 'schedule' must be strictly increasing: 0.4 follows 0.5" in err


class _TiedWithAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.attention = torch.nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(self.a(x))
        return self.attention(h, h, h, need_weights=False)[0]


def test_noise_reaches_tied_and_attention_weights_once_per_forward():
    torch.manual_seed(0)
    model = _TiedWithAttention()
    pw = ProbabilisticWeightFixing(model, PWFNConfig(schedule=[0.5, 1.0], first_epochs=0))
    seen = {}
    for name in ("a", "b"):
        model.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: seen.update({name: m.weight}))
    model.attention.register_forward_pre_hook(lambda m, args: seen.update({"out": m.out_proj.weight}))
    model.train()
    model(torch.randn(2, 3, 4))
    assert set(pw._eps) == {"a.weight", "attention.in_proj_weight", "attention.out_proj.weight"}
    assert seen["a"] is seen["b"]  # one sample for the tied weight, under both names
    assert not isinstance(seen["a"], torch.nn.Parameter) and not torch.equal(seen["a"], model.a.weight)
    assert not torch.equal(seen["out"], model.attention.out_proj.weight)
    assert model.b.weight is model.a.weight and isinstance(model.attention.out_proj.weight, torch.nn.Parameter)
    first = seen["a"]
    model(torch.randn(2, 3, 4))
    assert seen["a"] is seen["b"] and not torch.equal(seen["a"], first)  # a new sample each forward
