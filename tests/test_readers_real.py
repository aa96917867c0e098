"""Readers on the real shared samples: the VerSe 2020 mask + centroid JSON and the DICOM series."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vertseg.data.readers import discover_cases, load_case, mask_centres_lps, write_centroids_json
from vertseg.data.readers.centroids import read_centroids_json
from vertseg.data.readers.geometry import affine_ras, axcodes, lps_to_voxel, voxel_to_lps
from vertseg.data.readers.load import read_centroids_lps


@pytest.fixture(scope="module")
def verse_case(test_data):
    sources = discover_cases([test_data / "verse-sample"])
    assert len(sources) == 1
    return load_case(sources[0])


def test_verse_sample_is_found_as_mask_only_subject(test_data):
    (source,) = discover_cases([test_data / "verse-sample"])
    assert (source.case_id, source.patient_id, source.dataset) == ("sub-verse004", "verse004", "verse")
    assert source.image is None and source.labeled
    assert source.centroids.name == "sub-verse004_seg-subreg_ctd.json"


def test_verse_sample_mask_is_uint8_verse_labels_on_the_oblique_grid(verse_case, test_data):
    mask = verse_case.mask
    assert mask.GetPixelIDValue() == sitk.sitkUInt8
    assert tuple(mask.GetSize()) == (161, 338, 61)
    labels = np.unique(sitk.GetArrayViewFromImage(mask))
    assert labels.tolist() == [0] + list(range(16, 25))
    assert axcodes(mask) == ("P", "I", "R")
    # SimpleITK reads the sform (qform_code is 0): its geometry must equal nibabel's affine
    nib_affine = nib.load(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz").affine
    corners = np.array([[0, 0, 0], [160, 337, 60], [160, 0, 0], [0, 337, 60]], dtype=float)
    via_nib = corners @ nib_affine[:3, :3].T + nib_affine[:3, 3]
    via_sitk = corners @ affine_ras(mask)[:3, :3].T + affine_ras(mask)[:3, 3]
    assert np.abs(via_nib - via_sitk).max() < 1e-3


def test_verse_sample_centroids_are_vertebral_bodies_not_mask_centres(verse_case):
    centroids, centres = verse_case.centroids_lps, mask_centres_lps(verse_case.mask)
    assert sorted(centroids) == list(range(16, 25))
    array = sitk.GetArrayViewFromImage(verse_case.mask)
    for label, point in centroids.items():
        distance = float(np.linalg.norm(point - centres[label]))
        assert 9.3 <= distance <= 15.1, (label, distance)  # README: 9.5-14.9 mm
        i, j, k = np.rint(lps_to_voxel(point[None], verse_case.mask)[0]).astype(int)
        assert array[k, j, i] == label  # the body centroid lies inside its own vertebra
    order = sorted(centroids, key=lambda lab: -centroids[lab][2])  # descending superior coordinate (LPS z = S)
    assert order == list(range(16, 25))


def test_json_coordinates_are_voxels_of_the_direction_codes(verse_case, test_data):
    codes, points = read_centroids_json(test_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json")
    assert codes == ("P", "I", "R")
    expected = voxel_to_lps(points[20][None], verse_case.mask)[0]
    assert np.allclose(verse_case.centroids_lps[20], expected)


def test_centroids_written_in_another_orientation_map_to_the_same_points(verse_case, tmp_path, test_data):
    """Re-express the JSON in RAS codes (permute + flip) and check the physical points are unchanged."""
    codes, points = read_centroids_json(test_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json")
    shape = verse_case.mask.GetSize()  # P, I, R axes -> R is axis 2, A is flipped axis 0, S is flipped axis 1
    ras = {k: (p[2], shape[0] - 1 - p[0], shape[1] - 1 - p[1]) for k, p in points.items()}
    path = tmp_path / "ras_ctd.json"
    write_centroids_json(path, ras, ("R", "A", "S"))
    assert json.loads(path.read_text())[0] == {"direction": ["R", "A", "S"]}
    moved = read_centroids_lps(path, verse_case.mask)
    for label, point in verse_case.centroids_lps.items():
        assert np.linalg.norm(moved[label] - point) < 0.02


def test_dicom_series_geometry(test_data):
    (source,) = discover_cases([test_data / "dicom-sample"])
    assert source.dataset == "dicom" and not source.labeled
    case = load_case(source)
    image = case.image
    assert tuple(image.GetSize()) == (512, 512, 20)
    assert np.allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    assert image.GetPixelIDValue() == sitk.sitkInt16
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() == -1024 and values.max() == 1839
    assert axcodes(image) == ("L", "P", "S")  # DICOM LPS: identity direction cosines
