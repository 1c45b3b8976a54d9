"""A small vision transformer for 28×28 single-channel images, readable top to bottom.

The standard ViT (Dosovitskiy et al. 2021) at MNIST scale: the image is cut into
non-overlapping patches, each patch is linearly embedded (a strided ``nn.Conv2d``), a
learned class token is prepended and a learned position embedding added, then pre-LN
transformer blocks (LayerNorm → multi-head self-attention → residual, LayerNorm → GELU
MLP → residual), a final LayerNorm and a linear head on the class token.

Attention is written out from ``nn.Linear`` layers (query, key, value, output
projection) around ``F.scaled_dot_product_attention``, so every matrix the methods
compress is an ordinary ``nn.Linear`` weight that the default coverage rule finds. The
class token and the position embedding are bare ``nn.Parameter`` s: no coverage rule
selects them by default, so they stay dense (``cover_pattern`` can add them).

>>> model = VisionTransformer(ViTConfig())
>>> model(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ViTConfig", "VisionTransformer"]


@dataclass(frozen=True)
class ViTConfig:
    """The shape of the transformer: image and patch size, width, depth, heads, MLP width."""

    image_size: int = 28
    patch_size: int = 4
    channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    num_classes: int = 10

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: an image has no order to respect)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, heads, T, C / heads)
            return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        )
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    """The block's MLP: widen, GELU, project back."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.attn = SelfAttention(cfg.dim, cfg.heads)
        self.ln2 = nn.LayerNorm(cfg.dim)
        self.mlp = FeedForward(cfg.dim, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token, position embedding, pre-LN blocks, LayerNorm, linear head."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image size {cfg.image_size} is not a multiple of the patch size {cfg.patch_size}")
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        # Small random starts, as in the ViT reference code: large ones would swamp the patch embeddings.
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, patches, dim)
        # x.shape[0], not len(x): an ONNX export then keeps the batch size a variable, not the example's.
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))
