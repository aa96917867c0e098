"""Per-vertebra Hausdorff / HD95 (MONAI) against hand values and a brute-force reference written here: surface =
voxels of the mask with a 6-neighbour outside it, distances between surface voxel centres in mm, HD = larger directed
maximum, HD95 = larger directed 95th percentile (linear interpolation)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from vertseg.evaluation.case import EvalSettings, evaluate_arrays, summarise
from vertseg.evaluation.surface import surface_distances


def reference(gt: np.ndarray, pred: np.ndarray, spacing) -> tuple[float, float]:
    def surface(mask):
        padded = np.pad(mask, 1)
        inner = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
        return np.argwhere(padded & ~inner) * np.asarray(spacing, np.float64)

    a, b = surface(gt), surface(pred)
    a_to_b, b_to_a = cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]
    return max(a_to_b.max(), b_to_a.max()), max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))


def test_cube_shifted_by_hand():
    gt = np.zeros((12, 9, 9), np.uint8)
    gt[1:6, 2:7, 2:7] = 20
    pred = np.roll(gt, 3, axis=0)  # 3 voxels of 2 mm: the far faces are 6 mm apart, nothing is further
    hausdorff, hd95 = surface_distances(gt, pred, (2.0, 1.0, 1.0))
    assert hausdorff == {20: pytest.approx(6.0)}
    assert hd95[20] == pytest.approx(reference(gt == 20, pred == 20, (2.0, 1.0, 1.0))[1], abs=1e-4)
    assert 0 < hd95[20] <= 6.0


def test_real_vertebrae_against_the_reference(test_data):
    image = nib.load(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    gt = np.asarray(image.dataobj).astype(np.uint8)[20:130, 60:190, :]
    gt[~np.isin(gt, (19, 20))] = 0
    pred = np.roll(gt, 4, axis=1)
    pred[(pred == 19) & (np.indices(pred.shape)[0] < 70)] = 0  # cut T12's posterior part: a ragged surface
    spacing = image.header.get_zooms()
    hausdorff, hd95 = surface_distances(gt, pred, spacing)
    for label in (19, 20):
        expected = reference(gt == label, pred == label, spacing)
        assert (hausdorff[label], hd95[label]) == pytest.approx(expected, abs=1e-4)
    assert hausdorff[19] > hausdorff[20] >= 4.0  # the cut costs T12; L1 moved 4 mm


def test_missing_vertebra_is_undefined_and_counted():
    gt = np.zeros((10, 6, 6), np.uint8)
    gt[1:4, 1:5, 1:5] = 20
    gt[6:9, 1:5, 1:5] = 21
    pred = np.where(gt == 21, 0, gt)
    case = evaluate_arrays("c", gt, pred, np.eye(4), settings=EvalSettings(min_fragment_ml=0, surface_distances=True))
    assert case.hausdorff_mm[20] == 0.0 and case.hd95_mm[20] == 0.0
    assert np.isnan(case.hausdorff_mm[21]) and np.isnan(case.hd95_mm[21])
    assert case.row()["mean_hausdorff_mm"] == 0.0
    summary = summarise([case])
    assert summary["hausdorff_undefined"] == 1 and summary["mean_hd95_mm"] == 0.0
