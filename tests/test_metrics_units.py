"""Metric definitions on tiny volumes with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from vertseg.evaluation import EvalSettings, evaluate_arrays, summarise
from vertseg.evaluation.identification import (identification_accuracy, match_instances, predicted_instances,
                                               verse_identification)
from vertseg.evaluation.overlap import binary_dice, confusion, multilabel_dice, per_label_dice


def _volume() -> np.ndarray:
    """Two 'vertebrae' on a 1 mm grid: label 20 (8 voxels) over label 21 (8 voxels), 2 empty slices apart."""
    gt = np.zeros((8, 3, 3), np.uint8)
    gt[0:2, 0:2, 0:2] = 20
    gt[4:6, 0:2, 0:2] = 21
    return gt


def test_dice_definitions_by_hand():
    gt = _volume()
    pred = gt.copy()
    pred[5] = 0  # L2 loses 4 of 8 voxels
    pred[4, 0, 0] = 20  # and one voxel becomes L1
    m = confusion(gt, pred)
    # binary: |S| = 12, |G| = 16, overlap = 12 -> 24 / 28
    assert binary_dice(m) == pytest.approx(24 / 28)
    # L1: |S| = 9, |G| = 8, overlap 8 -> 16/17; L2: |S| = 3, |G| = 8, overlap 3 -> 6/11
    assert per_label_dice(m) == pytest.approx({20: 16 / 17, 21: 6 / 11})
    # multilabel: right-label overlap 8 + 3 = 11 -> 22 / 28
    assert multilabel_dice(m) == pytest.approx(22 / 28)


def test_dice_empty_and_shape_errors():
    empty = np.zeros((2, 2, 2), np.uint8)
    assert binary_dice(confusion(empty, empty)) == 1.0  # official utility's empty_score
    assert per_label_dice(confusion(empty, empty)) == {}
    with pytest.raises(ValueError, match="differ in shape"):
        confusion(empty, np.zeros((2, 2, 3), np.uint8))


def test_iou_matching_respects_threshold_and_one_to_one():
    iou = np.array([[0.9, 0.6], [0.55, 0.4]])
    # Max total IoU with both >= 0.5: (0,1) + (1,0) = 1.15 beats (0,0) alone (0.9, (1,1) below threshold).
    assert sorted(match_instances(iou, 0.5)) == [(0, 1), (1, 0)]
    assert match_instances(iou, 0.7) == [(0, 0)]
    assert match_instances(np.zeros((0, 0)), 0.5) == []


def test_acc_id_label_vs_binary_instances():
    gt = np.zeros((6, 3, 3), np.uint8)
    gt[0:3] = 20
    gt[3:6] = 21  # touching vertebrae
    pred = gt.copy()
    result = identification_accuracy(gt, pred, (1, 1, 1), min_fragment_ml=0.0)
    assert result.correct == {20: True, 21: True}
    # Binary components merge the touching pair into one instance (IoU 0.5 with each): only one can match it,
    # the larger-IoU tie goes to the first, and its majority label (tie -> lower label 20) decides.
    binary = identification_accuracy(gt, pred, (1, 1, 1), min_fragment_ml=0.0, mode="binary")
    assert sum(binary.correct.values()) == 1


def test_predicted_fragments_below_min_size_are_ignored():
    pred = np.zeros((10, 10, 10), np.uint8)
    pred[0:5, 0:5, 0:5] = 20  # 125 voxels = 0.125 ml
    pred[8, 8, 8] = 21  # 1 voxel
    cc, labels = predicted_instances(pred, (1, 1, 1), min_fragment_ml=0.01)
    assert labels.tolist() == [20] and cc.max() == 1
    cc, labels = predicted_instances(pred, (1, 1, 1), min_fragment_ml=0.0)
    assert sorted(labels.tolist()) == [20, 21]


def test_verse_identification_by_hand():
    gt = {16: np.array([0.0, 0, 0]), 17: np.array([0.0, 0, 22.0]), 18: np.array([0.0, 0, 48.0])}
    pred = {16: np.array([0.0, 0, 12.0]), 17: np.array([3.0, 4, 22.0]), 19: np.array([0.0, 0, 70.0])}
    result = verse_identification(gt, pred)
    # 16: 12 mm from its GT but 10 mm from GT 17 -> not identified; 17: 5 mm, nearest -> identified; 18: not predicted
    assert result.identified == {16: False, 17: True, 18: False}
    assert result.distance_mm[16] == pytest.approx(12.0) and result.distance_mm[17] == pytest.approx(5.0)
    assert np.isnan(result.distance_mm[18])
    # The official utility only searches labels present in both files: GT 18 is not a candidate, 16 vs 17 still is.
    official = verse_identification(gt, {16: pred[16]}, candidates="intersection")
    assert official.identified[16] is True  # only GT 16 is a candidate; 12 mm <= 20
    assert verse_identification(gt, {16: pred[16]}).identified[16] is False
    far = verse_identification(gt, {17: np.array([0.0, 0, 42.5])})
    assert far.identified[17] is False  # 20.5 mm


def test_case_and_summary_pool_vertebrae_and_regions():
    gt = _volume()
    gt[7, 0:2, 0:2] = 3  # a tiny C3 (4 voxels) far below, for the region split
    pred = gt.copy()
    pred[pred == 21] = 22  # L2 called L3
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    case = evaluate_arrays("c", gt, pred, affine, settings=EvalSettings(min_fragment_ml=0.0))
    assert case.vertebra_dice == {3: 1.0, 20: 1.0, 21: 0.0}
    assert case.id_correct == {3: True, 20: True, 21: False}
    assert case.identified == {3: True, 20: True, 21: False}
    assert case.centroid_source == {"gt": "mask", "pred": "mask"}
    summary = summarise([case, case], by_region=True)
    assert summary["vertebrae"] == 6 and summary["acc_id"] == pytest.approx(4 / 6)
    assert summary["regions"]["lumbar"]["acc_id"] == pytest.approx(0.5)
    assert summary["regions"]["cervical"]["vertebrae"] == 2 and summary["regions"]["cervical"]["id_rate"] == 1.0
    assert np.isnan(summary["regions"]["thoracic"]["acc_id"])
    assert case.row()["pred_vertebrae"] == "C3 L1 L3"
