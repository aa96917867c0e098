"""3D convolutional block attention module (Woo et al., CBAM, extended to volumes): channel then spatial attention."""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention3d(nn.Module):
    """Squeeze by global average and max pooling, a shared bottleneck MLP, sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv3d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3, 4), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3, 4), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention3d(nn.Module):
    """Channel-wise mean and max maps, one k^3 convolution, sigmoid gate per voxel."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM3d(nn.Sequential):
    """Channel attention followed by spatial attention (the order of the CBAM paper and of section 2.3)."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__(ChannelAttention3d(channels, reduction), SpatialAttention3d(kernel_size))
