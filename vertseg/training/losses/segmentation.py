"""L_seg (Eq. 4-6): deep-supervised soft Dice + BCE on the foreground logit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 5 over the whole batch (one Dice per batch, as nnU-Net's batch Dice), p = sigmoid(logits)."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    intersection = (prob * target).sum()
    return 1.0 - (2.0 * intersection + eps) / (prob.sum() + target.sum() + eps)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 6, computed from logits for numerical stability."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def resize_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour target for a deep-supervision scale (as nnU-Net downsamples its targets)."""
    if tuple(mask.shape[2:]) == tuple(shape):
        return mask
    return F.interpolate(mask.float(), size=tuple(shape), mode="nearest")


def dice_bce(logits: torch.Tensor, target: torch.Tensor, alpha_seg: float, eps: float) -> torch.Tensor:
    """One scale of Eq. 4: alpha_seg * Dice + (1 - alpha_seg) * BCE."""
    return alpha_seg * soft_dice_loss(logits, target, eps) + (1.0 - alpha_seg) * bce_loss(logits, target)


def deep_supervision_loss(
    seg_logits: Sequence[torch.Tensor], mask: torch.Tensor, scale_weights: Sequence[float], alpha_seg: float, eps: float
) -> torch.Tensor:
    """Eq. 4: sum_s w_s (alpha_seg Dice_s + (1 - alpha_seg) CE_s) over full, 1/2, 1/4 resolution."""
    if len(seg_logits) != len(scale_weights):
        raise ValueError(f"{len(seg_logits)} segmentation outputs but {len(scale_weights)} scale weights")
    return sum(
        w * dice_bce(logits, resize_mask(mask, logits.shape[2:]), alpha_seg, eps)
        for w, logits in zip(scale_weights, seg_logits)
    )
