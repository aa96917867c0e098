"""Network settings (paper section 2.3); each ablation of section 2.7.3 is one value here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vertseg.config_base import ConfigModel


class ModelConfig(ConfigModel):
    in_channels: int = 1
    base_width: int = Field(16, ge=1)
    num_stages: int = Field(4, ge=3)  # section 2.3: four encoder stages, x2 downsampling
    identification_branch: bool = True  # False = the "baseline" (segmentation-only) row of Fig. 2
    num_classes: int = Field(24, ge=1)  # K vertebra classes (C1-L5); background is added by the model
    bottleneck: Literal["mamba", "transformer", "none"] = "mamba"  # section 2.7.3 (5)
    mamba_placement: Literal["bottleneck", "all_encoder_stages"] = "bottleneck"  # section 2.7.3 (3)
    cbam_placement: Literal["none", "id", "both"] = "id"  # section 2.7.3 (4)
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_bidirectional: bool = False
    transformer_heads: int = Field(4, ge=1)
    transformer_mlp_ratio: int = Field(4, ge=1)  # standard ViT MLP width; the paper does not state one
    max_width: int = Field(320, ge=1)  # channel cap per stage, as in nnU-Net
    cbam_reduction: int = Field(8, ge=1)  # channel-attention MLP reduction (CBAM uses 16 on 2D nets; 8 fits narrow 3D stages)
    cbam_kernel_size: int = Field(7, ge=1)  # spatial-attention kernel, CBAM default
