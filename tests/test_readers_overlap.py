"""Pool-overlap guard (VerSe'19 scans re-used in VerSe'20), split names from folders and patient-grouped splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vertseg.data.readers import OverlapError, check_pool_overlap, split_by_patient
from vertseg.data.readers.overlap import pool_of
from vertseg.data.readers.splits import split_of_part
from vertseg.data.types import CaseSource


def src(case_id, patient, dataset, split, labeled=True, image=None):
    return CaseSource(case_id, patient, dataset, split, image or Path(f"/d/{dataset}/{case_id}.nii.gz"),
                      Path(f"/d/{case_id}_seg.nii.gz") if labeled else None)


def test_clean_pools_pass_untouched():
    sources = [src("sub-verse004", "verse004", "verse19", "training"),
               src("sub-verse005", "verse005", "verse19", "test"),
               src("sub-verse600", "verse600", "verse20", "training", labeled=False)]
    report = check_pool_overlap(sources)
    assert report.clean and report.kept == sources
    assert [pool_of(s) for s in sources] == ["labeled", "test", "unlabeled"]


def test_a_test_patient_never_reaches_training():
    test_scan = src("sub-verse004", "verse004", "verse19", "test")
    leaked = src("sub-verse004", "verse004", "verse20", "training", labeled=False)
    other = src("sub-verse777", "verse777", "verse20", "training", labeled=False)
    report = check_pool_overlap([leaked, test_scan, other])
    assert report.kept == [test_scan, other]
    assert [s for s, _ in report.dropped] == [leaked]
    assert "test pool" in report.dropped[0][1]
    assert "verse004" in report.summary()
    with pytest.raises(OverlapError, match="verse004"):
        check_pool_overlap([leaked, test_scan, other], policy="refuse")


def test_split_entity_links_a_verse20_subject_to_its_verse19_scan():
    """sub-verse401_split-verse290 is VerSe'19 scan verse290 under a new subject id."""
    old = src("verse290", "verse290", "verse19", "validation")
    new = src("sub-verse401_split-verse290", "verse401", "verse20", "training")
    sibling = src("sub-verse401_split-verse291", "verse401", "verse20", "training")
    report = check_pool_overlap([old, new, sibling])
    assert report.kept == [old]  # the whole patient (both scans) leaves training
    assert {s.case_id for s, _ in report.dropped} == {new.case_id, sibling.case_id}


def test_same_scan_twice_in_one_pool_is_deduplicated_keeping_the_labeled_copy():
    unlabeled = src("sub-verse010", "verse010", "verse20", "training", labeled=False)
    labeled = src("sub-verse010", "verse010", "verse19", "training")
    second_scan = src("sub-verse010_dir-sag", "verse010", "verse19", "training")
    report = check_pool_overlap([unlabeled, labeled, second_scan])
    # the unlabeled copy is dropped for being in a lower pool; two different scans of one patient stay
    assert report.kept == [labeled, second_scan]
    duplicate = check_pool_overlap([labeled, src("sub-verse010", "verse010", "verse20", "training")])
    assert len(duplicate.kept) == 1 and "duplicate" in duplicate.dropped[0][1]
    assert not duplicate.conflicts  # same pool: nothing to refuse
    check_pool_overlap([labeled, src("sub-verse010", "verse010", "verse20", "training")], policy="refuse")


def test_generic_datasets_do_not_collide_by_name_but_do_by_content(tmp_path, test_data):
    a = tmp_path / "a" / "case1.nii.gz"
    b = tmp_path / "b" / "case1.nii.gz"
    for path in (a, b):
        path.parent.mkdir()
        shutil.copy(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz", path)
    first = src("case1", "case1", "hospitalA", "test", image=a)
    second = src("case1", "case1", "hospitalB", "training", image=b)
    assert check_pool_overlap([first, second]).clean  # same name, different datasets: no evidence of overlap
    report = check_pool_overlap([first, second], use_fingerprints=True)
    assert report.kept == [first] and report.conflicts


def test_policy_is_validated():
    with pytest.raises(ValueError, match="policy"):
        check_pool_overlap([], policy="ignore")


@pytest.mark.parametrize(
    ("folder", "split"),
    [("dataset-01training", "training"), ("dataset-02validation", "validation"), ("dataset-03test", "test"),
     ("dataset-verse19validation", "validation"), ("verse19test", "test"), ("imagesTr", "training"),
     ("imagesTs", "test"), ("val", "validation"), ("unlabeled", "unlabeled"), ("interval_scans", ""),
     ("rawdata", ""), ("sub-verse004", "")],
)
def test_split_names_from_folders(folder, split):
    assert split_of_part(folder) == split


def test_split_by_patient_keeps_patients_together_and_is_order_independent():
    sources = [src(f"sub-p{p:02d}_scan{s}", f"p{p:02d}", "site", "") for p in range(40) for s in range(2)]
    fractions = {"training": 0.7, "validation": 0.15, "test": 0.15}
    assigned = split_by_patient(sources, fractions, seed=3)
    by_patient = {}
    for source in assigned:
        by_patient.setdefault(source.patient_id, set()).add(source.split)
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {name: sum(1 for s in by_patient.values() if name in s) for name in fractions}
    assert counts["training"] > counts["validation"] > 0 and counts["test"] > 0
    reordered = split_by_patient(list(reversed(sources)), fractions, seed=3)
    assert {s.case_id: s.split for s in reordered} == {s.case_id: s.split for s in assigned}
    kept = split_by_patient([src("x", "x", "site", "test")], fractions)
    assert kept[0].split == "test"


def test_one_root_with_both_verse_releases_finds_both_copies_and_the_guard_resolves_them(tmp_path):
    from vertseg.data.readers import discover_cases
    from vertseg.data.synth import generate_dataset

    generate_dataset(tmp_path / "verse19", 1, "verse19", seed=1, first_id=4, splits={"test": 1.0})
    generate_dataset(tmp_path / "verse20", 1, "verse20", seed=2, first_id=4, splits={"training": 1.0})
    sources = discover_cases([tmp_path])
    assert sorted((s.dataset, s.case_id, s.split) for s in sources) == [
        ("verse19", "sub-verse004", "test"), ("verse20", "sub-verse004", "training"),
    ]
    report = check_pool_overlap(sources)
    assert [(s.dataset, s.split) for s in report.kept] == [("verse19", "test")]
