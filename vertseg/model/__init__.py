"""The dual-branch 3D U-Net (paper section 2.3). Knows nothing of data, training or Ray."""

from __future__ import annotations

from torch import nn

from vertseg.model.config import ModelConfig
from vertseg.model.output import SegIdOutput


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by `cfg`; every ablation of section 2.7.3 is a config value."""
    from vertseg.model.network import DualBranchUNet

    return DualBranchUNet(cfg)


__all__ = ["ModelConfig", "SegIdOutput", "build_model"]
