"""Convolutional building blocks of the U-Net (paper section 2.3)."""

from __future__ import annotations

import torch
from torch import nn

NEGATIVE_SLOPE = 0.01  # LeakyReLU slope, as in nnU-Net


def norm3d(channels: int) -> nn.Module:
    """InstanceNorm with affine weights and no running statistics: no per-rank buffers, so an EMA teacher
    copied after the DDP wrap stays identical on every rank, and train/eval behave the same on one patch."""
    return nn.InstanceNorm3d(channels, affine=True, track_running_stats=False)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by InstanceNorm and LeakyReLU; the first may stride by 2."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            norm3d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            norm3d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
        )


class UpBlock(nn.Module):
    """x2 transposed-conv upsampling, concatenation with the skip feature, then a ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, attention: nn.Module | None = None) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)
        self.attention = attention if attention is not None else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv(torch.cat([self.up(x), skip], dim=1)))
