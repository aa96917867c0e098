"""`vertseg evaluate` on files: failed predictions are scored as empty and fail the run, every NIfTI read is
integrity-checked, VerSe-named prediction folders are read and the matched file is reported."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.evaluation.case import EvalSettings
from vertseg.evaluation.runner import evaluate_folder, find_predictions

FAST = EvalSettings(surface_distances=False)
CROP = (slice(40, 125), slice(95, 180), slice(None))  # T12 and L1 of the real sample, whole


@pytest.fixture(scope="module")
def sample(test_data):
    """T12 (19) and L1 (20) of the real sub-verse004 mask on a crop of its grid, with their annotated centroids."""
    image = nib.load(test_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    mask = np.asarray(image.dataobj).astype(np.uint8)[CROP]
    mask[~np.isin(mask, (19, 20))] = 0
    start = np.array([CROP[0].start, CROP[1].start, 0])
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ start + image.affine[:3, 3]
    entries = json.loads((test_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json").read_text())
    ctd = [entries[0]] + [{**e, "X": round(e["X"] - start[0], 1), "Y": round(e["Y"] - start[1], 1)}
                          for e in entries[1:] if e["label"] in (19, 20)]
    return mask, affine, ctd


def _ground_truth(folder, sample, cases):
    mask, affine, ctd = sample
    folder.mkdir()
    for case in cases:
        nib.save(nib.Nifti1Image(mask, affine), folder / f"{case}_seg.nii.gz")
        (folder / f"{case}_ctd.json").write_text(json.dumps(ctd))
    return folder


def _save(path, mask, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask, affine), path)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _cli(*args):
    result = CliRunner().invoke(app, ["evaluate", *map(str, args)])
    return result.exit_code, " ".join(result.output.split())  # compared independently of line wrapping


def test_missing_prediction_is_scored_empty_and_fails_the_run(tmp_path, sample):
    mask, affine, _ = sample
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001", "verse002"])
    pred = tmp_path / "pred"
    _save(pred / "verse001" / "verse001_seg.nii.gz", mask, affine)
    report = evaluate_folder(pred, [gt], FAST)
    assert report.summary["cases"] == 2 and report.scored_as_empty == ["verse002"]
    assert report.summary["binary_dice"] == pytest.approx(0.5)  # (1 + 0) / 2: the empty prediction counts
    assert report.summary["id_rate"] == pytest.approx(0.5)
    assert "no prediction found" in report.failed["verse002"]
    assert report.summary["headline"].startswith("averages over 2 cases, 1 of them")

    code, output = _cli("--pred", pred, "--gt", gt, "--out", tmp_path / "a.json")
    assert code == 1 and "--allow-missing" in output and "averages over 2 cases" in output
    code, output = _cli("--pred", pred, "--gt", gt, "--out", tmp_path / "b.json", "--allow-missing")
    assert code == 0, output
    summary = json.loads((tmp_path / "b.json").read_text())
    assert summary["scored_as_empty"] == ["verse002"] and summary["binary_dice"] == pytest.approx(0.5)
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "b.csv").open())}
    assert rows["verse002"]["failure"].startswith("no prediction found") and float(rows["verse002"]["binary_dice"]) == 0
    assert rows["verse001"]["prediction"].endswith("verse001_seg.nii.gz") and rows["verse001"]["failure"] == ""


def test_truncated_prediction_is_refused_not_read_as_zeros(tmp_path, sample):
    mask, affine, _ = sample
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001", "verse002"])
    pred = tmp_path / "pred"
    _save(pred / "verse001_seg.nii.gz", mask, affine)
    _truncate(_save(pred / "verse002_seg.nii.gz", mask, affine))
    (pred / "verse003_seg.nii.gz").write_bytes(b"not a nifti")
    report = evaluate_folder(pred, [gt], FAST)
    assert report.scored_as_empty == ["verse002"]
    assert "truncated" in report.failed["verse002"] and "verse002_seg.nii.gz" in report.failed["verse002"]
    assert report.summary["per_case"]["verse002"]["binary_dice"] == 0.0
    assert report.summary["unmatched_predictions"] == ["verse003"]


def test_truncated_ground_truth_is_not_scored_and_always_fails(tmp_path, sample):
    mask, affine, _ = sample
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001", "verse002"])
    _truncate(gt / "verse002_seg.nii.gz")
    pred = tmp_path / "pred"
    for case in ("verse001", "verse002"):
        _save(pred / f"{case}_seg.nii.gz", mask, affine)
    report = evaluate_folder(pred, [gt], FAST)
    assert report.not_scored == ["verse002"] and report.summary["cases"] == 1
    assert "truncated" in report.failed["verse002"] and "not scored" in report.summary["headline"]
    code, output = _cli("--pred", pred, "--gt", gt, "--out", tmp_path / "r.json", "--allow-missing")
    assert code == 1 and "could not be read" in output


def test_verse_named_predictions_flat_and_in_case_folders(tmp_path, sample):
    mask, affine, ctd = sample
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001", "verse002", "verse003"])
    pred = tmp_path / "pred"
    swapped = mask.copy()
    swapped[mask == 19], swapped[mask == 20] = 20, 19
    flat = _save(pred / "verse001_seg-vert_msk.nii.gz", mask, affine)
    (pred / "verse001_seg-subreg_ctd.json").write_text(json.dumps(ctd))
    nested = _save(pred / "verse002" / "verse002_seg-vert_msk.nii.gz", swapped, affine)
    own = _save(pred / "verse003" / "verse003_seg.nii.gz", mask, affine)
    report = evaluate_folder(pred, [gt], FAST)
    assert not report.failed
    assert report.summary["predictions"] == {"verse001": str(flat), "verse002": str(nested), "verse003": str(own)}
    cases = {c.case_id: c for c in report.cases}
    assert cases["verse001"].centroid_source == {"gt": "json", "pred": "json"}
    assert cases["verse001"].distance_mm == pytest.approx({19: 0.0, 20: 0.0}, abs=1e-6)
    assert cases["verse002"].vertebra_dice == {19: 0.0, 20: 0.0} and cases["verse003"].vertebra_dice == {19: 1.0, 20: 1.0}


def test_two_predictions_for_one_case_are_refused(tmp_path, sample):
    mask, affine, _ = sample
    _save(tmp_path / "verse001_seg.nii.gz", mask, affine)
    _save(tmp_path / "verse001" / "verse001_seg-vert_msk.nii.gz", mask, affine)
    with pytest.raises(ValueError, match="two predictions for case verse001"):
        find_predictions(tmp_path)


def test_resampled_predictions_and_mask_centroids_are_said_on_the_console(tmp_path, sample):
    mask, affine, _ = sample
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001"])
    (gt / "verse001_ctd.json").unlink()  # no centroid file: mask centres of mass stand in for body centroids
    shifted = affine.copy()
    shifted[:3, 3] += 0.5  # half a millimetre off the ground truth's grid
    pred = tmp_path / "pred"
    _save(pred / "verse001" / "verse001_seg.nii.gz", mask, shifted)
    code, output = _cli("--pred", pred, "--gt", gt, "--out", tmp_path / "a.json", "--no-surface")
    assert code == 0, output
    assert "note verse001: prediction grid differs from ground truth" in output
    assert "1 ground truths have no centroid file" in output and "not VerSe-comparable" in output
    assert "no centroid file" in json.loads((tmp_path / "a.json").read_text())["headline"]


def test_an_evaluation_spacing_finer_than_any_ct_is_refused(tmp_path, sample):
    gt = _ground_truth(tmp_path / "gt", sample, ["verse001"])
    code, output = _cli("--pred", tmp_path, "--gt", gt, "--spacing", "0.001")
    assert code == 2 and "finer than any CT" in output
