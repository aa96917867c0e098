"""The dual-branch 3D U-Net of section 2.3: shared encoder, long-range block, segmentation and identification decoders."""

from __future__ import annotations

import torch
from torch import nn

from vertseg.model.blocks import ConvBlock, UpBlock, norm3d, NEGATIVE_SLOPE
from vertseg.model.cbam import CBAM3d
from vertseg.model.config import ModelConfig
from vertseg.model.mamba import MambaBlock3d
from vertseg.model.output import SegIdOutput
from vertseg.model.transformer import TransformerBlock3d

ID_RESOLUTION_LEVEL = 2  # identification heatmaps at 1/4 resolution (section 2.3)
DEEP_SUPERVISION_LEVELS = (1, 2)  # extra segmentation heads at 1/2 and 1/4 (section 2.3)


def stage_widths(cfg: ModelConfig) -> list[int]:
    return [min(cfg.base_width * 2**i, cfg.max_width) for i in range(cfg.num_stages)]


class DualBranchUNet(nn.Module):
    """Shared encoder -> (Mamba | Transformer | nothing) -> segmentation decoder + identification decoder.

    `encode` returns the skip features (full resolution first, deepest last, the deepest after the
    bottleneck block); `decode` maps such a list to `SegIdOutput`, so methods may perturb features in between.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.num_stages <= ID_RESOLUTION_LEVEL:
            raise ValueError(f"model.num_stages={cfg.num_stages}: at least {ID_RESOLUTION_LEVEL + 1} stages are "
                             "needed for the 1/4-resolution identification and deep-supervision outputs")
        self.cfg = cfg
        widths = stage_widths(cfg)
        self.divisor = 2 ** (cfg.num_stages - 1)
        self.encoder = nn.ModuleList(
            ConvBlock(cfg.in_channels if i == 0 else widths[i - 1], widths[i], stride=1 if i == 0 else 2)
            for i in range(cfg.num_stages)
        )
        mamba_levels = range(cfg.num_stages) if cfg.mamba_placement == "all_encoder_stages" else [cfg.num_stages - 1]
        self.stage_mamba = nn.ModuleDict(
            {str(i): self._mamba(widths[i]) for i in mamba_levels if i != cfg.num_stages - 1}
            if cfg.bottleneck == "mamba" else {}
        )
        self.bottleneck = self._bottleneck(widths[-1])

        seg_cbam = cfg.cbam_placement == "both"
        self.seg_up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], self._cbam(widths[i]) if seg_cbam else None)
            for i in reversed(range(cfg.num_stages - 1))
        )
        self.seg_heads = nn.ModuleDict(
            {str(level): nn.Conv3d(widths[level], 1, 1) for level in (0, *DEEP_SUPERVISION_LEVELS)}
        )

        self.id_branch = cfg.identification_branch
        if self.id_branch:
            id_cbam = cfg.cbam_placement in ("id", "both")
            self.id_up = nn.ModuleList(
                UpBlock(widths[i + 1] if i == cfg.num_stages - 2 else widths[i + 1] // 2, widths[i], widths[i] // 2,
                        self._cbam(widths[i] // 2) if id_cbam else None)
                for i in reversed(range(ID_RESOLUTION_LEVEL, cfg.num_stages - 1))
            )
            id_width = widths[ID_RESOLUTION_LEVEL] // 2 if len(self.id_up) else widths[ID_RESOLUTION_LEVEL]
            self.id_out = nn.Sequential(
                nn.Conv3d(id_width, id_width, 3, padding=1, bias=False),
                norm3d(id_width),
                nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
                self._cbam(id_width) if id_cbam else nn.Identity(),
                nn.Conv3d(id_width, cfg.num_classes + 1, 1),
            )

    def _mamba(self, channels: int) -> MambaBlock3d:
        c = self.cfg
        return MambaBlock3d(channels, c.mamba_d_state, c.mamba_d_conv, c.mamba_expand, c.mamba_bidirectional)

    def _cbam(self, channels: int) -> CBAM3d:
        return CBAM3d(channels, self.cfg.cbam_reduction, self.cfg.cbam_kernel_size)

    def _bottleneck(self, channels: int) -> nn.Module:
        if self.cfg.bottleneck == "mamba":
            return self._mamba(channels)
        if self.cfg.bottleneck == "transformer":
            return TransformerBlock3d(channels, self.cfg.transformer_heads, self.cfg.transformer_mlp_ratio)
        return nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"model input must be (B, {self.cfg.in_channels}, D, H, W), got {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(f"model input spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor} "
                             f"(2**(num_stages-1)); pad or crop the patch")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x)
        features = []
        for i, stage in enumerate(self.encoder):
            x = stage(x)
            if str(i) in self.stage_mamba:
                x = self.stage_mamba[str(i)](x)
            features.append(x)
        features[-1] = self.bottleneck(features[-1])
        return features

    def decode(self, features: list[torch.Tensor]) -> SegIdOutput:
        if len(features) != self.cfg.num_stages:
            raise ValueError(f"decode expects {self.cfg.num_stages} feature maps, got {len(features)}")
        x = features[-1]
        deepest = self.cfg.num_stages - 1  # with three stages the 1/4 head reads the bottleneck itself
        seg = {deepest: self.seg_heads[str(deepest)](x)} if str(deepest) in self.seg_heads else {}
        for up, level in zip(self.seg_up, reversed(range(self.cfg.num_stages - 1))):
            x = up(x, features[level])
            if str(level) in self.seg_heads:
                seg[level] = self.seg_heads[str(level)](x)
        identification = None
        if self.id_branch:
            y = features[-1]
            for up, level in zip(self.id_up, reversed(range(ID_RESOLUTION_LEVEL, self.cfg.num_stages - 1))):
                y = up(y, features[level])
            identification = self.id_out(y)
        return SegIdOutput(seg=[seg[0], *(seg[level] for level in DEEP_SUPERVISION_LEVELS)], identification=identification)

    def forward(self, x: torch.Tensor) -> SegIdOutput:
        return self.decode(self.encode(x))
