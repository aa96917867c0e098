"""The network's typed output."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SegIdOutput:
    """`seg`: foreground logits, full resolution first, then 1/2 and 1/4 (deep supervision), each (B, 1, D, H, W).

    `identification`: heatmap logits (B, K + 1, D/4, H/4, W/4), channel 0 = background; None for the
    segmentation-only variant.
    """

    seg: list[torch.Tensor]
    identification: torch.Tensor | None
