"""The ADMM method (Yang et al. 2020): budget, projections, prox step, KD, fine-tuning, finish, resume, CLI."""

import dataclasses
import json

import pytest
import torch

from weightshare.cli import main
from weightshare.core.errors import ConfigError
from weightshare.core.settings import apply_overrides, validate
from weightshare.data.datasets import DataBundle, Split
from weightshare.methods import CONFIGS, METHODS
from weightshare.methods.admm.config import ADMM_PRESETS, AdmmConfig
from weightshare.methods.admm.method import ADMM, _FineTune, model_size_budget
from weightshare.methods.admm.quant import (
    masked_codebook,
    masked_quantize,
    quantization_projection,
    refine_masked_codebook,
)
from weightshare.models.architectures import build_model
from weightshare.report.accounting import values_only
from weightshare.train.config import TrainConfig
from weightshare.train.hooks import TrainContext
from weightshare.train.loop import fit


def _small(digits, n=256):
    return DataBundle("digits", Split(digits.train.x[:n], digits.train.y[:n]), digits.val, digits.test, 10)


@pytest.fixture(scope="module")
def pretrained_state(digits):
    torch.manual_seed(0)
    model = build_model("mlp")
    fit(model, _small(digits, 512), TrainConfig(epochs=4, lr=3e-3), batch_size=32, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _pretrained(state):
    model = build_model("mlp")
    model.load_state_dict(state)
    return model


def _sgd(epochs, **kw):
    return TrainConfig(
        epochs=epochs, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine", **kw
    )


def _weights(model):
    return {n: p for n, p in model.named_parameters() if n.endswith("weight")}


def _size_bits(admm):
    return sum(admm.bits[n] * int((p != 0).sum()) for n, p in admm.covered.items())


# --- budget and projections ----------------------------------------------------------------------------------------


def test_start_projection_keeps_exactly_the_budgeted_weights_by_magnitude(pretrained_state):
    model = _pretrained(pretrained_state)
    before = torch.cat([p.detach().abs().reshape(-1) for p in _weights(model).values()])
    admm = ADMM(model, AdmmConfig(nnz_budget=0.07, bit_budget=3, prox=True))
    numels = [8192, 8192, 640]
    assert admm.budget == model_size_budget(numels, 0.07, 3) == 3 * (574 + 574 + 45)
    after = torch.cat([p.detach().reshape(-1) for p in _weights(model).values()])
    kept = after != 0
    assert int(kept.sum()) == 574 + 574 + 45  # every layer starts at floor(3) bits: the budget in weights, exactly
    assert float(before[kept].min()) >= float(before[~kept].max())  # equal bits: the largest |w| survive
    assert _size_bits(admm) <= admm.budget  # after the first bit allocation too
    assert all(1 <= b <= 8 for b in admm.bits.values())


def test_quantization_projection_respects_the_budget_and_the_levels():
    gen = torch.Generator().manual_seed(0)
    xs = {"a": torch.randn(400, generator=gen), "b": torch.randn(60, generator=gen) * 0.1}
    nnz = {"a": 40, "b": 20}
    for budget in (60, 150, 300, 10_000):
        bits, projected = quantization_projection(xs, nnz, budget, 1, 50)
        assert sum(bits[n] * nnz[n] for n in xs) <= budget
        for n, v in projected.items():
            distinct = torch.unique(v[v != 0])
            assert distinct.numel() <= 2 ** bits[n]
    # an ample budget: 8 bits for a; b's 60 values are exact at 6 bits, so 7 and 8 bits are dominated
    assert quantization_projection(xs, nnz, 10_000, 1, 50)[0] == {"a": 8, "b": 6}
    assert quantization_projection(xs, nnz, 150, 1, 50)[0] == {"a": 3, "b": 1}  # b's values are 10x smaller
    assert quantization_projection(xs, nnz, 60, 1, 50)[0] == {"a": 1, "b": 1}  # only the cheapest fits


def test_sparse_projection_runs_every_projint_batches_and_weights_regrow_in_between(pretrained_state, digits):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.1, bit_budget=3, projint=2, dualint=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = digits.train.x[:64], digits.train.y[:64]
    sizes = []
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        admm.after_step(model, TrainContext(opt))
        sizes.append(_size_bits(admm))
    assert sizes[0] > admm.budget and sizes[2] > admm.budget  # pruned weights got gradients: they regrew
    assert sizes[1] <= admm.budget and sizes[3] <= admm.budget


# --- the primal step: penalty, prox, KD ----------------------------------------------------------------------------


def test_penalty_is_the_augmented_term_and_prox_is_its_closed_form(pretrained_state):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.2, bit_budget=2, rho=0.3, projint=1000))
    expected = sum(((p.detach() - admm.dup[n] + admm.dual[n]) ** 2).sum() for n, p in admm.covered.items())
    assert float(admm.penalty(model).detach()) == pytest.approx(0.15 * float(expected), rel=1e-6)

    admm_prox = ADMM(model, AdmmConfig(nnz_budget=0.2, bit_budget=2, rho=0.3, prox=True, projint=1000))
    assert admm_prox.penalty(model) is None
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.param_groups[0]["lr"] = 0.2  # the loop's schedule sets it per batch; the prox step reads it then
    before = {n: p.detach().clone() for n, p in admm_prox.covered.items()}
    admm_prox.after_step(model, TrainContext(opt))
    beta = 0.2 * 0.3
    for n, p in admm_prox.covered.items():
        want = (before[n] + beta * (admm_prox.dup[n] - admm_prox.dual[n])) / (1 + beta)
        assert torch.allclose(p.detach(), want, atol=1e-7)


def test_prox_reads_the_learning_rate_of_the_group_holding_the_covered_weights(pretrained_state):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.2, bit_budget=2, rho=0.5, prox=True, projint=1000))
    covered = {id(p) for p in admm.covered.values()}
    others = [p for p in model.parameters() if id(p) not in covered]
    opt = torch.optim.SGD([{"params": others, "lr": 9.0}, {"params": list(admm.covered.values()), "lr": 0.1}])
    before = {n: p.detach().clone() for n, p in admm.covered.items()}
    admm.after_step(model, TrainContext(opt))
    beta = 0.1 * 0.5  # the covered weights' group, not the first group
    for n, p in admm.covered.items():
        want = (before[n] + beta * (admm.dup[n] - admm.dual[n])) / (1 + beta)
        assert torch.allclose(p.detach(), want, atol=1e-7)
    with pytest.raises(ValueError, match="does not update this parameter"):
        admm.after_step(model, TrainContext(torch.optim.SGD(others, lr=0.1)))


# --- the finish ----------------------------------------------------------------------------------------------------


def _levels_ok(admm, qmodel):
    for name, qt in qmodel.quantized.items():
        values = qmodel.dequantize(name)
        assert torch.unique(values[values != 0]).numel() <= 2 ** admm.bits[name], name
        assert qmodel.codebooks[qt.codebook][0].item() == 0.0
    size = sum(admm.bits[n] * qt.nnz for n, qt in qmodel.quantized.items())
    assert size <= admm.budget
    return size


def test_finish_has_at_most_2_to_the_b_values_per_layer_and_keeps_the_budget(pretrained_state, digits):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.1, bit_budget=3, prox=True))
    fit(model, _small(digits), _sgd(3), method=admm, batch_size=32, progress=False)
    qmodel = admm.finalize(model)
    _levels_ok(admm, qmodel)
    assert set(qmodel.quantized) == {"net.0.weight", "net.2.weight", "net.4.weight"}
    assert values_only(qmodel) >= 32 * 17024 / admm.budget  # the paper's count: at most b_l bits per non-zero
    summary = admm.summary()
    assert summary["budget_bits"] == admm.budget and [r["bits"] for r in summary["layers"]] == list(admm.bits.values())
    assert summary["target_values_only_cr"] == pytest.approx(32 * 17024 / admm.budget)


def test_bwub_caps_every_layers_bits(pretrained_state, digits):
    cfg = AdmmConfig(nnz_budget=0.05, bit_budget=3, prox=True)
    assert max(ADMM(_pretrained(pretrained_state), cfg).bits.values()) == 7  # the knapsack's pick for net.4
    model = _pretrained(pretrained_state)
    admm = ADMM(model, dataclasses.replace(cfg, bwub=3))
    assert max(admm.bits.values()) == 3
    fit(model, _small(digits), _sgd(3), method=admm, batch_size=32, progress=False)
    qmodel = admm.finalize(model)
    assert max(admm.bits.values()) <= 3 and _levels_ok(admm, qmodel) <= admm.budget
    assert all(len(qmodel.codebooks[qt.codebook]) <= 1 + 2**3 for qt in qmodel.quantized.values())


def test_a_cap_under_the_bit_budget_starts_every_layer_at_the_cap(pretrained_state):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.07, bit_budget=5, prox=True, bwub=3))
    kept = sum(int((p != 0).sum()) for p in _weights(model).values())
    assert kept == 574 + 574 + 45  # the start keeps exactly the budget's non-zeros, at 3 bits instead of 5
    assert admm.budget == 5 * kept and max(admm.bits.values()) <= 3 and _size_bits(admm) <= admm.budget


def test_finetuning_fixes_mask_and_bits_and_trains_through_the_quantized_weights(pretrained_state, digits):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.1, bit_budget=3, prox=True, finetune_epochs=2, finetune_refresh=4))
    with pytest.raises(ConfigError, match="'finetune_epochs' is 2 but training runs only 1 epochs"):
        admm.check_train(_sgd(1))
    train = _sgd(4)
    admm.check_train(train)
    snapshots = []

    def record(epoch, net):
        snapshots.append(({n: p.detach().clone() for n, p in _weights(net).items()}, dict(admm.bits)))

    fit(model, _small(digits), train, method=admm, batch_size=32, progress=False, on_epoch=record)
    (w2, bits2), (w4, bits4) = snapshots[1], snapshots[3]
    assert bits2 == bits4 and admm.finetune is not None
    for n in w2:
        assert bool((w4[n][admm.finetune.masks[n].logical_not()] == 0).all())  # the mask stays fixed
        assert not torch.equal(w2[n], w4[n])  # ... but the kept weights trained
    qmodel = admm.finalize(model)
    _levels_ok(admm, qmodel)
    decoded = qmodel.to_state_dict()
    assert all(torch.equal(decoded[n], p.detach()) for n, p in _weights(model).items())  # the model is C[I]


def _finetuned(state, digits, keep):
    model = _pretrained(state)
    cfg = AdmmConfig(nnz_budget=0.1, bit_budget=2, prox=True, finetune_epochs=2, finetune_keep_nonzeros=keep)
    admm = ADMM(model, cfg)
    admm.check_train(_sgd(4))
    fit(model, _small(digits), _sgd(4), method=admm, batch_size=32, progress=False)
    return model, admm


@pytest.mark.parametrize("keep", [False, True])
def test_finetuning_start_rounds_small_masked_weights_to_0_unless_kept(keep):
    # 1 bit: centres near -1 and +1; the kept 0.02 is nearer the fixed 0 than either (the reference drops it).
    weight = torch.nn.Parameter(torch.tensor([0.0, 0.02, 0.9, 1.1, -1.0, -1.2, 0.0, 0.0]))
    tune = _FineTune.start({"w": weight}, {"w": 1}, 50, keep_nonzeros=keep)
    nonzero = weight.detach() != 0
    assert torch.equal(tune.masks["w"], torch.tensor([False, True, True, True, True, True, False, False]))
    assert bool(nonzero[1]) == keep and int(nonzero.sum()) == 4 + keep
    assert not bool((nonzero & ~tune.masks["w"]).any())  # nothing outside the mask
    assert torch.unique(weight.detach()[nonzero]).numel() <= 2  # 2^1 levels either way


def test_keep_nonzeros_finetuning_spends_exactly_the_masks_bits(pretrained_state, digits):
    model, admm = _finetuned(pretrained_state, digits, keep=True)
    qmodel = admm.finalize(model)
    size = _levels_ok(admm, qmodel)
    for n, qt in qmodel.quantized.items():
        assert torch.equal(qt.indices != 0, admm.finetune.masks[n])  # every weight of the mask, and no other
    assert size == sum(admm.bits[n] * int(m.sum()) for n, m in admm.finetune.masks.items())


def test_masked_quantize_never_gives_0_inside_the_mask():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2000, generator=gen) * 0.1
    mask = torch.rand(2000, generator=gen) < 0.3
    codebook = masked_codebook(x, mask, 2)
    assert codebook.numel() == 5 and codebook[0] == 0 and bool((codebook[1:] != 0).all())
    index = masked_quantize(x, codebook, mask)
    assert bool((index[mask] > 0).all()) and bool((index[~mask] == 0).all())
    nearest = (x[mask, None] - codebook[None, 1:]).abs().argmin(dim=1) + 1
    assert torch.equal(index[mask], nearest)
    # converged centres are a fixed point of Lloyd's steps (scaled data, scaled centres); worse ones move and improve
    assert torch.allclose(refine_masked_codebook(x * 1.5, mask, codebook * 1.5, 5), codebook * 1.5, atol=1e-6)

    def distortion(cb):
        return float(((x - cb[masked_quantize(x, cb, mask)])[mask] ** 2).sum())

    start = codebook * 0.5
    assert distortion(refine_masked_codebook(x, mask, start, 5)) < 0.5 * distortion(start)


def test_finetuning_needs_the_training_length(pretrained_state):
    model = _pretrained(pretrained_state)
    admm = ADMM(model, AdmmConfig(nnz_budget=0.1, bit_budget=3, finetune_epochs=1))
    with pytest.raises(RuntimeError, match="check_train"):
        admm.after_step(model, TrainContext(torch.optim.SGD(model.parameters(), lr=0.1)))


# --- resume --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(  # in the ADMM phase (epochs 1-3), in the fine-tuning phase (4-5)
    ("stop_after", "keep"), [(0, False), (3, False), (3, True)]
)
def test_resume_equals_uninterrupted(pretrained_state, digits, resume_check, stop_after, keep):
    cfg = AdmmConfig(
        nnz_budget=0.1, bit_budget=3, prox=True, projint=3, dualint=6, finetune_epochs=2, finetune_keep_nonzeros=keep
    )
    train, data = _sgd(5, warmup_epochs=1), _small(digits)

    def make():
        model = _pretrained(pretrained_state)
        admm = ADMM(model, cfg)
        admm.check_train(train)
        return model, admm

    (whole, whole_admm), (second, second_admm) = resume_check(make, data, train, stop_epoch=stop_after)
    assert whole_admm.bits == second_admm.bits
    qa, qb = whole_admm.finalize(whole), second_admm.finalize(second)
    assert all(torch.equal(qa.quantized[n].indices, qb.quantized[n].indices) for n in qa.quantized)


# --- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nnz_budget": 0.0}, "setting 'nnz_budget' must be > 0"),
        ({"nnz_budget": 1.5}, "setting 'nnz_budget' must be <= 1"),
        ({"bit_budget": 0.5}, "setting 'bit_budget' must be >= 1"),
        ({"bit_budget": 9.0}, "setting 'bit_budget' must be <= 8"),
        ({"bwlb": 0}, "setting 'bwlb' must be >= 1"),
        ({"bit_budget": 3.0, "bwlb": 4}, "setting 'bwlb' is 4 but must be <= the bit budget's whole bits 3"),
        ({"bwlb": 2, "bwub": 1}, "setting 'bwub' is 1 but must be >= setting 'bwlb' \\(2\\)"),
        ({"bwub": 9}, "setting 'bwub' must be <= 8"),
        ({"projint": 2, "dualint": 3}, "setting 'dualint' \\(3\\) must be 0 or a multiple of 'projint' \\(2\\)"),
        ({"rho": 0.0}, "setting 'rho' must be > 0"),
    ],
)
def test_bad_budgets_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(apply_overrides(AdmmConfig(), overrides))


def test_presets_are_valid_and_lenet5_is_the_reference_recipe():
    assert CONFIGS["admm"] is AdmmConfig and METHODS[AdmmConfig] is ADMM and AdmmConfig.presets is ADMM_PRESETS
    for name in ADMM_PRESETS:
        assert AdmmConfig.preset(name).train.optimizer == "sgd", name
    lenet5 = ADMM_PRESETS["lenet5"]
    assert lenet5["admm"] == {
        "nnz_budget": 0.0054,
        "bit_budget": 3.0,
        "bwub": 4,  # not the reference's 8: capped bits leave budget for conv2's non-zeros
        "rho": 0.05,
        "prox": True,
        "finetune_epochs": 20,
    }
    keys = ("lr", "momentum", "weight_decay", "warmup_epochs", "epochs", "grad_clip")
    assert {k: lenet5["train"][k] for k in keys} == {
        "lr": 0.1,
        "momentum": 0.93,
        "weight_decay": 5e-4,
        "warmup_epochs": 10,
        "epochs": 140,  # the reference's 120, then 20 of its finetune.py step
        "grad_clip": 2.0,  # shifted batches at SGD 0.1 diverge without it
    }
    assert lenet5["data"] == {"shift": 2}  # shifted digits, whatever the pretrain used
    assert lenet5["finish"] == {"remove_dead": True, "dense_param_bits": 4, "float16": True}
    numels = [500, 25000, 400000, 5000]  # LeNet-5-Caffe: 1975x values-only target (docs/methods.md#admm-presets)
    assert 32 * sum(numels) / model_size_budget(numels, 0.0054, 3) == pytest.approx(1975, rel=0.01)


# --- the command line end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("admm_cli") / "pre"
    assert main(["pretrain", "--preset", "digits", "--epochs", "10", "--out", str(out), "--quiet"]) == 0
    return out


def test_cli_compress_admm_end_to_end(pretrained_run, tmp_path, cli_compress):
    out = tmp_path / "admm"
    report = cli_compress("admm", pretrained_run, out)
    config = json.loads((out / "config.json").read_text())
    assert config["admm"]["nnz_budget"] == 0.1 and config["train"]["optimizer"] == "sgd"  # from the preset
    assert report["totals"]["nonzero_fraction"] <= 0.13  # measured over seeds 0-5: 10.9-11.4 %
    budget = model_size_budget([8192, 8192, 640], 0.1, 3)
    assert report["values_only_cr"]["cr"] >= 32 * 17024 / budget
    assert report["file"]["cr_all"] < report["values_only_cr"]["cr"]  # positions and codebooks cost
    assert report["errors"]["decoded"]["test_error"] < 15


def test_cli_refuses_a_bad_budget(pretrained_run, tmp_path, cli_refuses):
    err = cli_refuses("admm", pretrained_run, tmp_path / "x", "--bit-budget", "2", "--bwlb", "3")
    assert "setting 'bwlb' is 3" in err
