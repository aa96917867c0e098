"""`vertseg evaluate` end to end on files: pairing, failed cases, resampling onto the ground-truth grid, reports."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.evaluation.runner import evaluate_folder, find_predictions, resample_nearest

SAMPLE_MASK = "sub-verse004_seg-vert_msk.nii.gz"
SAMPLE_CTD = "sub-verse004_seg-subreg_ctd.json"


@pytest.fixture()
def folders(tmp_path, test_data):
    """GT: verse001, verse002, verse003 (mask + centroids). Predictions: verse001 (labels 18/19 swapped, no JSON),
    verse002 (corrupt file), verse009 (no ground truth)."""
    sample = test_data / "verse-sample"
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    for case in ("verse001", "verse002", "verse003"):
        shutil.copy(sample / SAMPLE_MASK, gt / f"{case}_seg.nii.gz")
        shutil.copy(sample / SAMPLE_CTD, gt / f"{case}_ctd.json")
    image = nib.load(sample / SAMPLE_MASK)
    mask = np.asarray(image.dataobj).astype(np.uint8)
    swapped = mask.copy()
    swapped[mask == 18], swapped[mask == 19] = 19, 18
    for case, data in (("verse001", swapped), ("verse009", mask)):
        (pred / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, image.affine), pred / case / f"{case}_seg.nii.gz")
    (pred / "verse002").mkdir()
    (pred / "verse002" / "verse002_seg.nii.gz").write_bytes(b"not a nifti")
    return gt, pred, image, mask


def test_cli_reports_failures_and_continues(folders, tmp_path):
    gt, pred, _, mask = folders
    out = tmp_path / "report" / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred), "--gt", str(gt), "--by-region", "--out", str(out),
                                      "--spacing", "0", "--no-surface"])
    assert result.exit_code == 1, result.output  # two predictions failed: scored as empty, and the run says so
    summary = json.loads(out.read_text())
    assert summary["cases"] == 3 and summary["scored_as_empty"] == ["verse002", "verse003"]
    assert set(summary["failed"]) == {"verse002", "verse003"}
    assert "no prediction" in summary["failed"]["verse003"] and "verse002_seg.nii.gz" in summary["failed"]["verse002"]
    assert summary["unmatched_predictions"] == ["verse009"]
    case = summary["per_case"]["verse001"]
    assert case["vertebrae"]["T11"]["dice"] == 0.0 and case["vertebrae"]["T12"]["id_correct"] is False
    assert case["centroid_source"] == {"gt": "json", "pred": "mask"}
    assert summary["acc_id"] == pytest.approx(7 / 27) and summary["regions"]["cervical"]["acc_id"] is None
    n18, n19, total = (mask == 18).sum(), (mask == 19).sum(), (mask > 0).sum()
    assert summary["multilabel_dice"] == pytest.approx((total - n18 - n19) / total / 3)
    rows = list(csv.DictReader((tmp_path / "report" / "eval.csv").open()))
    assert [r["case"] for r in rows] == ["verse001", "verse002", "verse003"]
    assert [float(r["binary_dice"]) for r in rows] == [1.0, 0.0, 0.0]


def test_prediction_on_another_grid_is_resampled_and_one_mm_is_the_default(folders, tmp_path):
    gt, _, image, mask = folders
    pred = tmp_path / "pred2"
    (pred / "verse001").mkdir(parents=True)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(mask, image.affine))  # same voxels, RAS axis order
    nib.save(canonical, pred / "verse001" / "verse001_seg.nii.gz")
    # Its JSON keeps the P-I-R direction: the reader maps it onto the RAS grid with index -> (n - 1) - index.
    shutil.copy(gt / "verse001_ctd.json", pred / "verse001" / "verse001_ctd.json")
    one = tmp_path / "gt1"
    one.mkdir()
    for name in ("verse001_seg.nii.gz", "verse001_ctd.json"):
        shutil.copy(gt / name, one / name)
    report = evaluate_folder(pred, [one], spacing_mm=None)
    assert "verse001" in report.summary["notes"] and report.summary["binary_dice"] == 1.0
    assert report.summary["id_rate"] == 1.0 and report.summary["mean_distance_mm"] == pytest.approx(0.0, abs=1e-3)
    # At 1 mm (the official evaluation spacing) the identity stays perfect: padding is 0, never foreground.
    report = evaluate_folder(pred, [one])
    assert report.summary["mean_vertebra_dice"] == 1.0 and report.summary["settings"]["spacing_mm"] == 1.0


def test_nearest_resampling_fills_outside_with_zero():
    small = sitk.GetImageFromArray(np.full((3, 3, 3), 7, np.uint8))
    small.SetSpacing((2.0, 2.0, 2.0))
    big = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    big.SetOrigin((-4.0, -4.0, -4.0))
    on_big = sitk.GetArrayFromImage(resample_nearest(small, reference=big))
    assert on_big.max() == 7 and on_big.min() == 0 and np.count_nonzero(on_big) == 6 ** 3


def test_prediction_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_predictions(tmp_path / "missing")
    with pytest.raises(ValueError, match="_seg.nii.gz` or `<case>_seg-vert_msk.nii.gz"):
        find_predictions(tmp_path)


def test_bench_decoders_writes_its_section(tmp_path):
    bench = tmp_path / "benchmarks.md"
    result = CliRunner().invoke(app, ["bench", "decoders", "--quick", "--bench-file", str(bench)])
    assert result.exit_code == 0, result.output
    text = bench.read_text()
    assert "<!-- bench:decoders -->" in text and "| missing |" in text and "dp_gaps" in text
