"""The original train.py's ViT (``--model vit``): a convolutional ViT with relative-position attention.

Tokens stay on a 2-D grid (N, c, h, w) throughout; every linear map is a 1×1 conv.

* Embedding: conv3×3 (in → 32) → GELU → conv p×p, stride p (32 → c), plus a learned
  absolute position embedding (c, h, w), h = w = image_size / p.
* ``depth`` blocks, each two gated residuals x + γ·f(x) with γ initialised at 0:
  f = LayerNorm over channels → multi-head self-attention (heads of ``head_channels``);
  f = LayerNorm → conv1×1 (c → 4c) → GELU → conv1×1 (4c → c).
* Attention of token j over keys i: softmax_i(k_i·q_j / √d + r_h[Δy, Δx]) with one learned
  bias per head and relative offset (Δy, Δx) = (y_i − y_j, x_i − x_j), (2h−1)(2w−1) per head.
* Head: LayerNorm → GELU → global average pool → flatten → dropout → linear (c → C, no bias).

Initialisation (the original's ``reset_parameters``): Kaiming-normal (fan-in) conv and
linear weights, zero biases, LayerNorm 1 / 0, both position tables N(0, 0.02²), γ = 0.
The head is replaced after that in the original, so it keeps PyTorch's default init.

train.py's network: c = 256, head_channels = 32 (8 heads), depth 8, patch 2, head
dropout 0.3 on 32×32 images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RELVIT = dict(channels=256, head_channels=32, depth=8, patch_size=2, head_dropout=0.3, stem_channels=32)


class GatedResidual(nn.Module):
    """x + γ · f(x), γ a learned scalar (0 at init)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.f = nn.Sequential(*layers)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.f(x)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (N, c, h, w)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def relative_index(h: int, w: int) -> Tensor:
    """Index into the (2h−1)(2w−1) offsets for every (key i, query j) pair: (h·w · h·w,) int64."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)  # (hw,)
    dy = y[:, None] - y[None, :] + h - 1  # (hw, hw), row i (key), column j (query)
    dx = x[:, None] - x[None, :] + w - 1
    return (dy * (2 * w - 1) + dx).reshape(-1)


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention on a token grid with a learned bias per head and relative offset."""

    def __init__(self, channels: int, head_channels: int, grid: tuple[int, int]):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"channels ({channels}) must be a multiple of head_channels ({head_channels})")
        self.heads, self.head_channels = channels // head_channels, head_channels
        self.keys, self.queries, self.values = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.unify = nn.Conv2d(channels, channels, 1)
        h, w = grid
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, (2 * h - 1) * (2 * w - 1)))
        self.register_buffer("rel_index", relative_index(h, w))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        split = lambda t: t.reshape(b, self.heads, self.head_channels, h * w)  # noqa: E731
        k, q, v = split(self.keys(x)), split(self.queries(x)), split(self.values(x))  # (b, H, d, L)
        bias = self.rel_bias[:, self.rel_index].reshape(self.heads, h * w, h * w)  # (H, L_key, L_query)
        logits = k.transpose(-2, -1) @ q / self.head_channels ** 0.5 + bias  # (b, H, L_key, L_query)
        out = v @ F.softmax(logits, dim=-2)  # (b, H, d, L_query)
        return self.unify(out.reshape(b, c, h, w))


class PositionEmbedding(nn.Module):
    """x + E, E a learned (c, h, w) table."""

    def __init__(self, channels: int, grid: tuple[int, int]):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(channels, *grid))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.table


def relvit_body(in_chans: int, image_size: int, channels: int = 256, head_channels: int = 32, depth: int = 8,
                patch_size: int = 2, head_dropout: float = 0.3, stem_channels: int = 32) -> nn.Sequential:
    """Everything up to the head's linear layer: images (N, in, s, s) -> Φ (N, channels)."""
    if image_size % patch_size:
        raise ValueError(f"vit needs an image size divisible by the patch size {patch_size}; got {image_size}")
    grid = (image_size // patch_size,) * 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, stem_channels, 3, padding=1), nn.GELU(),
        nn.Conv2d(stem_channels, channels, patch_size, stride=patch_size),
        PositionEmbedding(channels, grid),
    ]
    for _ in range(depth):
        layers += [
            GatedResidual(ChannelLayerNorm(channels), RelativeSelfAttention(channels, head_channels, grid)),
            GatedResidual(ChannelLayerNorm(channels), nn.Conv2d(channels, 4 * channels, 1), nn.GELU(),
                          nn.Conv2d(4 * channels, channels, 1)),
        ]
    layers += [ChannelLayerNorm(channels), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(head_dropout)]
    body = nn.Sequential(*layers)
    _init(body)
    return body


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PositionEmbedding):
            nn.init.normal_(m.table, std=0.02)
        elif isinstance(m, RelativeSelfAttention):
            nn.init.normal_(m.rel_bias, std=0.02)
        elif isinstance(m, GatedResidual):
            nn.init.zeros_(m.gamma)
