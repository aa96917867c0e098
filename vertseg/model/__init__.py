"""The dual-branch 3D U-Net (paper section 2.3). Knows nothing of data, training or Ray.

Attributes resolve lazily so that reading `vertseg.model.config` (every CLI start) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vertseg.model.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

    from vertseg.model.output import SegIdOutput


def build_model(cfg: ModelConfig) -> "nn.Module":
    """The network described by `cfg`; every ablation of section 2.7.3 is a config value."""
    from vertseg.model.network import DualBranchUNet

    return DualBranchUNet(cfg)


def __getattr__(name: str) -> Any:
    if name == "SegIdOutput":
        from vertseg.model.output import SegIdOutput

        return SegIdOutput
    raise AttributeError(f"module 'vertseg.model' has no attribute {name!r}")


__all__ = ["ModelConfig", "SegIdOutput", "build_model"]
