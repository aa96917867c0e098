"""The consistency term (Eq. 9-11) and the class-frequency weights w_k."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """w_k proportional to the inverse training-set frequency of class k, normalised so sum_k w_k = K.

    counts: (K,) voxel (or occurrence) counts of classes 1..K. Classes never seen get the largest weight of the seen
    ones (rare, not infinitely rare); all zero counts give uniform weights.
    """
    counts = counts.double()
    k = counts.numel()
    if counts.sum() <= 0:
        return torch.ones(k, dtype=torch.float32)
    inv = torch.where(counts > 0, counts.sum() / counts.clamp(min=1e-12), torch.zeros_like(counts))
    inv = torch.where(counts > 0, inv, inv.max())
    return (inv * k / inv.sum()).float()


def seg_consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float, threshold: float = 0.5
) -> tuple[torch.Tensor, float]:
    """Eq. 10: BCE of student logits against the binarised teacher mask on voxels where the teacher is confident.

    Confidence is max(p_T, 1 - p_T) > tau (a confident background voxel is as informative as a foreground one).
    Returns (loss averaged over the confident voxels, fraction of voxels passing the mask).
    """
    p_teacher = torch.sigmoid(teacher_logits.float())
    pseudo = (p_teacher > threshold).float()
    confident = (torch.maximum(p_teacher, 1.0 - p_teacher) > tau).float()
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), pseudo, reduction="none")
    loss = (bce * confident).sum() / confident.sum().clamp(min=1.0)
    return loss, float(confident.mean())


def teacher_foreground(seg_logits: torch.Tensor, shape: tuple[int, int, int], threshold: float) -> torch.Tensor:
    """(B, *shape) bool: identification-grid positions whose voxels the teacher's full-resolution segmentation calls
    mostly foreground (mean probability > threshold), i.e. the vertebra positions the class maps should label."""
    return F.adaptive_avg_pool3d(torch.sigmoid(seg_logits.float()), shape)[:, 0] > threshold


def cls_consistency_loss(student_logits: torch.Tensor, pseudo: torch.Tensor, keep: torch.Tensor,
                         class_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 11: class-weighted CE of the student against the teacher's pseudo-classes `pseudo` (B, z, y, x; 0 =
    background) on the positions `keep` (confident vertebra positions, `methods.base.pseudo_targets`).

    The CE runs over the K vertebra channels only: the term teaches which vertebra, not vertebra-vs-background (a CE
    over K+1 channels raises every class logit against the background channel, and the spatial KL cannot see such
    a shift). The loss is sum_k w_k sum_{x in Omega_k} CE_x / |Omega| (a frequency-weighted mean, so its scale does
    not grow with the number of visible vertebrae).
    """
    ce = F.cross_entropy(student_logits[:, 1:].float(), (pseudo - 1).clamp(min=0), reduction="none")
    weights = torch.cat([class_weights.new_zeros(1), class_weights.to(ce.device, ce.dtype)])[pseudo]
    keep_f = keep.float()
    return (ce * weights * keep_f).sum() / keep_f.sum().clamp(min=1.0)


def probability_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Teacher / UA-MT consistency: MSE between probabilities (sigmoid for `binary`, softmax for `multiclass`)."""
    if mode == "binary":
        diff = (torch.sigmoid(student_logits.float()) - torch.sigmoid(teacher_logits.float())) ** 2
    else:
        diff = (torch.softmax(student_logits.float(), 1) - torch.softmax(teacher_logits.float(), 1)) ** 2
    diff = diff.sum(1)
    if mask is None:
        return diff.mean()
    return (diff * mask).sum() / mask.sum().clamp(min=1.0)
