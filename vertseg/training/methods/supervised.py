"""Fully supervised methods: `seg_only` (segmentation branch only, Fig. 2 baseline) and `fsl` (dual branch, +ID)."""

from __future__ import annotations

import torch
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.methods.base import Method, StepContext, Views, supervised_loss


class Supervised(Method):
    """L_sup only (Eq. 3). For `seg_only` the model config has no identification branch, so L_sup = L_seg."""

    def __init__(self, name: str) -> None:
        self.name = name

    def loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        outputs, _ = student(views.labeled["image"])
        return supervised_loss(outputs[0], views.labeled, ctx.config, ctx.logs)
