"""`vertseg predict` end to end with a tiny random-weight network: outputs on the input grid, failures isolated."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from vertseg.bench.infer import spine_phantom
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.data.readers.geometry import axcodes
from vertseg.evaluation.overlap import dice_from_counts
from vertseg.inference.cases import collect_jobs
from vertseg.inference.column import find_column
from vertseg.inference.model_loading import CheckpointError, load_model, random_model
from vertseg.inference.predictor import Predictor
from vertseg.inference.runner import predict_all, write_summary
from vertseg.inference.writers import OutputOptions

TINY = {
    "model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
    "data": {"patch_size": [16, 16, 16]},
    "inference": {"overlap": 0.0, "window_batch_size": 4, "localisation": "bone", "min_fragment_ml": 0.0},
}


def _phantom_nifti(path: Path, width: int = 64) -> Path:
    """A small oblique-free but flipped, anisotropic CT phantom (L-A-S axes, 1.5 x 0.8 x 0.9 mm). At the default
    width its spine is a toy (4 mm bodies: bone localisation finds no spine in it); width 160 gives 10 mm bodies."""
    margin_y, margin_x = width // 8, 10 * width // 64
    hu = spine_phantom((40, width, width))[:, margin_y:width - margin_y, margin_x:width - margin_x]  # (z=I, y=P, x=R)
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
    assert records[2]["spine_box"]["method"].startswith("bone")  # random weights touch the faces: "bone+grown"
    assert set(records[1]["seconds"]) == {"load", "localisation", "sliding_window", "postprocess", "write", "total"}


def test_bone_localisation_finds_the_column_without_labels():
    hu = spine_phantom((60, 256, 256)).astype(np.float32)  # 1 mm: a 20 mm vertebral body
    column = find_column(hu, 1.0, 2, 200.0)
    start, stop = column.bounds()
    vertebrae = np.argwhere((hu == 350) | (hu == 700))  # vertebral bodies and arches of the phantom
    assert np.all(vertebrae.min(axis=0) >= start) and np.all(vertebrae.max(axis=0) < stop)
    assert stop[2] - start[2] < 80  # ribs and the body outline (88% of the width) are left out
    assert start[0] == 0 and stop[0] == 60
    assert find_column(np.full((20, 30, 30), -1000.0, np.float32), 1.0, 2, 200.0) is None


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

    usage = runner.invoke(app, ["predict", str(phantom), "--out", str(tmp_path / "o2"), "--random-weights",
                                "--checkpoint", str(phantom)])
    assert usage.exit_code == 2 and "give one of --checkpoint" in usage.output


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
    older = config.model_dump(mode="json")
    older["inference"]["spacing_factor"] = 1.0  # a setting an older vertseg saved and this one no longer has
    torch.save({"config": older, "teacher": teacher}, tmp_path / "older.pt")
    with pytest.warns(UserWarning, match="spacing_factor"):
        load_model(tmp_path / "older.pt")
    older["model"]["retired_width"] = 4  # the network sections stay strict
    torch.save({"config": older, "teacher": teacher}, tmp_path / "older_model.pt")
    with pytest.raises(CheckpointError, match="retired_width"):
        load_model(tmp_path / "older_model.pt")

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


class OracleNet(torch.nn.Module):
    """A 'perfect' network for `_levels_phantom`: each vertebra has its own HU, which names its class."""

    LEVELS = {22: 400.0, 23: 700.0, 24: 1000.0}  # VerSe L3, L4, L5 (C1_L5 class index = VerSe label)

    def forward(self, x):
        from vertseg.model.output import SegIdOutput

        hu = x * 2000.0 - 500.0  # inverse of the default [-500, 1500] window
        levels = torch.tensor(list(self.LEVELS.values()))
        nearest = torch.argmin((hu[..., None] - levels).abs(), dim=-1)
        classes = torch.where(hu > 200.0, torch.tensor(list(self.LEVELS))[nearest], 0)
        onehot = F.one_hot(classes[:, 0], 25).permute(0, 4, 1, 2, 3).float()
        ident = torch.log(F.avg_pool3d(onehot, 4) + 1e-4)
        seg = torch.where(hu > 200.0, 8.0, -8.0)
        return SegIdOutput([seg, seg, seg], ident)


def _levels_phantom(path: Path) -> np.ndarray:
    """Three vertebrae (L3-L5) in an L-A-S grid of 0.9 x 0.8 x 1.5 mm; returns the true labels (x, y, z)."""
    shape = (48, 44, 40)
    i, j, k = np.indices(shape)
    hu = np.full(shape, -1000.0)
    hu[((i - 24) / 22) ** 2 + ((j - 22) / 20) ** 2 < 1] = 30.0
    labels = np.zeros(shape, np.uint8)
    column = ((i - 24) * 0.9) ** 2 + ((j - 16) * 0.8) ** 2 < 8.0**2
    for n, label in enumerate((24, 23, 22)):  # z increases superiorly (S): L5 at the bottom
        labels[column & (k >= 1 + 13 * n) & (k < 11 + 13 * n)] = label
    for label, value in OracleNet.LEVELS.items():
        hu[labels == label] = value
    affine = np.array([[-0.9, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 1.5, 100.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    return labels


def _perfect_prediction(tmp_path: Path, label_resampling: str) -> tuple[np.ndarray, list[dict]]:
    inference = {**TINY["inference"], "overlap": 0.5, "min_fragment_ml": 0.1, "label_resampling": label_resampling}
    out = tmp_path / label_resampling
    records = predict_all(Predictor(OracleNet(), build_config({**TINY, "inference": inference}), "cpu"),
                          collect_jobs([tmp_path / "levels.nii.gz"]), out)
    assert records[0]["status"] == "ok", records[0].get("traceback")
    assert records[0]["vertebrae"] == ["L3", "L4", "L5"]
    seg = np.asarray(nib.load(str(out / "levels" / "levels_seg.nii.gz")).dataobj)
    return seg, json.loads((out / "levels" / "levels_ctd.json").read_text())


def test_perfect_network_gives_true_labels_and_centroids_on_the_original_grid(tmp_path):
    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    segs = {}
    for resampling in ("nearest", "label_linear"):
        seg, ctd = segs[resampling] = _perfect_prediction(tmp_path, resampling)
        assert ctd[0]["direction"] == ["L", "A", "S"]
        for entry in ctd[1:]:
            label = entry["label"]
            true_mask, pred_mask = truth == label, seg == label
            dice = dice_from_counts(np.count_nonzero(true_mask & pred_mask), true_mask.sum(), pred_mask.sum())
            assert dice > 0.85, (resampling, label, dice)  # 1 mm store frame and back onto 0.9 x 0.8 x 1.5 mm
            centre = np.argwhere(true_mask).mean(axis=0)
            np.testing.assert_allclose([entry["X"], entry["Y"], entry["Z"]], centre, atol=0.75)
    assert not np.array_equal(segs["nearest"][0], segs["label_linear"][0])  # the setting reaches the writer


def test_zarr_store_cases_predict_onto_their_original_grid(tmp_path):
    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.readers import discover_cases
    from vertseg.data.store import build_manifest, init_store, write_manifest

    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    config = build_config({**TINY, "inference": {**TINY["inference"], "overlap": 0.5, "min_fragment_ml": 0.1}})
    store = tmp_path / "store.zarr"
    init_store(store, config.data)
    result = preprocess_case(discover_cases([tmp_path / "levels.nii.gz"])[0], config.data, store, "unlabeled")
    assert result["status"] == "written", result
    write_manifest(store, build_manifest(store, config.data, []))

    jobs = collect_jobs([store])
    assert [(j.case_id, j.store) for j in jobs] == [("levels", store)]
    records = predict_all(Predictor(OracleNet(), config, "cpu"), jobs, tmp_path / "out",
                          options=OutputOptions(statistics=True))
    assert records[0]["status"] == "ok", records[0].get("traceback")
    assert records[0]["vertebrae"] == ["L3", "L4", "L5"]
    statistics = json.loads((tmp_path / "out" / "levels" / "levels_statistics.json").read_text())["vertebrae"]
    assert [row["hu_median_body"] for row in statistics] == [400.0, 700.0, 1000.0]
    assert {row["hu_mean_vertebra"] for row in statistics} == {None}  # the store keeps no original pixels to read
    seg = nib.load(str(tmp_path / "out" / "levels" / "levels_seg.nii.gz"))
    original = nib.load(str(tmp_path / "levels.nii.gz"))
    assert seg.shape == original.shape
    np.testing.assert_allclose(seg.affine, original.affine, atol=1e-4)
    overlap = (np.asarray(seg.dataobj) == truth)[truth > 0].mean()
    assert overlap > 0.85


def test_predict_refuses_broken_scans_and_labels_nothing_where_there_is_no_spine(tmp_path):
    """A truncated .nii.gz is refused as preprocess refuses it (SimpleITK would read zeros and name vertebrae in
    them); a scan of air is read but has no spine, so nothing is labelled and the record says why."""
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz", width=160)
    data = phantom.read_bytes()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cut.nii.gz").write_bytes(data[: len(data) - 200])
    air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((40, 40, 30), -1024, np.int16), np.diag([1.0, 1.0, 2.0, 1.0])), str(air))
    config = _tiny_yaml(tmp_path)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "broken" / "cut.nii.gz"), str(air), "--random-weights",
                                      "--config", str(config), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    failed = summary["failed"][0]
    assert failed["case_id"] == "cut" and "truncated or corrupt gzip" in failed["error"]
    record = next(r for r in summary["records"] if r["case_id"] == "air")
    assert record["spine_box"]["method"] == "none (no spine found)" and record["vertebrae"] == []
    assert not np.asarray(nib.load(str(tmp_path / "out" / "air" / "air_seg.nii.gz")).dataobj).any()


def test_device_names_and_empty_checkpoints_get_one_line_errors(tmp_path):
    from vertseg.inference.model_loading import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="choose auto, cpu, cuda, mps"):
        resolve_device("cdua")
    if not torch.cuda.is_available():  # TotalSegmentator's spelling means CUDA
        with pytest.raises(ValueError, match="--device cuda was requested"):
            resolve_device("gpu")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        load_model(empty)


def test_checkpoints_with_non_finite_weights_or_unsafe_configs_are_refused(tmp_path):
    """A diverged run's NaN weights used to predict empty labelmaps and register as the default model."""
    config = build_config(TINY)
    state = random_model(config, seed=1).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(float("nan"))
    torch.save({"config": config.model_dump(mode="json"), "model": state}, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite model weights"):
        load_model(tmp_path / "nan.pt")
    torch.save({"config_yaml": "data: !!python/object/apply:os.system ['true']\n",
                "model": random_model(config, seed=1).state_dict()}, tmp_path / "tag.pt")
    with pytest.raises(CheckpointError, match="embedded config is not plain YAML"):
        load_model(tmp_path / "tag.pt")


def test_two_runs_into_one_folder_keep_both_summaries_and_a_file_is_no_folder(tmp_path):
    """Two `vertseg predict` processes writing into one --out at the same time: summary.json lists every case (it
    used to list whichever run finished last)."""
    import subprocess
    import sys

    config = _tiny_yaml(tmp_path)
    scans = [_phantom_nifti(tmp_path / f"scan{i}.nii.gz", width=160) for i in range(2)]
    runs = [subprocess.Popen([sys.executable, "-m", "vertseg", "predict", str(scan), "--random-weights", "--config",
                              str(config), "--out", str(tmp_path / "out"), "--device", "cpu"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for scan in scans]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output.decode()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sorted(r["case_id"] for r in summary["records"]) == ["scan0", "scan1"] and summary["succeeded"] == 2
    (tmp_path / "afile").write_text("not a folder")
    refused = CliRunner().invoke(app, ["predict", str(scans[0]), "--random-weights", "--config", str(config),
                                       "--out", str(tmp_path / "afile")])
    assert refused.exit_code == 2 and "is a file, not a folder" in refused.output
