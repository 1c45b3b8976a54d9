import math

import pytest
import torch

from weightshare.codec import load_compressed, save_compressed
from weightshare.core.coverage import covered_parameters
from weightshare.data.datasets import DataBundle, Split
from weightshare.methods import CONFIGS, build_method
from weightshare.models.architectures import build_model
from weightshare.models.vit import SelfAttention, VisionTransformer, ViTConfig
from weightshare.train.config import TrainConfig
from weightshare.train.loop import fit


def test_attention_is_softmax_of_scaled_dot_products_per_head():
    torch.manual_seed(0)
    attn = SelfAttention(dim=8, heads=2).eval()
    x = torch.randn(3, 5, 8)
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    heads = []
    for h in range(2):  # each head attends with its own 4 channels
        cols = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., cols])
    expected = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_shapes_tokens_and_parameter_layout():
    cfg = ViTConfig()
    model = VisionTransformer(cfg)
    assert cfg.num_patches == 49  # 7 x 7 patches of 4 x 4 pixels
    assert model.pos_embed.shape == (1, 50, 64) and model.cls_token.shape == (1, 1, 64)
    assert len(model.blocks) == 4 and model.blocks[0].mlp.fc.out_features == 128
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert VisionTransformer(ViTConfig(num_classes=3))(torch.zeros(1, 1, 28, 28)).shape == (1, 3)


def test_the_head_reads_the_class_token_and_positions_matter():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig()).eval()
    images = torch.rand(2, 1, 28, 28)
    swapped = images.clone()
    swapped[:, :, :4, :4], swapped[:, :, -4:, -4:] = images[:, :, -4:, -4:], images[:, :, :4, :4]
    # Two patches trade places: without the position embedding attention could not tell the images apart.
    assert not torch.allclose(model(images), model(swapped), atol=1e-4)
    with torch.no_grad():
        model.pos_embed.zero_()
    torch.testing.assert_close(model(images), model(swapped), rtol=1e-4, atol=1e-5)


def test_default_coverage_takes_every_matrix_and_leaves_tokens_and_norms_dense():
    covered = covered_parameters(VisionTransformer(ViTConfig()))
    per_block = ["attn.query", "attn.key", "attn.value", "attn.proj", "mlp.fc", "mlp.proj"]
    expected = ["patch_embed"] + [f"blocks.{b}.{name}" for b in range(4) for name in per_block] + ["head"]
    assert list(covered) == [f"{name}.weight" for name in expected]
    assert sum(p.numel() for p in covered.values()) == 132_736


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ViTConfig(patch_size=5), "image size 28 is not a multiple of the patch size 5"),
        (ViTConfig(heads=3), "width 64 is not divisible by 3 heads"),
    ],  # fmt: skip
)
def test_inconsistent_shapes_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(cfg)


def test_it_learns_a_small_problem():
    """A few dozen Adam steps fit 32 random images to their labels: gradients reach every layer."""
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(dim=32, depth=2, heads=2, mlp_dim=64))
    images, labels = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert (model(images).argmax(1) == labels).float().mean() > 0.9


@pytest.fixture(scope="module")
def small_28px(digits):
    """The digits upscaled to 28 x 28, a few hundred of them: a problem the transformer learns in seconds."""

    def upscale(split, n):
        return Split(torch.nn.functional.interpolate(split.x[:n], size=28, mode="bilinear"), split.y[:n])

    return DataBundle("digits28", upscale(digits.train, 256), upscale(digits.val, 64), upscale(digits.test, 64), 10)


@pytest.fixture(scope="module")
def pretrained_vit(small_28px):
    torch.manual_seed(0)
    model = build_model("vit")
    fit(model, small_28px, TrainConfig(epochs=1, lr=1e-3), batch_size=32, progress=False)
    return model.state_dict()


@pytest.mark.parametrize("method", ["sws", "dc", "admm", "pwfn"])
def test_every_method_compresses_the_transformer_into_a_file_that_decodes_to_it(
    method, small_28px, pretrained_vit, tmp_path
):
    """Each method's ``vit`` preset, shortened to one epoch: the class token, the position embedding and the
    LayerNorms travel dense and exact, every covered matrix comes back as its quantized values."""
    one_epoch = {"train": {"epochs": 1}, "dc": {"prune_rounds": 1, "prune_epochs": 1, "quant_epochs": 0},
                 "pwfn": {"schedule": [0.5, 1.0], "first_epochs": 0, "rest_epochs": 1},
                 "admm": {"finetune_epochs": 0}}  # fmt: skip
    config = CONFIGS[method].preset("vit")
    config = config.updated({k: v for k, v in one_epoch.items() if k in ("train", method)})
    model = build_model("vit")
    model.load_state_dict(pretrained_vit)
    torch.manual_seed(0)
    compressor = build_method(config, model, len(small_28px.train))
    compressor.check_train(config.train)
    fit(model, small_28px, config.train, method=compressor, batch_size=64, progress=False)
    qmodel = compressor.finalize(model)
    assert set(qmodel.quantized) == set(covered_parameters(model))
    assert {"cls_token", "pos_embed", "ln_f.weight", "blocks.3.ln2.bias"} <= set(qmodel.dense)

    save_compressed(qmodel, tmp_path / "vit.wsz")
    decoded = load_compressed(tmp_path / "vit.wsz").load_into(build_model("vit"))
    for name, tensor in decoded.state_dict().items():
        want = qmodel.dequantize(name) if name in qmodel.quantized else model.state_dict()[name]
        assert torch.equal(tensor, want), name
    distinct = torch.cat([decoded.state_dict()[n].flatten() for n in qmodel.quantized]).unique().numel()
    assert distinct < 1000  # shared values, not 132,736 floats
