"""All metrics of one case from arrays, and their aggregation over a dataset (pooled and by region)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from vertseg.evaluation.identification import (DEFAULT_IOU_THRESHOLD, ID_RATE_MAX_MM, identification_accuracy,
                                               verse_identification)
from vertseg.evaluation.overlap import binary_dice, confusion, mean_or_nan, multilabel_dice, per_label_dice
from vertseg.evaluation.surface import surface_distances
from vertseg.labels import REGIONS, VERSE_NAMES


@dataclass(frozen=True)
class EvalSettings:
    iou_threshold: float = DEFAULT_IOU_THRESHOLD  # Eq. 16: tau_IoU
    min_fragment_ml: float = 0.5  # Eq. 15: small isolated fragments removed before matching
    instance_mode: Literal["labels", "binary"] = "labels"
    max_distance_mm: float = ID_RATE_MAX_MM
    id_candidates: Literal["all", "intersection"] = "intersection"  # official `get_hits`
    surface_distances: bool = False  # per-vertebra Hausdorff / HD95 (MONAI; importing it costs seconds)


@dataclass
class CaseMetrics:
    """Metrics of one case; per-vertebra dictionaries are keyed by VerSe label of the ground truth."""

    case_id: str
    binary_dice: float
    multilabel_dice: float
    vertebra_dice: dict[int, float]
    id_correct: dict[int, bool]
    match_iou: dict[int, float]
    identified: dict[int, bool]
    distance_mm: dict[int, float]
    predicted_labels: list[int]
    centroid_source: dict[str, str] = field(default_factory=dict)
    hausdorff_mm: dict[int, float] = field(default_factory=dict)  # NaN: vertebra not predicted
    hd95_mm: dict[int, float] = field(default_factory=dict)
    prediction: str = ""  # the file scored for this case
    failure: str = ""  # why the prediction was scored as empty (missing, unreadable, truncated)

    def row(self) -> dict[str, Any]:
        """One CSV row: the case's headline numbers."""
        n = len(self.vertebra_dice)
        return {
            "case": self.case_id,
            "binary_dice": _r(self.binary_dice),
            "mean_vertebra_dice": _r(mean_or_nan(self.vertebra_dice.values())),
            "multilabel_dice": _r(self.multilabel_dice),
            "acc_id": _r(sum(self.id_correct.values()) / n if n else float("nan")),
            "id_rate": _r(sum(self.identified.values()) / len(self.identified) if self.identified else float("nan")),
            "mean_distance_mm": _r(mean_or_nan(self.distance_mm.values())),
            "mean_hausdorff_mm": _r(mean_or_nan(self.hausdorff_mm.values())),
            "mean_hd95_mm": _r(mean_or_nan(self.hd95_mm.values())),
            "gt_vertebrae": " ".join(VERSE_NAMES[lab] for lab in sorted(self.vertebra_dice)),
            "pred_vertebrae": " ".join(VERSE_NAMES.get(lab, str(lab)) for lab in self.predicted_labels),
            "prediction": self.prediction,
            "failure": self.failure,
        }


def _r(value: float) -> float:
    return round(float(value), 6) if value == value else float("nan")


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis of a voxel -> physical affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def mask_centroids(labelmap: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """Centre of mass of every label, mapped through `affine` (voxel index of the array axes -> mm)."""
    nonzero = np.flatnonzero(labelmap)
    flat = labelmap.ravel()[nonzero].astype(np.int64)
    counts = np.bincount(flat)
    labels = [int(lab) for lab in np.flatnonzero(counts) if lab]
    if not labels:
        return {}
    index = np.unravel_index(nonzero, labelmap.shape)
    centres = np.stack(
        [np.bincount(flat, weights=index[a].astype(np.float64), minlength=counts.size)[labels] for a in range(3)], axis=1
    )
    centres /= counts[labels, None]
    physical = centres @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return {lab: physical[i] for i, lab in enumerate(labels)}


def evaluate_arrays(case_id: str, gt: np.ndarray, pred: np.ndarray, affine: np.ndarray,
                    gt_centroids: dict[int, np.ndarray] | None = None, pred_centroids: dict[int, np.ndarray] | None = None,
                    settings: EvalSettings = EvalSettings(), centroid_source: dict[str, str] | None = None
                    ) -> CaseMetrics:
    """Evaluate a predicted VerSe labelmap against the ground truth on the same grid.

    `affine` maps array indices to mm; centroids (label -> mm in the same frame) default to mask centres of mass;
    `centroid_source` says where given centroids came from (default: "json" for given ones).
    """
    matrix = confusion(gt, pred)
    spacing = spacing_of(affine)
    instance = identification_accuracy(gt, pred, spacing, settings.min_fragment_ml, settings.iou_threshold,
                                       settings.instance_mode)
    source = centroid_source or {"gt": "json" if gt_centroids else "mask", "pred": "json" if pred_centroids else "mask"}
    gt_centroids = gt_centroids or mask_centroids(gt, affine)
    pred_centroids = pred_centroids or mask_centroids(pred, affine)
    located = verse_identification(gt_centroids, pred_centroids, settings.max_distance_mm, settings.id_candidates)
    predicted = [int(lab) for lab in np.flatnonzero(matrix.sum(axis=0)) if lab]
    hausdorff, hd95 = surface_distances(gt, pred, spacing) if settings.surface_distances else ({}, {})
    return CaseMetrics(case_id, binary_dice(matrix), multilabel_dice(matrix), per_label_dice(matrix),
                       instance.correct, instance.iou, located.identified, located.distance_mm, predicted, source,
                       hausdorff, hd95)


def _pooled(cases: list[CaseMetrics], labels: set[int] | None) -> dict[str, float | int]:
    def take(attr: str) -> list:
        return [v for c in cases for lab, v in getattr(c, attr).items() if labels is None or lab in labels]

    dice, correct, identified, distance = take("vertebra_dice"), take("id_correct"), take("identified"), take("distance_mm")
    hausdorff, hd95 = take("hausdorff_mm"), take("hd95_mm")
    return {
        "vertebrae": len(dice),
        "mean_vertebra_dice": _r(mean_or_nan(dice)),
        "acc_id": _r(float(np.mean(correct)) if correct else float("nan")),
        "id_rate": _r(float(np.mean(identified)) if identified else float("nan")),
        "mean_distance_mm": _r(mean_or_nan(distance)),
        "mean_hausdorff_mm": _r(mean_or_nan(hausdorff)),
        "mean_hd95_mm": _r(mean_or_nan(hd95)),
        "hausdorff_undefined": sum(1 for v in hausdorff if v != v),  # vertebrae without a prediction to measure
    }


def summarise(cases: list[CaseMetrics], by_region: bool = False) -> dict[str, Any]:
    """Dataset summary: case means of the Dice scores, vertebra-pooled identification (as the paper and VerSe pool).

    Surface distances are means over the vertebrae that were predicted; `hausdorff_undefined` counts the others.
    """
    summary: dict[str, Any] = {
        "cases": len(cases),
        "binary_dice": _r(mean_or_nan(c.binary_dice for c in cases)),
        "multilabel_dice": _r(mean_or_nan(c.multilabel_dice for c in cases)),
        "case_mean_vertebra_dice": _r(mean_or_nan(mean_or_nan(c.vertebra_dice.values()) for c in cases)),
        **_pooled(cases, None),
    }
    if by_region:
        summary["regions"] = {name: _pooled(cases, set(labels)) for name, labels in REGIONS.items()}
    return summary
