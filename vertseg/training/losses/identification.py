"""The identification terms of Eq. 3: L_cls^KL (Eq. 7) and L_cls^inst (Eq. 8), their dynamic reweighting, and the
per-position class competition that inference reads (an addition, `loss.id_ce_weight`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spatial_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log P: each channel of (B, C, Z, Y, X) normalised over space (the "predicted spatial distribution")."""
    flat = logits.float().flatten(2)
    return (flat - torch.logsumexp(flat, dim=-1, keepdim=True)).view_as(logits)


def kl_heatmap_loss(id_logits: torch.Tensor, heatmaps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eq. 7: KL(H || P) per present vertebra, averaged over present vertebrae.

    id_logits: (B, K+1, z, y, x) with channel 0 = background (not a heatmap); heatmaps: (B, K, z, y, x), each summing
    to 1 where `present` (B, K). Returns 0 (with a graph) when no vertebra is present.
    """
    log_p = spatial_log_softmax(id_logits[:, 1:])
    h = heatmaps.float()
    log_h = torch.log(h.clamp(min=1e-30))
    kl = (h * (log_h - log_p)).flatten(2).sum(-1)  # (B, K)
    weight = present.float()
    return (kl * weight).sum() / weight.sum().clamp(min=1.0)


def downsample_labels(labels: torch.Tensor, shape: tuple[int, int, int], num_classes: int) -> torch.Tensor:
    """Ground-truth per-vertebra instance maps I_m at low resolution: one-hot (B, K+1, *shape), area-averaged.

    Averaging keeps a vertebra thinner than the downsampling factor visible (nearest sampling would drop it).
    """
    one_hot = F.one_hot(labels.long(), num_classes + 1).permute(0, 4, 1, 2, 3).float()
    return F.adaptive_avg_pool3d(one_hot, shape)


def instance_dice_loss(id_logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 8: mean over ground-truth vertebrae m of (1 - soft Dice(I_m, m)).

    The predicted instance map m is the class-softmax of the identification logits; a prediction that merges two
    vertebrae into one class, or splits one over two classes, loses Dice on both.
    """
    num_classes = id_logits.shape[1] - 1
    prob = torch.softmax(id_logits.float(), dim=1)[:, 1:]
    target = downsample_labels(labels, tuple(id_logits.shape[2:]), num_classes)[:, 1:]
    inter = (prob * target).flatten(2).sum(-1)
    denom = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    dice = (2.0 * inter + eps) / (denom + eps)  # (B, K)
    present = target.flatten(2).sum(-1) > 0
    weight = present.float()
    return ((1.0 - dice) * weight).sum() / weight.sum().clamp(min=1.0)


def class_competition_loss(id_logits: torch.Tensor, labels: torch.Tensor, background_weight: float = 0.5,
                           balance: str = "vertebra") -> torch.Tensor:
    """Per-position cross-entropy over the K+1 identification channels on the 1/4 grid: which vertebra (or none)
    each cell holds. Not in the paper: inference names a vertebra by the class competition at each position
    (channel softmax), which neither the spatial KL (per-channel normalisation) nor the instance Dice (almost flat
    over 25 channels) teaches. Targets are the area-averaged one-hot labels (soft at vertebra borders).

    Bone cells (over half vertebra): `balance="vertebra"` averages each vertebra's cells first, then the vertebrae,
    as Eq. 7-8 average over vertebrae; a C4 fills ~40 cells of a 3 mm patch pool where an L3 fills ~640, so with
    `"cell"` (every bone cell alike) the cervical classes carry ~1 % of the term and were never predicted
    (docs/training.md). Plus `background_weight` times the mean over the other cells, so air cannot drown the
    vertebrae while bone outside the labels (sacrum, skull base) still learns "not a vertebra"."""
    num_channels = id_logits.shape[1]
    target = downsample_labels(labels, tuple(id_logits.shape[2:]), num_channels - 1)
    ce = -(target * torch.log_softmax(id_logits.float(), dim=1)).sum(dim=1)
    bone = target[:, 0] < 0.5
    rest_term = ce[~bone].mean() if (~bone).any() else ce.sum() * 0.0
    if not bone.any():
        return ce.sum() * 0.0 + background_weight * rest_term
    if balance == "cell":
        return ce[bone].mean() + background_weight * rest_term
    batch_index = torch.arange(ce.shape[0], device=ce.device).view(-1, 1, 1, 1).expand_as(ce)
    vertebra = (batch_index * num_channels + target.argmax(dim=1))[bone]  # one id per (sample, dominant class)
    counts = torch.bincount(vertebra, minlength=ce.shape[0] * num_channels).float()
    per_cell = ce[bone] / counts[vertebra]
    return per_cell.sum() / (counts > 0).sum() + background_weight * rest_term


def combine_identification(kl: torch.Tensor, inst: torch.Tensor, rule: str) -> tuple[torch.Tensor, float, float]:
    """The "dynamically reweighted" sum L_cls^KL + L_cls^inst of Eq. 3.

    `lagging` (default): w_kl = 2 L_kl / (L_kl + L_inst), w_inst = 2 L_inst / (L_kl + L_inst) from the detached
    current values: the weights sum to 2 (the plain sum's total) and shift to whichever term is further from its
    optimum. The spatial KL converges within a few dozen steps while the instance Dice, the only term that teaches
    the per-voxel class competition inference relies on, falls slowly; the plain sum would let it crawl.
    `balance`: the inverse (w_kl = 2 L_inst / (L_kl + L_inst), ...) so both terms contribute equal values; it starves
    the instance term once the KL is small (measured: identification accuracy stays 0) and is kept for comparison.
    `none`: the plain sum. Returns (loss, w_kl, w_inst).
    """
    if rule == "none":
        return kl + inst, 1.0, 1.0
    a, b = float(kl.detach()), float(inst.detach())
    if a + b <= 0.0 or not (a == a and b == b):
        return kl + inst, 1.0, 1.0
    if rule == "lagging":
        w_kl, w_inst = 2.0 * a / (a + b), 2.0 * b / (a + b)
    else:
        w_kl, w_inst = 2.0 * b / (a + b), 2.0 * a / (a + b)
    return w_kl * kl + w_inst * inst, w_kl, w_inst
