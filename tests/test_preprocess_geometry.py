"""Preprocessing keeps anatomy in place: per-vertebra physical volume within 3 % and centroids within 1.5 mm."""

from __future__ import annotations

import numpy as np
import pytest
from _store_phantom import write_case

from vertseg.data.config import DataConfig
from vertseg.data.geometry import apply_affine, lps_to_ras
from vertseg.data.preprocess import prepare_case
from vertseg.data.readers import discover_cases, load_case

LAYOUTS = [("RAS", (1.0, 1.0, 1.0), 0.0), ("LPS", (0.8, 0.9, 2.5), 0.0), ("PIR", (0.7, 1.6, 1.2), 12.0)]


@pytest.mark.parametrize("codes, spacing, tilt", LAYOUTS)
def test_volumes_and_centroids_survive_reorientation_and_resampling(tmp_path, codes, spacing, tilt):
    truth = write_case(tmp_path, "case1", codes, spacing, tilt)
    (source,) = discover_cases([tmp_path])
    prepared = prepare_case(load_case(source), DataConfig(), "labeled")
    attrs = prepared.attrs
    assert prepared.image_hu.dtype == np.int16 and prepared.labels.dtype == np.uint8
    assert prepared.labels.shape == prepared.image_hu.shape == tuple(attrs["shape_zyx"])
    assert attrs["orientation"]["original"] == codes and attrs["orientation"]["store"] == "RPI"
    for label, volume in truth["volume_ml"].items():
        assert abs(attrs["label_volume_ml"][str(label)] - volume) / volume < 0.03, label
        body = lps_to_ras(attrs["centroids"]["body"][str(label)]["lps"])
        mask = lps_to_ras(attrs["centroids"]["mask"][str(label)]["lps"])
        assert np.linalg.norm(body - truth["centroids_ras"][label]) < 1.5
        assert np.linalg.norm(mask - truth["centroids_ras"][label]) < 1.5
        voxel = np.asarray(attrs["centroids"]["mask"][str(label)]["voxel_zyx"])
        affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(_canonical_affine(attrs))
        np.testing.assert_allclose(apply_affine(affine_ras, voxel[None])[0], mask, atol=1e-6)
    z_order = [attrs["centroids"]["body"][str(label)]["voxel_zyx"][0] for label in sorted(truth["volume_ml"])]
    assert z_order == sorted(z_order), "store z must run cranio-caudally"
    assert set(np.unique(prepared.foreground[:, 0])) == set(truth["volume_ml"])
    inside = prepared.labels[tuple(prepared.foreground[:, 1:].T)]
    np.testing.assert_array_equal(inside, prepared.foreground[:, 0])


def _canonical_affine(attrs):
    from vertseg.data.geometry import GridGeometry

    return GridGeometry.from_dict(attrs["geometry"]["canonical"]).affine_lps()


def test_real_verse_sample_oblique_pir_float_mask(tmp_path, test_data):
    """The real VerSe mask (float64, oblique, P-I-R) with a CT on its grid: volumes, centres and body centroids."""
    import nibabel as nib
    import SimpleITK as sitk

    from vertseg.data.readers import mask_centres_lps

    mask_nii = nib.load(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    mask = np.asarray(mask_nii.dataobj)
    ct = np.where(mask > 0, 600, -50).astype(np.int16)
    nib.save(nib.Nifti1Image(ct, mask_nii.affine), tmp_path / "verse004.nii.gz")
    nib.save(mask_nii, tmp_path / "verse004_seg.nii.gz")
    (tmp_path / "verse004_ctd.json").write_bytes((test_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json").read_bytes())
    (source,) = discover_cases([tmp_path])
    case = load_case(source)
    prepared = prepare_case(case, DataConfig(), "labeled")
    attrs = prepared.attrs
    assert attrs["orientation"]["original"] == "PIR"
    voxel_ml = float(np.prod(mask_nii.header.get_zooms())) / 1000.0
    truth_centres = mask_centres_lps(case.mask)
    assert attrs["labels_present"] == list(range(16, 25))
    for label in range(16, 25):
        volume = (mask == label).sum() * voxel_ml
        assert abs(attrs["label_volume_ml"][str(label)] - volume) / volume < 0.03, label
        centre = np.asarray(attrs["centroids"]["mask"][str(label)]["lps"])
        assert np.linalg.norm(centre - truth_centres[label]) < 1.5, label
        body_voxel = np.round(attrs["centroids"]["body"][str(label)]["voxel_zyx"]).astype(int)
        assert prepared.labels[tuple(body_voxel)] == label, f"body centroid of {label} is not inside its vertebra"
    assert sitk.GetArrayViewFromImage(case.mask).shape[::-1] == tuple(attrs["geometry"]["original"]["size_xyz"])


def test_real_dicom_series_is_an_unlabeled_case(test_data):
    (source,) = discover_cases([test_data / "dicom-sample"])
    prepared = prepare_case(load_case(source), DataConfig(spacing_mm=2.0), "unlabeled")
    attrs = prepared.attrs
    assert prepared.labels is None and attrs["pool"] == "unlabeled" and attrs["spine_box_zyx"] is None
    assert attrs["geometry"]["original"]["size_xyz"] == [512, 512, 20]
    np.testing.assert_allclose(attrs["shape_zyx"], [20, 250, 250], atol=1)
    assert attrs["hu_range"][0] >= -1100 and attrs["hu_range"][1] > 300
    assert len(prepared.foreground) > 0 and (prepared.foreground[:, 0] == 0).all()
