"""Bad input raises CaseError naming the file and the problem."""

from __future__ import annotations

import gzip
import json
import pickle

import nibabel as nib
import numpy as np
import pytest

from vertseg.data.errors import CaseError
from vertseg.data.readers import load_case
from vertseg.data.readers.centroids import read_centroids_json
from vertseg.data.types import CaseSource

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _mask() -> np.ndarray:
    mask = np.zeros((12, 12, 16), dtype=np.uint8)
    mask[3:9, 3:9, 2:6] = 20
    mask[3:9, 3:9, 8:12] = 21
    return mask


def _write(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _case(tmp_path, image=None, mask=None, centroids=None, label_format="verse"):
    return CaseSource("c1", "p1", "test", "training", image, mask, centroids, label_format)


@pytest.fixture()
def good(tmp_path):
    image = _write(tmp_path / "img.nii.gz", np.full((12, 12, 16), 40, dtype=np.int16))
    mask = _write(tmp_path / "img_seg.nii.gz", _mask())
    return image, mask


def test_a_good_case_loads(tmp_path, good):
    case = load_case(_case(tmp_path, *good))
    assert case.mask is not None and case.image.GetSize() == (12, 12, 16)


def _expect(source, file, fragment):
    with pytest.raises(CaseError) as caught:
        load_case(source)
    assert caught.value.file == file
    assert fragment in caught.value.problem
    assert str(file) in str(caught.value)


def test_truncated_gzip(tmp_path, good):
    image, mask = good
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    _expect(_case(tmp_path, image, mask), image, "not a readable NIfTI file")


def test_corrupt_bytes_and_missing_file(tmp_path, good):
    image, mask = good
    image.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    _expect(_case(tmp_path, image, mask), image, "not a readable NIfTI file")
    _expect(_case(tmp_path, tmp_path / "missing.nii.gz", mask), tmp_path / "missing.nii.gz", "does not exist")


def test_shape_mismatch(tmp_path, good):
    image, _ = good
    mask = _write(tmp_path / "small_seg.nii.gz", _mask()[:, :, :10])
    _expect(_case(tmp_path, image, mask), mask, "shape")


def test_affine_mismatch(tmp_path, good):
    image, _ = good
    shifted = AFFINE.copy()
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    mask = _write(tmp_path / "moved_seg.nii.gz", _mask(), shifted)
    _expect(_case(tmp_path, image, mask), mask, "origin")
    flipped = AFFINE.copy()
    flipped[0, 0] = -2.0
    mask = _write(tmp_path / "flipped_seg.nii.gz", _mask(), flipped)
    _expect(_case(tmp_path, image, mask), mask, "direction")


def test_nan_image(tmp_path, good):
    _, mask = good
    data = np.zeros((12, 12, 16), dtype=np.float32)
    data[1, 2, 3] = np.nan
    image = _write(tmp_path / "nan.nii.gz", data)
    _expect(_case(tmp_path, image, mask), image, "NaN")


def test_labels_outside_the_table(tmp_path, good):
    image, _ = good
    bad = _mask()
    bad[0, 0, 0] = 41
    mask = _write(tmp_path / "bad_seg.nii.gz", bad)
    _expect(_case(tmp_path, image, mask), mask, "[41]")
    ctspine = _mask()
    ctspine[0, 0, 0] = 27
    mask = _write(tmp_path / "ct_seg.nii.gz", ctspine)
    _expect(_case(tmp_path, image, mask, label_format="ctspine1k"), mask, "ctspine1k table")


def test_empty_and_non_integer_masks(tmp_path, good):
    image, _ = good
    empty = _write(tmp_path / "empty_seg.nii.gz", np.zeros((12, 12, 16), dtype=np.uint8))
    _expect(_case(tmp_path, image, empty), empty, "empty mask")
    soft = _write(tmp_path / "soft_seg.nii.gz", _mask().astype(np.float32) * 0.5)
    _expect(_case(tmp_path, image, soft), soft, "non-integer")


def test_label_converters_run_on_read(tmp_path, good):
    import SimpleITK as sitk

    image, _ = good
    total = np.zeros((12, 12, 16), dtype=np.uint8)
    total[3:9, 3:9, 2:6] = 31  # TotalSegmentator v2 vertebrae_L1 = VerSe 20
    total[0:2, 0:2, 0:2] = 5  # an organ: not a vertebra, dropped
    mask = _write(tmp_path / "total_seg.nii.gz", total)
    case = load_case(_case(tmp_path, image, mask, label_format="totalseg_v2"))
    assert np.unique(sitk.GetArrayViewFromImage(case.mask)).tolist() == [0, 20]


def test_bad_centroid_files(tmp_path, good):
    image, mask = good
    path = tmp_path / "c_ctd.json"
    path.write_text("{not json")
    _expect(_case(tmp_path, image, mask, path), path, "unreadable")
    path.write_text(json.dumps([{"direction": ["L", "A", "X"]}]))
    _expect(_case(tmp_path, image, mask, path), path, "direction")
    path.write_text(json.dumps([{"direction": ["L", "A", "S"]}, {"label": 40, "X": 1, "Y": 2, "Z": 3}]))
    _expect(_case(tmp_path, image, mask, path), path, "not a VerSe label")
    path.write_text(json.dumps([{"label": 20, "X": 500, "Y": 2, "Z": 3}]))
    _expect(_case(tmp_path, image, mask, path), path, "outside")
    path.write_text(json.dumps([{"label": 20, "X": 5, "Y": 5, "Z": 4}]))  # no direction: the image's own grid
    assert read_centroids_json(path)[0] is None
    case = load_case(_case(tmp_path, image, mask, path))
    assert np.allclose(case.centroids_lps[20], [-10.0, -10.0, 8.0])


def test_non_integral_centroid_labels_are_refused_not_rounded(tmp_path):
    path = tmp_path / "c_ctd.json"
    path.write_text(json.dumps([{"direction": ["L", "A", "S"]}, {"label": 19, "X": 1, "Y": 2, "Z": 3},
                                {"label": 20.7, "X": 1, "Y": 2, "Z": 5}]))
    with pytest.raises(CaseError) as caught:
        read_centroids_json(path)
    assert caught.value.file == path
    assert "centroid entry 2" in caught.value.problem and "label 20.7 is not a whole number" in caught.value.problem
    for label in (True, "20.5", None):
        path.write_text(json.dumps([{"label": label, "X": 1, "Y": 2, "Z": 3}]))
        with pytest.raises(CaseError):
            read_centroids_json(path)
    path.write_text(json.dumps([{"label": 20.0, "X": 1, "Y": 2, "Z": 3}]))
    assert list(read_centroids_json(path)[1]) == [20]


def test_case_error_survives_pickling():
    error = pickle.loads(pickle.dumps(CaseError("/data/x.nii.gz", "empty mask")))
    assert (str(error.file), error.problem) == ("/data/x.nii.gz", "empty mask")


@pytest.mark.parametrize("shape, zooms, values, fragment", [
    ((12, 12, 1), (2.0, 2.0, 2.0), 40, "covers only 2.0 mm along axis 2"),  # a single slice
    ((12, 12, 16), (2.0, 0.0, 2.0), 40, "spacing 0 mm along axis 1"),  # ITK would read 1 mm
    ((12, 12, 16), (2.0, 2.0, 1e-3), 40, "spacing 0.001 mm"),
    ((12, 12, 16), (2.0, 2.0, 2.0), 4_000_000, "not Hounsfield units"),  # HU x 1e5
])
def test_what_no_spine_ct_is_refused_before_any_vertebra_is_named(tmp_path, shape, zooms, values, fragment):
    data = np.full(shape, values, dtype=np.int32)
    image = nib.Nifti1Image(data, None)  # geometry from pixdim alone, as a careless converter writes it
    image.header.set_zooms(zooms)
    nib.save(image, tmp_path / "scan.nii.gz")
    _expect(_case(tmp_path, tmp_path / "scan.nii.gz"), tmp_path / "scan.nii.gz", fragment)
