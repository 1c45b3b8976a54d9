import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightshare.core.errors import ConfigError
from weightshare.core.kmeans import kmeans1d
from weightshare.core.settings import validate
from weightshare.data.datasets import DataBundle, Split
from weightshare.methods import CONFIGS, METHODS
from weightshare.methods.dc.config import DC_PRESETS, DCConfig
from weightshare.methods.dc.method import DeepCompression, check_epochs, layer_bits, quantize_layer
from weightshare.methods.dc.pruning import kept_schedule, magnitude_mask
from weightshare.models.architectures import build_model
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit


def _small(digits, n=256):
    return DataBundle("digits", Split(digits.train.x[:n], digits.train.y[:n]), digits.val, digits.test, 10)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp")


def _weights(model):
    return {n: p for n, p in model.named_parameters() if n.endswith("weight")}


# --- pruning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_weights_stay_exactly_zero_through_retraining_and_finetuning(digits, optimizer):
    model = _mlp()
    cfg = DCConfig(kept=[0.3], prune_rounds=2, prune_epochs=2, quant_epochs=2, bits_fc=3, lr_centroids=1e-3)
    dc = DeepCompression(model, cfg)
    first_masks = {n: m.clone() for n, m in dc.masks.items()}
    seen = []

    def check(epoch, net):
        for name, p in _weights(net).items():
            assert bool((p.detach()[~dc.masks[name]] == 0).all()), (epoch, name)
        seen.append(epoch)

    # a large lr and weight decay: momentum and L2 would move pruned weights if they could
    train = TrainConfig(epochs=cfg.total_epochs, lr=1e-2, weight_decay=1e-2, optimizer=optimizer)
    fit(model, _small(digits), train, method=dc, batch_size=32, progress=False, on_epoch=check)
    assert seen == [0, 1, 2, 3, 4, 5] and dc.quantized
    for name, p in _weights(model).items():
        assert bool((~dc.masks[name] | ~first_masks[name] == ~dc.masks[name]).all())  # pruning is cumulative
        assert bool((p.detach()[~dc.masks[name]] == 0).all())
        assert int((p.detach() != 0).sum()) <= int(dc.masks[name].sum())


def test_gradient_of_pruned_weights_is_zero(digits):
    model = _mlp()
    dc = DeepCompression(model, DCConfig(kept=[0.2], prune_rounds=2, prune_epochs=1))
    F.cross_entropy(model(digits.train.x[:64]), digits.train.y[:64]).backward()
    for name, p in _weights(model).items():
        assert bool((p.grad[~dc.masks[name]] == 0).all())
        assert float(p.grad[dc.masks[name]].abs().sum()) > 0


def test_iterative_pruning_reaches_the_per_layer_targets(digits):
    model = _mlp()
    targets = [0.2, 0.4, 0.6]
    cfg = DCConfig(kept=[0.2, 0.4, 0.6], prune_rounds=3, prune_epochs=1, quant_epochs=1)
    dc = DeepCompression(model, cfg)
    kept_per_round = []

    def record(epoch, net):
        kept_per_round.append([int(m.sum()) / m.numel() for m in dc.masks.values()])

    fit(
        model,
        _small(digits),
        TrainConfig(epochs=cfg.total_epochs, lr=1e-3),
        method=dc,
        batch_size=64,
        progress=False,
        on_epoch=record,
    )
    shapes = [m.numel() for m in dc.masks.values()]
    for r in range(3):  # round r + 1 was applied at the end of epoch r (round 1 when the method was built)
        expected = [round(kept_schedule(t, 3)[min(r + 1, 2)] * n) / n for t, n in zip(targets, shapes, strict=True)]
        assert kept_per_round[r] == pytest.approx(expected, abs=1e-12)
    final = [round(t * n) / n for t, n in zip(targets, shapes, strict=True)]
    assert kept_per_round[-1] == pytest.approx(final, abs=1e-12)
    assert [float((p != 0).float().mean()) for p in _weights(model).values()] == pytest.approx(final, abs=0.01)


def test_std_rule_prunes_below_quality_times_std():
    model = _mlp()
    before = {n: p.detach().clone() for n, p in _weights(model).items()}
    dc = DeepCompression(model, DCConfig(prune_by="std", quality=[0.5, 1.0, 2.0], prune_rounds=2, prune_epochs=0))
    for (name, w), s in zip(before.items(), [0.5, 1.0, 2.0], strict=True):
        assert torch.equal(dc.masks[name], w.abs() >= s * w.std())  # no retraining: rounds compose to the last


# --- trained quantization ------------------------------------------------------------------------------


def test_layer_quantization_is_kmeans_of_the_nonzeros():
    torch.manual_seed(3)
    w = torch.randn(40, 30)
    mask = magnitude_mask(w, 0.25)
    for init in ("linear", "density", "kmeans++"):
        centroids, index = quantize_layer(w, mask, 4, init=init, seed=5)
        ref = kmeans1d(w[mask], 16, init=init, seed=5)
        assert torch.equal(centroids, ref.centroids)
        assert torch.equal(index[mask], ref.labels + 1) and bool((index[~mask] == 0).all())


def test_method_fills_centroids_with_the_layers_kmeans():
    model = _mlp()
    original = {n: p.detach().clone() for n, p in _weights(model).items()}
    dc = DeepCompression(model, DCConfig(kept=[0.5], prune_rounds=1, prune_epochs=0, bits_fc=3, kmeans_init="density"))
    for name, w in original.items():
        ref = kmeans1d(w[magnitude_mask(w, 0.5)], 8, init="density")
        assert torch.equal(dc.centroids[name].detach()[: ref.centroids.numel()], ref.centroids)
        assert torch.equal(_weights(model)[name].detach(), torch.cat([torch.zeros(1), ref.centroids])[dc.index[name]])


def test_centroid_gradient_is_the_summed_weight_gradient():
    torch.manual_seed(1)
    layer = nn.Linear(7, 5)
    dc = DeepCompression(layer, DCConfig(kept=[0.6], prune_rounds=1, prune_epochs=0, bits_fc=2))
    x, y = torch.randn(16, 7), torch.randint(0, 5, (16,))
    F.cross_entropy(layer(x), y).backward()
    got = dc.centroids["weight"].grad
    # autograd through W = [0, C][I]: the gradient the paper's Fig. 3 sums by hand
    c = dc.centroids["weight"].detach().clone().requires_grad_()
    w = torch.cat([c.new_zeros(1), c])[dc.index["weight"]]
    F.cross_entropy(F.linear(x, w, layer.bias.detach()), y).backward()
    assert torch.allclose(got, c.grad, atol=1e-7, rtol=1e-5)
    # and the same as summing dL/dW of a plain dense copy over each cluster
    dense = layer.weight.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(x, dense, layer.bias.detach()), y).backward()
    by_hand = torch.stack([dense.grad[dc.index["weight"] == k + 1].sum() for k in range(4)])
    assert torch.allclose(got, by_hand, atol=1e-7, rtol=1e-5) and float(got.abs().sum()) > 0
    assert bool((layer.weight.grad == 0).all()) and layer.bias.grad is not None  # W is tied, biases train
    dc.remove_hooks()
    layer.zero_grad()
    F.cross_entropy(layer(x), y).backward()
    assert torch.allclose(layer.weight.grad, dense.grad)  # an ordinary layer again


def test_fine_tuning_keeps_at_most_2b_values_and_finalize_is_exact(digits):
    model = _mlp()
    cfg = DCConfig(kept=[0.4], prune_rounds=1, prune_epochs=1, quant_epochs=2, bits_fc=3, lr_centroids=1e-3)
    dc = DeepCompression(model, cfg)
    start = {n: c.detach().clone() for n, c in dc.centroids.items()}
    fit(model, _small(digits), TrainConfig(epochs=cfg.total_epochs), method=dc, batch_size=64, progress=False)
    for name, p in _weights(model).items():
        assert torch.unique(p.detach()[p.detach() != 0]).numel() <= 8
        assert not torch.equal(dc.centroids[name].detach(), start[name])  # the centroids were trained
    q = dc.finalize(model)
    assert [len(cb) <= 9 for cb in q.codebooks] == [True] * 3 and all(cb[0].item() == 0.0 for cb in q.codebooks)
    assert [q.quantized[n].codebook for n in q.quantized] == [0, 1, 2]
    state = model.state_dict()
    assert all(torch.equal(q.to_state_dict()[k], state[k]) for k in state)  # finalize changes nothing
    assert all(bool((q.quantized[n].indices != 0).eq(dc.masks[n]).all()) for n in q.quantized)


def test_conv_and_fc_layers_get_their_own_bit_widths():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    cfg = DCConfig(kept=[0.9, 0.5], prune_rounds=1, prune_epochs=0, bits_conv=4, bits_fc=2)
    dc = DeepCompression(net, cfg)
    assert dc.bits == {"0.weight": 4, "2.weight": 2} and layer_bits(net[0].weight, cfg) == 4
    q = dc.finalize(net)
    distinct = [q.unique_values(n) - 1 for n in q.quantized]  # non-zero values per layer (empty clusters dropped)
    assert 12 <= distinct[0] <= 16 and distinct[1] == 4
    assert [len(cb) for cb in q.codebooks] == [d + 1 for d in distinct]
    assert q.quantized["0.weight"].nnz == round(0.9 * 72) and q.quantized["2.weight"].nnz == round(0.5 * 2880)


# --- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bits_fc": 0}, "setting 'bits_fc' must be >= 1"),
        ({"bits_conv": 17}, "setting 'bits_conv' must be <= 16"),
        ({"kept": [0.5, 1.2]}, "setting 'kept' must be <= 1; got 1.2"),
        ({"kept": [0]}, "setting 'kept' must be > 0; got 0.0"),
        ({"kept": []}, "setting 'kept' must hold at least one value"),
        ({"kept": "0.1,0.2"}, "setting 'kept' must be a list"),
        ({"kept": [0.1, "a"]}, "setting 'kept' must be a number, got 'a'"),
        ({"kept": [float("nan")]}, "setting 'kept' must be a finite number"),
        ({"quality": [-1.0]}, "setting 'quality' must be >= 0; got -1.0"),
        ({"prune_by": "l1"}, "setting 'prune_by' must be one of kept, std"),
    ],
)
def test_bad_settings_name_the_setting(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(DCConfig(**changes))


def test_wrong_number_of_layer_values_and_epochs_are_refused():
    with pytest.raises(ConfigError, match=r"setting 'kept' has 2 values for 3 covered layers \(net.0.weight"):
        DeepCompression(_mlp(), DCConfig(kept=[0.1, 0.2]))
    with pytest.raises(ConfigError, match="setting 'epochs' is 5 but the Deep Compression schedule needs 8"):
        check_epochs(DCConfig(prune_rounds=3, prune_epochs=2), TrainConfig(epochs=5))
    dc = DeepCompression(_mlp(), DCConfig(prune_rounds=3, prune_epochs=2))
    with pytest.raises(ConfigError, match="stopped before its quantization step.*'epochs' to 8"):
        dc.finalize(_mlp())


def test_presets_match_the_paper_and_their_epochs():
    assert CONFIGS["dc"] is DCConfig and METHODS[DCConfig] is DeepCompression and DCConfig.presets is DC_PRESETS
    for name in DC_PRESETS:
        cfg = DCConfig.preset(name)
        check_epochs(cfg, cfg.train)
    lenet300 = DCConfig.preset("lenet300")
    assert lenet300.kept == [0.08, 0.09, 0.26]
    # picked on validation from a fresh pretrain (benchmarks/RESULTS.md): cosine decay, distillation, 5-bit fc
    assert (lenet300.train.lr_schedule, lenet300.distill.kd_temp, lenet300.bits_fc) == ("cosine", 2.0, 5)
    lenet5 = DCConfig.preset("lenet5")
    assert lenet5.kept == [0.66, 0.12, 0.08, 0.19] and (lenet5.bits_conv, lenet5.bits_fc) == (8, 5)


# --- resume and the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [1, 3])  # in the pruning phase / in the fine-tuning phase
def test_resume_equals_uninterrupted(digits, resume_check, stop_after):
    cfg = DCConfig(kept=[0.3], prune_rounds=2, prune_epochs=1, quant_epochs=3, bits_fc=3, lr_centroids=1e-3)
    train = TrainConfig(epochs=cfg.total_epochs, lr=2e-3, weight_decay=1e-4)
    data = _small(digits)

    (whole, dc), (second, dc2) = resume_check(
        lambda: (m := _mlp(), DeepCompression(m, cfg)), data, train, stop_epoch=stop_after - 1
    )
    qa, qb = dc.finalize(whole), dc2.finalize(second)
    assert all(torch.equal(a, b) for a, b in zip(qa.codebooks, qb.codebooks, strict=True))


def test_cli_end_to_end_on_digits(pretrained_digits, tmp_path, cli_compress):
    out = tmp_path / "B"
    report = cli_compress("dc", pretrained_digits, out)
    # the weights were already C[I] when training stopped: decoding the file changes nothing
    assert report["errors"]["decoded"] == report["errors"]["retrained"]
    assert report["totals"]["nonzero_fraction"] == pytest.approx(0.3, abs=0.002)
    assert report["errors"]["decoded"]["test_error"] <= 8.0  # measured over seeds 0-5: 2.2-4.4 %
    assert max(layer["unique"] for layer in report["layers"]) <= 2**4 + 1
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert "sparsity" in metrics[0] and sum(line.startswith("retrain") for line in metrics) == 12


def test_cli_refuses_bad_settings(pretrained_digits, tmp_path, cli_refuses):
    err = cli_refuses("dc", pretrained_digits, tmp_path / "C", "--kept", "0.5,1.5")
    assert "setting 'kept' must be <= 1; got 1.5" in err
    err = cli_refuses("dc", pretrained_digits, tmp_path / "C", "--kept", "0.5,x")
    assert "setting 'kept': 'x' is not a number (in '0.5,x')" in err
