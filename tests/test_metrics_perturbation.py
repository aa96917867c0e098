"""Perturbations of the real VerSe mask (sub-verse004, T9-L5): metrics against values derived independently from
voxel counts, slice overlaps and centroid distances computed here with plain numpy."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from vertseg.evaluation import EvalSettings, evaluate_arrays

SETTINGS = EvalSettings(min_fragment_ml=0.5)
SPINE_AXIS = 1  # the mask is P-I-R: array axis 1 runs superior -> inferior at 1.0 mm


@pytest.fixture(scope="module")
def sample(test_data):
    image = nib.load(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    mask = np.asarray(image.dataobj).astype(np.uint8)
    entries = json.loads((test_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json").read_text())
    voxels = {e["label"]: np.array([e["X"], e["Y"], e["Z"]]) for e in entries if "label" in e}
    to_mm = lambda v: image.affine[:3, :3] @ v + image.affine[:3, 3]  # noqa: E731
    centroids = {lab: to_mm(v) for lab, v in voxels.items()}
    return mask, image.affine, voxels, centroids, to_mm


def counts(mask):
    return {lab: int(np.count_nonzero(mask == lab)) for lab in range(16, 25)}


def run(sample, pred, pred_centroids):
    mask, affine, _, centroids, _ = sample
    return evaluate_arrays("sub-verse004", mask, pred, affine, centroids, pred_centroids, SETTINGS)


def test_sample_geometry_is_what_the_derivations_assume(sample):
    mask, affine, _, _, _ = sample
    assert nib.aff2axcodes(affine) == ("P", "I", "R")
    assert np.linalg.norm(affine[:3, SPINE_AXIS]) == pytest.approx(1.0, abs=1e-4)
    assert sorted(np.unique(mask).tolist()) == [0] + list(range(16, 25))
    assert not mask[:, -25:].any()  # shifting 25 voxels inferior loses no voxel


def test_identity(sample):
    mask, _, _, centroids, _ = sample
    case = run(sample, mask.copy(), centroids)
    assert case.binary_dice == 1.0 and case.multilabel_dice == 1.0
    assert set(case.vertebra_dice.values()) == {1.0}
    assert all(case.id_correct.values()) and all(case.identified.values())


def test_swap_two_labels(sample):
    mask, _, _, centroids, _ = sample
    pred = mask.copy()
    pred[mask == 18], pred[mask == 19] = 19, 18
    swapped = dict(centroids) | {18: centroids[19], 19: centroids[18]}
    case = run(sample, pred, swapped)
    n = counts(mask)
    total = sum(n.values())
    assert case.binary_dice == 1.0
    assert case.vertebra_dice[18] == 0.0 and case.vertebra_dice[19] == 0.0
    assert np.mean(list(case.vertebra_dice.values())) == pytest.approx(7 / 9)
    assert case.multilabel_dice == pytest.approx((total - n[18] - n[19]) / total)
    assert sum(case.id_correct.values()) == 7 and not case.id_correct[18] and not case.id_correct[19]
    assert sum(case.identified.values()) == 7
    gap = np.linalg.norm(centroids[18] - centroids[19])
    assert case.distance_mm[18] == pytest.approx(gap) and case.distance_mm[19] == pytest.approx(gap)


def test_drop_a_vertebra(sample):
    mask, _, _, centroids, _ = sample
    pred = np.where(mask == 20, 0, mask).astype(np.uint8)
    case = run(sample, pred, {k: v for k, v in centroids.items() if k != 20})
    n = counts(mask)
    total = sum(n.values())
    expected = 2 * (total - n[20]) / (2 * total - n[20])
    assert case.binary_dice == pytest.approx(expected)
    assert case.multilabel_dice == pytest.approx(expected)
    assert case.vertebra_dice[20] == 0.0 and np.mean(list(case.vertebra_dice.values())) == pytest.approx(8 / 9)
    assert sum(case.id_correct.values()) == 8 and sum(case.identified.values()) == 8
    assert np.isnan(case.distance_mm[20])


def test_shift_all_labels_by_one(sample):
    mask, _, _, centroids, _ = sample
    pred = np.where(mask > 0, mask + 1, 0).astype(np.uint8)
    case = run(sample, pred, {k + 1: v for k, v in centroids.items()})
    assert case.binary_dice == 1.0
    assert case.multilabel_dice == 0.0 and set(case.vertebra_dice.values()) == {0.0}
    assert not any(case.id_correct.values()) and not any(case.identified.values())
    assert case.predicted_labels == list(range(17, 26))  # ... L5 -> L6


def test_merge_two_vertebrae(sample):
    mask, affine, _, centroids, _ = sample
    pred = np.where(mask == 19, 18, mask).astype(np.uint8)
    merged_voxels = np.argwhere(pred == 18).mean(axis=0)
    merged_mm = affine[:3, :3] @ merged_voxels + affine[:3, 3]
    pred_centroids = {k: v for k, v in centroids.items() if k not in (18, 19)} | {18: merged_mm}
    case = run(sample, pred, pred_centroids)
    n = counts(mask)
    total = sum(n.values())
    assert case.vertebra_dice[18] == pytest.approx(2 * n[18] / (n[18] + n[18] + n[19]))
    assert case.vertebra_dice[19] == 0.0
    assert case.multilabel_dice == pytest.approx((total - n[19]) / total)
    # IoU of the merged instance with GT 18 is n18 / (n18 + n19) < 0.5, with GT 19 it is n19 / (n18 + n19) > 0.5:
    # it matches 19 and carries label 18, so both are wrong.
    assert n[18] / (n[18] + n[19]) < 0.5 < n[19] / (n[18] + n[19])
    assert case.match_iou[19] == pytest.approx(n[19] / (n[18] + n[19]))
    assert sum(case.id_correct.values()) == 7 and not case.id_correct[18] and not case.id_correct[19]
    # The official get_hits searches the nearest only among labels present in both: 19 is not a candidate.
    distances = {lab: np.linalg.norm(merged_mm - c) for lab, c in centroids.items() if lab != 19}
    expected_hit = bool(min(distances, key=distances.get) == 18 and distances[18] <= 20)
    assert case.identified[18] is expected_hit and case.identified[19] is False


@pytest.mark.parametrize("shift_mm", [10, 25])
def test_shift_mask_along_the_spine(sample, shift_mm):
    mask, affine, voxels, centroids, to_mm = sample
    pred = np.zeros_like(mask)
    pred[:, shift_mm:] = mask[:, :-shift_mm]  # shift_mm voxels of 1.0 mm, inferior
    step = np.zeros(3)
    step[SPINE_AXIS] = shift_mm
    pred_centroids = {lab: to_mm(v + step) for lab, v in voxels.items()}
    case = run(sample, pred, pred_centroids)
    n = counts(mask)
    overlap = {lab: int(np.count_nonzero((mask[:, shift_mm:] == lab) & (mask[:, :-shift_mm] == lab))) for lab in n}
    fg_overlap = int(np.count_nonzero((mask[:, shift_mm:] > 0) & (mask[:, :-shift_mm] > 0)))
    total = sum(n.values())
    assert case.binary_dice == pytest.approx(fg_overlap / total)
    assert case.vertebra_dice == pytest.approx({lab: overlap[lab] / n[lab] for lab in n})
    assert case.multilabel_dice == pytest.approx(sum(overlap.values()) / total)
    # An instance is matched to its own vertebra when their IoU >= 0.5 (IoU > 0.5 pairs are unique).
    iou = {lab: overlap[lab] / (2 * n[lab] - overlap[lab]) for lab in n}
    assert case.id_correct == {lab: iou[lab] >= 0.5 for lab in n}
    expected_identified = {}
    for lab in n:
        distances = {other: np.linalg.norm(pred_centroids[lab] - c) for other, c in centroids.items()}
        expected_identified[lab] = min(distances, key=distances.get) == lab and distances[lab] <= 20
    assert case.identified == expected_identified
    assert np.mean(list(case.distance_mm.values())) == pytest.approx(shift_mm, rel=1e-3)
    if shift_mm == 25:
        assert not any(case.identified.values())  # 25 mm > 20 mm
