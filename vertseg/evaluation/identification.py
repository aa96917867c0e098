"""Identification metrics: the paper's instance accuracy (Eq. 15-17) and the VerSe identification rate.

Paper (Eq. 15-17): ground-truth instances are the labelled vertebrae; predicted instances are 3D connected
components of the prediction with fragments below `min_fragment_ml` removed, each carrying its predicted label.
Instances are matched one-to-one by maximising the summed IoU over pairs with IoU >= tau (Hungarian assignment);
a ground-truth vertebra is correct when its matched component has its label. Acc_ID = correct / m.

VerSe (Sekuboyina et al. 2021): a ground-truth vertebra l is identified when the predicted centroid labelled l is
within 20 mm of the ground-truth centroid of l and that ground-truth centroid is the nearest of ALL ground-truth
centroids to it. The official utility (`get_hits`) searches only labels present in both files:
`candidates="intersection"`, the default of `EvalSettings` and `vertseg evaluate`. The localisation distance is the mean predicted-to-true distance over labels present in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cc3d
import numpy as np
from scipy.optimize import linear_sum_assignment

from vertseg.postprocess.components import min_voxels

ID_RATE_MAX_MM = 20.0  # VerSe: identified within 20 mm
DEFAULT_IOU_THRESHOLD = 0.5  # Eq. 16: tau_IoU (the paper gives no value; 0.5 makes the matching unique)


def predicted_instances(pred: np.ndarray, spacing, min_fragment_ml: float, mode: Literal["labels", "binary"] = "labels"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Components of a predicted labelmap -> (instance map 0..n, label of each instance (n,)).

    `labels`: components of each label separately (touching vertebrae with different labels stay apart).
    `binary`: components of the foreground as in Eq. 15 read literally; each takes its majority label.
    """
    source = pred > 0 if mode == "binary" else pred
    cc = cc3d.connected_components(np.ascontiguousarray(source), connectivity=26)
    threshold = min_voxels(min_fragment_ml, spacing)
    if threshold > 1:
        cc = cc3d.dust(cc, threshold=threshold, connectivity=26, precomputed_ccl=True)
    cc, n = cc3d.connected_components(cc, connectivity=26, return_N=True)
    flat_cc, flat_pred = cc.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    fg = np.flatnonzero(flat_cc)
    votes = np.bincount(flat_cc[fg] * 256 + flat_pred[fg], minlength=(n + 1) * 256).reshape(n + 1, 256)
    return cc, np.argmax(votes[1:], axis=1)


def iou_matrix(gt: np.ndarray, instances: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """IoU between each ground-truth label present (rows) and each predicted instance 1..n (columns)."""
    g = gt.ravel().astype(np.int64)
    p = instances.ravel().astype(np.int64)
    inter = np.bincount(g * (n + 1) + p, minlength=(int(g.max(initial=0)) + 1) * (n + 1)).reshape(-1, n + 1)
    gt_labels = np.flatnonzero(inter.sum(axis=1))
    gt_labels = gt_labels[gt_labels > 0]
    gt_size = inter.sum(axis=1)[gt_labels]
    pred_size = inter.sum(axis=0)[1:]
    overlap = inter[gt_labels][:, 1:]
    union = gt_size[:, None] + pred_size[None, :] - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, overlap / union, 0.0)
    return gt_labels, iou


def match_instances(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Eq. 16: one-to-one pairs (row, column) maximising total IoU among pairs with IoU >= threshold."""
    if iou.size == 0:
        return []
    weights = np.where(iou >= threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= threshold and iou[r, c] > 0]


@dataclass(frozen=True)
class InstanceResult:
    """Per ground-truth vertebra: correct identification (Eq. 15) and the IoU of its match (0 when unmatched)."""

    correct: dict[int, bool]
    iou: dict[int, float]


def identification_accuracy(gt: np.ndarray, pred: np.ndarray, spacing, min_fragment_ml: float = 0.5,
                            iou_threshold: float = DEFAULT_IOU_THRESHOLD, mode: Literal["labels", "binary"] = "labels"
                            ) -> InstanceResult:
    """Eq. 15-17 for one case; average `correct` over vertebrae (pooled or per case) for Acc_ID."""
    instances, inst_labels = predicted_instances(pred, spacing, min_fragment_ml, mode)
    gt_labels, iou = iou_matrix(gt, instances, inst_labels.size)
    correct = {int(lab): False for lab in gt_labels}
    matched_iou = {int(lab): 0.0 for lab in gt_labels}
    for row, col in match_instances(iou, iou_threshold):
        label = int(gt_labels[row])
        correct[label] = bool(inst_labels[col] == label)
        matched_iou[label] = float(iou[row, col])
    return InstanceResult(correct, matched_iou)


@dataclass(frozen=True)
class CentroidResult:
    """Per ground-truth vertebra: identified (VerSe) and predicted-to-true distance in mm (NaN when not predicted)."""

    identified: dict[int, bool]
    distance_mm: dict[int, float]


def verse_identification(gt_centroids: dict[int, np.ndarray], pred_centroids: dict[int, np.ndarray],
                         max_distance_mm: float = ID_RATE_MAX_MM,
                         candidates: Literal["all", "intersection"] = "all") -> CentroidResult:
    """VerSe identification for one case; centroids in one physical frame (mm)."""
    gt_labels = sorted(gt_centroids)
    identified = {lab: False for lab in gt_labels}
    distance = {lab: float("nan") for lab in gt_labels}
    common = [lab for lab in gt_labels if lab in pred_centroids]
    if not common:
        return CentroidResult(identified, distance)
    pool = common if candidates == "intersection" else gt_labels
    gt_xyz = np.stack([np.asarray(gt_centroids[lab], dtype=np.float64) for lab in pool])
    pred_xyz = np.stack([np.asarray(pred_centroids[lab], dtype=np.float64) for lab in common])
    dist = np.linalg.norm(pred_xyz[:, None, :] - gt_xyz[None, :, :], axis=2)
    nearest = np.asarray(pool)[np.argmin(dist, axis=1)]
    for row, lab in enumerate(common):
        own = float(dist[row, pool.index(lab)])
        distance[lab] = own
        identified[lab] = bool(nearest[row] == lab and own <= max_distance_mm)
    return CentroidResult(identified, distance)
