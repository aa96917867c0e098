"""The Transformer alternative to the Mamba bottleneck (ablation 5 of section 2.7.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TransformerBlock3d(nn.Module):
    """Pre-LN multi-head self-attention + MLP over all voxels of a 3D map (same z-slowest token order as Mamba).

    Attention uses `scaled_dot_product_attention`, so flash / memory-efficient kernels are picked where the
    device has them; its cost still grows quadratically with the number of tokens.
    """

    def __init__(self, channels: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"transformer bottleneck: {channels} channels are not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(), nn.Linear(mlp_ratio * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        seq = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(seq)).view(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        seq = seq + self.proj(attended)
        seq = seq + self.mlp(self.norm2(seq))
        return seq.transpose(1, 2).reshape(b, c, *spatial)
