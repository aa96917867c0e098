"""Voxel-overlap metrics from one label confusion matrix (one pass over the volume, no loop over labels or voxels).

Definitions (docs/metrics.md):
- binary Dice, paper Eq. 14 and the official VerSe utility: 2|S n G| / (|S| + |G|) on foreground (label > 0);
  both empty -> 1.0 (the utility's `empty_score`).
- per-vertebra Dice: the same per VerSe label; its mean runs over the labels present in the ground truth
  (a missed vertebra scores 0, a spurious predicted label does not enter the mean).
- multilabel Dice: 2 sum_l |S_l n G_l| / (|S| + |G|), foreground voxels counted once, so a right mask with wrong
  labels scores 0.
"""

from __future__ import annotations

import numpy as np

MAX_LABEL = 255


def confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(L, L) voxel counts of (ground-truth label, predicted label) pairs, L = 1 + the largest label present."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    gt = np.asarray(gt).astype(np.int64, copy=False).ravel()
    pred = np.asarray(pred).astype(np.int64, copy=False).ravel()
    if gt.size and (min(gt.min(), pred.min()) < 0 or max(gt.max(), pred.max()) > MAX_LABEL):
        raise ValueError(f"labels must lie in 0..{MAX_LABEL}")
    size = int(max(gt.max(initial=0), pred.max(initial=0))) + 1
    return np.bincount(gt * size + pred, minlength=size * size).reshape(size, size)


def dice_from_counts(intersection: float, size_a: float, size_b: float, empty: float = 1.0) -> float:
    """2|A n B| / (|A| + |B|); `empty` when both sets are empty."""
    total = size_a + size_b
    return float(empty) if total == 0 else 2.0 * float(intersection) / float(total)


def binary_dice(matrix: np.ndarray) -> float:
    """Foreground Dice (Eq. 14; official utility on labelmaps cast to bool)."""
    return dice_from_counts(matrix[1:, 1:].sum(), matrix[1:, :].sum(), matrix[:, 1:].sum())


def per_label_dice(matrix: np.ndarray) -> dict[int, float]:
    """Dice of every label present in the ground truth."""
    gt_sizes, pred_sizes = matrix.sum(axis=1), matrix.sum(axis=0)
    return {int(lab): dice_from_counts(matrix[lab, lab], gt_sizes[lab], pred_sizes[lab])
            for lab in np.flatnonzero(gt_sizes) if lab}


def multilabel_dice(matrix: np.ndarray) -> float:
    """Label-aware foreground Dice: only voxels with the right label count as overlap."""
    return dice_from_counts(np.trace(matrix) - matrix[0, 0], matrix[1:, :].sum(), matrix[:, 1:].sum())


def mean_or_nan(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")
