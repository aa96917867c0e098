"""Inference and post-processing settings (paper section 2.6)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seg_threshold: float = Field(0.5, gt=0, lt=1)  # section 2.6: foreground at probability 0.5
    overlap: float = Field(0.5, ge=0, lt=1)
    window_batch_size: int = Field(2, ge=1)
    mirror_tta: bool = False
    min_fragment_ml: float = Field(0.5, ge=0)
    decoder: Literal["dp", "paper"] = "dp"
    allow_l6: bool = False
    allow_t13: bool = False
    localisation_spacing_mm: float = Field(4.0, gt=0)
