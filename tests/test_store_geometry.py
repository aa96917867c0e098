"""Store-frame geometry: affines agree with ITK, reorientation is exact, predictions map back to the original grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from vertseg.data.geometry import (
    CANONICAL_DIRECTION,
    GridGeometry,
    apply_affine,
    canonical_to_original_affine,
    case_geometry,
    resample_to_grid,
    to_original_grid,
)
from vertseg.evaluation.overlap import dice_from_counts

PIR = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # columns (index x, y, z) point to P, I, R in LPS


def _image(array_zyx, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(10.0, -20.0, 30.0)):
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetDirection([float(v) for v in direction])
    image.SetOrigin(origin)
    return image


def _oblique_direction(angle_deg: float) -> tuple[float, ...]:
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return tuple((rot @ np.asarray(PIR).reshape(3, 3)).ravel())


def test_affine_matches_itk_and_axcodes():
    image = _image(np.zeros((5, 6, 7), np.int16), (0.7, 1.1, 2.5), _oblique_direction(10))
    grid = GridGeometry.of_image(image)
    index_xyz = (3.5, 2.0, 4.25)
    expected = image.TransformContinuousIndexToPhysicalPoint(index_xyz)
    got = apply_affine(grid.affine_lps(), np.array([index_xyz[::-1]]))[0]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert GridGeometry.of_image(_image(np.zeros((2, 2, 2), np.uint8), (1, 1, 1), PIR)).axcodes() == "PIR"
    assert grid.is_oblique() and not GridGeometry.of_image(_image(np.zeros((2, 2, 2)), (1, 1, 1), PIR)).is_oblique()


def test_reorientation_at_target_spacing_is_a_pure_permutation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 25, size=(6, 7, 8)).astype(np.uint8)
    image = _image(labels, (1.0, 1.0, 1.0), PIR)
    meta = case_geometry(image, 1.0)
    canonical = resample_to_grid(image, meta.canonical, "nearest", 0)
    assert meta.canonical.direction == tuple(CANONICAL_DIRECTION.ravel())
    # PIR (ITK x=P, y=I, z=R; numpy axes z,y,x = R,I,P) -> numpy (I, P, R)
    np.testing.assert_array_equal(canonical, np.transpose(labels, (1, 2, 0)))
    np.testing.assert_array_equal(to_original_grid(canonical, meta), labels)


def test_oblique_anisotropic_round_trip_and_index_affine():
    zz, yy, xx = np.meshgrid(np.arange(20), np.arange(24), np.arange(22), indexing="ij")
    blob = (((zz - 10) * 2.0) ** 2 + ((yy - 12) * 0.8) ** 2 + ((xx - 11) * 0.9) ** 2 < 7.0**2).astype(np.uint8) * 7
    image = _image(blob, (0.9, 0.8, 2.0), _oblique_direction(15))
    meta = case_geometry(image, 1.0)
    canonical = resample_to_grid(image, meta.canonical, "nearest", 0)
    volume_orig = (blob > 0).sum() * 0.9 * 0.8 * 2.0
    assert abs((canonical > 0).sum() * 1.0 - volume_orig) / volume_orig < 0.03
    back = to_original_grid(canonical, meta)
    dice = 2 * np.logical_and(back > 0, blob > 0).sum() / ((back > 0).sum() + (blob > 0).sum())
    assert dice > 0.93 and set(np.unique(back)) == {0, 7}
    mapping = canonical_to_original_affine(meta)
    point = np.array([[5.0, 6.0, 7.0]])
    world = apply_affine(meta.canonical.affine_lps(), point)
    np.testing.assert_allclose(apply_affine(meta.original.affine_lps(), apply_affine(mapping, point)), world, atol=1e-9)


def test_label_linear_maps_coarse_labels_back_closer_than_nearest_and_invents_no_label():
    """Two touching balls at 1 mm, stored at 3 mm (as inference sees them), mapped back: label-wise linear
    interpolation must beat nearest neighbour on both labels and keep exactly the labels it was given."""
    zz, yy, xx = np.meshgrid(np.arange(48), np.arange(30), np.arange(30), indexing="ij")
    labels = np.zeros((48, 30, 30), np.uint8)
    for label, centre_z in ((5, 15.3), (6, 31.7)):
        ball = (zz - centre_z) ** 2 + (yy - 14.6) ** 2 + (xx - 15.2) ** 2 < 8.2**2
        labels[ball & (labels == 0)] = label
    meta = case_geometry(_image(labels, (1.0, 1.0, 1.0)), 3.0)
    coarse = resample_to_grid(_image(labels, (1.0, 1.0, 1.0)), meta.canonical, "nearest", 0)
    nearest = to_original_grid(coarse, meta, "nearest")
    smooth = to_original_grid(coarse, meta, "label_linear")
    assert set(np.unique(smooth)) == {0, 5, 6}
    for label in (5, 6):
        truth = labels == label
        smooth_dice = dice_from_counts(np.count_nonzero(truth & (smooth == label)), truth.sum(), (smooth == label).sum())
        nearest_dice = dice_from_counts(np.count_nonzero(truth & (nearest == label)), truth.sum(), (nearest == label).sum())
        assert smooth_dice > nearest_dice
