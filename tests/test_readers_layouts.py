"""Every on-disk layout, written by the phantom generator, read back by the readers and checked against truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from vertseg.data.readers import detect_layout, discover_cases, load_case
from vertseg.data.readers.ctspine1k import official_splits
from vertseg.data.synth import RECORD_NAME, generate_dataset

LAYOUT_DATASET = {
    "verse20": ("verse", "verse20"),
    "verse19": ("verse", "verse19"),
    "verse-legacy": ("verse", "verse19"),
    "ctspine1k": ("ctspine1k", "ctspine1k"),
    "nifti": ("nifti", "nifti"),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for n, layout in enumerate(LAYOUT_DATASET):
        folder = root / layout
        generate_dataset(folder, 3, layout, seed=10 + n, labeled_fraction=0.75, multi_scan_rate=0.5,
                         splits={"training": 0.5, "validation": 0.25, "test": 0.25})
        out[layout] = folder
    return out


def _truth(folder):
    return {c["case_id"]: c for c in json.loads((folder / RECORD_NAME).read_text())["cases"]}


@pytest.mark.parametrize("layout", list(LAYOUT_DATASET))
def test_layout_is_detected_and_cases_match_the_record(datasets, layout):
    folder = datasets[layout]
    detected, dataset = LAYOUT_DATASET[layout]
    assert detect_layout(folder) == detected
    truth = _truth(folder)
    sources = discover_cases([folder])
    assert sorted(s.case_id for s in sources) == sorted(truth)
    for source in sources:
        case = truth[source.case_id]
        assert source.dataset == dataset
        assert source.split == case["split"]
        assert source.labeled == case["labeled"]
        assert source.patient_id == case["patient_id"]
        assert source.image.name.endswith(".nii.gz")
    patients = {}
    for source in sources:
        patients.setdefault(source.patient_id, set()).add(source.split)
    assert all(len(splits) == 1 for splits in patients.values())  # no patient straddles splits


@pytest.mark.parametrize("layout", list(LAYOUT_DATASET))
def test_loaded_centroids_equal_the_true_body_centroids(datasets, layout):
    folder = datasets[layout]
    truth = _truth(folder)
    checked = 0
    for source in discover_cases([folder]):
        case = load_case(source)
        record = truth[source.case_id]
        assert tuple(case.image.GetSize()) == tuple(record["shape"])
        assert case.image.GetPixelIDValue() == sitk.sitkInt16
        if not source.labeled:
            assert case.mask is None
            continue
        labels = set(np.unique(sitk.GetArrayViewFromImage(case.mask)).tolist()) - {0}
        if layout == "ctspine1k":  # annotates vertebrae cut by the field of view
            assert labels == set(record["visible"]) | set(record["partial"])
            continue
        assert labels == set(record["visible"])
        assert sorted(case.centroids_lps) == record["visible"]
        for label, lps in case.centroids_lps.items():
            ras = np.array(record["centroids_ras"][str(label)])
            assert np.linalg.norm(lps * [-1, -1, 1] - ras) < 0.05  # JSON rounds voxels to 0.01
            checked += 1
    assert layout == "ctspine1k" or checked > 0


def test_ctspine1k_split_comes_from_the_official_file(datasets):
    official = official_splits()
    for source in discover_cases([datasets["ctspine1k"]]):
        assert source.label_format == "ctspine1k"
        assert official[source.case_id] == source.split
        assert source.image.parent.parent.name == "volumes"


def test_multi_scan_patients_keep_their_scans_apart(datasets):
    sources = discover_cases([datasets["verse20"]])
    by_patient = {}
    for source in sources:
        by_patient.setdefault(source.patient_id, []).append(source.case_id)
    multi = [ids for ids in by_patient.values() if len(ids) > 1]
    assert multi, "multi_scan_rate=0.5 should give a patient with two scans"
    assert all("_split-verse" in case_id for ids in multi for case_id in ids)


def test_several_paths_and_forced_dataset(datasets):
    both = discover_cases([datasets["verse19"], datasets["verse20"]])
    assert {s.dataset for s in both} == {"verse19", "verse20"}
    forced = discover_cases([datasets["nifti"]], dataset="mydata")
    assert {s.dataset for s in forced} == {"mydata"}
    relabeled = discover_cases([datasets["nifti"]], label_format="totalsegmentator")
    assert {s.label_format for s in relabeled if s.labeled} == {"totalsegmentator"}


def test_single_nifti_file_and_unknown_path(datasets, tmp_path):
    image = next(datasets["verse20"].rglob("*_ct.nii.gz"))
    (source,) = discover_cases([image])
    assert source.image == image and not source.labeled and source.split == ""
    with pytest.raises(ValueError, match="no such file"):
        discover_cases([tmp_path / "missing"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no NIfTI or DICOM"):
        discover_cases([tmp_path])


def test_nnunet_extra_channels_are_not_cases(datasets, tmp_path):
    import shutil

    folder = tmp_path / "nn"
    shutil.copytree(datasets["nifti"], folder)
    image = next((folder / "imagesTr").glob("*_0000.nii.gz"))
    shutil.copy(image, image.with_name(image.name.replace("_0000", "_0001")))
    assert len(discover_cases([folder])) == len(discover_cases([datasets["nifti"]]))


def test_an_nnunet_images_folder_given_directly_is_read_as_its_cases(datasets):
    """`vertseg predict -i <dataset>/imagesTr` (or imagesTs) is the first thing an nnU-Net user types; it used to end
    in pathlib's "is not in the subpath of" traceback."""
    from vertseg.inference.cases import collect_jobs

    folder = datasets["nifti"] / "imagesTr"
    whole = {s.patient_id: s.image for s in discover_cases([datasets["nifti"]]) if s.image.parent == folder}
    direct = discover_cases([folder])
    assert {s.case_id: s.image for s in direct} == whole and whole
    assert not any(s.labeled for s in direct)  # labelsTr is not under imagesTr: prediction inputs, no labels
    jobs = collect_jobs([folder])
    assert sorted(job.case_id for job in jobs) == sorted(whole)
