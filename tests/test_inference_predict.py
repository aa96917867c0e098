"""`vertseg predict` end to end with a tiny random-weight network: outputs on the input grid, failures isolated."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from typer.testing import CliRunner

from vertseg.bench.infer import spine_phantom
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.data.readers.geometry import axcodes
from vertseg.inference.cases import collect_jobs
from vertseg.inference.localisation import bone_box
from vertseg.inference.model_loading import CheckpointError, load_model, random_model
from vertseg.inference.predictor import Predictor
from vertseg.inference.runner import predict_all, write_summary

TINY = {
    "model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
    "data": {"patch_size": [16, 16, 16]},
    "inference": {"overlap": 0.0, "window_batch_size": 4, "localisation": "bone", "min_fragment_ml": 0.0},
}


def _phantom_nifti(path: Path) -> Path:
    """A small oblique-free but flipped, anisotropic CT phantom (L-A-S axes, 1.5 x 0.8 x 0.9 mm)."""
    hu = spine_phantom((40, 64, 64))[:, 8:56, 10:54]  # (z=I, y=P, x=R)
    data = np.ascontiguousarray(hu[::-1, ::-1, ::-1].transpose(2, 1, 0))  # (x: L, y: A, z: S)
    affine = np.array([[-0.9, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_predictor():
    config = build_config(TINY)
    return Predictor(random_model(config, seed=3), config, "cpu")


def _check_outputs(case_dir: Path, case_id: str, reference: sitk.Image) -> None:
    seg_path = case_dir / f"{case_id}_seg.nii.gz"
    for suffix in ("_seg.nii.gz", "_ctd.json", "_vertebrae.json", "_vertebrae.csv", "_qc.png"):
        assert (case_dir / f"{case_id}{suffix}").stat().st_size > 0
    seg = sitk.ReadImage(str(seg_path))
    assert seg.GetSize() == reference.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(seg.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(seg.GetDirection(), reference.GetDirection(), atol=1e-5)
    labels = sitk.GetArrayFromImage(seg)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= set(range(0, 29))
    ctd = json.loads((case_dir / f"{case_id}_ctd.json").read_text())
    assert ctd[0] == {"direction": list(axcodes(reference))}
    table = json.loads((case_dir / f"{case_id}_vertebrae.json").read_text())
    assert {row["label"] for row in table["vertebrae"]} == set(np.unique(labels)) - {0}
    assert [e["label"] for e in ctd[1:]] == sorted(row["label"] for row in table["vertebrae"])
    for row in table["vertebrae"]:  # volumes recomputed from the written labelmap
        expected = np.count_nonzero(labels == row["label"]) * np.prod(reference.GetSpacing()) / 1000
        assert row["volume_ml"] == pytest.approx(expected, abs=1e-3)
    png = (case_dir / f"{case_id}_qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_phantom_dicom_and_a_broken_case(tmp_path, tiny_predictor, test_data):
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    jobs = collect_jobs([broken, phantom, test_data / "dicom-sample"])
    assert [j.case_id for j in jobs] == ["broken", "phantom", "dicom-sample"]
    done = []
    records = predict_all(tiny_predictor, jobs, tmp_path / "out", on_done=done.append)
    assert [r["status"] for r in records] == ["failed", "ok", "ok"] and len(done) == 3
    assert "broken.nii.gz" in records[0]["error"]
    summary = write_summary(tmp_path / "out", records, {})
    assert summary["succeeded"] == 2 and [f["case_id"] for f in summary["failed"]] == ["broken"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed"][0]["case_id"] == "broken"

    # NIfTI input: the labelmap keeps the input's affine and shape exactly
    original = nib.load(str(phantom))
    seg = nib.load(str(tmp_path / "out" / "phantom" / "phantom_seg.nii.gz"))
    assert seg.shape == original.shape
    np.testing.assert_array_equal(seg.affine, original.affine)
    _check_outputs(tmp_path / "out" / "phantom", "phantom", sitk.ReadImage(str(phantom)))

    # DICOM input: the labelmap has the series' grid
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(test_data / "dicom-sample")))
    dicom = reader.Execute()
    _check_outputs(tmp_path / "out" / "dicom-sample", "dicom-sample", dicom)
    assert records[2]["spine_box"]["method"] == "bone"
    assert set(records[1]["seconds"]) == {"load", "localisation", "sliding_window", "postprocess", "write", "total"}


def test_bone_localisation_finds_the_column_without_labels():
    hu = spine_phantom((60, 128, 128)).astype(np.float32)
    start, stop = bone_box(hu, 1.0, 200.0)
    column = np.argwhere((hu == 350) | (hu == 700))  # vertebral bodies and arches of the phantom
    assert np.all(column.min(axis=0) >= start) and np.all(column.max(axis=0) < stop)
    assert stop[2] - start[2] < 40  # ribs and the body outline (88% of the width) are left out
    assert start[0] == 0 and stop[0] == 60
    assert bone_box(np.full((20, 30, 30), -1000.0, np.float32), 1.0, 200.0) is None


def _tiny_yaml(tmp_path: Path, **inference) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["inference"].update(inference)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_random_weights_reports_failure_and_exit_code(tmp_path):
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz")
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "empty.nii"
    bad.write_bytes(b"")
    config = _tiny_yaml(tmp_path, localisation="network")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(phantom), str(bad), "--random-weights", "--config", str(config),
                                 "--out", str(tmp_path / "out"), "--device", "cpu", "--tta"])
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["succeeded"] == 1 and summary["failed"][0]["case_id"] == "empty"
    assert (tmp_path / "out" / "phantom" / "phantom_seg.nii.gz").exists()
    record = summary["records"][0]
    assert record["spine_box"]["method"] in ("network", "bone", "none (no spine found)")

    usage = runner.invoke(app, ["predict", str(phantom), "--out", str(tmp_path / "o2")])
    assert usage.exit_code == 2 and "--checkpoint" in usage.output


def test_checkpoint_uses_teacher_weights_and_refuses_network_changes(tmp_path):
    config = build_config(TINY)
    student = random_model(config, seed=1).state_dict()
    teacher = random_model(config, seed=2).state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"config": config.model_dump(mode="json"), "student": student, "teacher": teacher, "epoch": 3}, path)
    model, loaded, key = load_model(path, ["inference.decoder=paper"])
    assert key == "teacher" and loaded.inference.decoder == "paper"
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, teacher[name])
    with pytest.raises(CheckpointError, match="model"):
        load_model(path, ["model.base_width=4"])
    torch.save({"student": student}, tmp_path / "noconfig.pt")
    with pytest.raises(CheckpointError, match="config"):
        load_model(tmp_path / "noconfig.pt")

    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz")
    result = CliRunner().invoke(app, ["predict", str(phantom), "--checkpoint", str(path), "--out", str(tmp_path / "out"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "teacher" in summary["weights"] and summary["succeeded"] == 1


@pytest.mark.slow
def test_predict_on_ray_matches_the_serial_run(tmp_path, ray_cluster):
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz")
    second = tmp_path / "second.nii.gz"
    second.write_bytes(phantom.read_bytes())
    config = _tiny_yaml(tmp_path)
    common = [str(phantom), str(second), "--random-weights", "--config", str(config), "--device", "cpu", "--seed", "5"]
    runner = CliRunner()
    serial = runner.invoke(app, ["predict", *common, "--out", str(tmp_path / "serial")])
    parallel = runner.invoke(app, ["predict", *common, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2"])
    assert serial.exit_code == 0 and parallel.exit_code == 0, parallel.output
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["ray"] is True
    for case in ("phantom", "second"):
        a = nib.load(str(tmp_path / "serial" / case / f"{case}_seg.nii.gz")).get_fdata()
        b = nib.load(str(tmp_path / "ray" / case / f"{case}_seg.nii.gz")).get_fdata()
        np.testing.assert_array_equal(a, b)
