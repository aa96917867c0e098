"""The user-facing front door: `vertseg.predict` in memory, `--statistics`, label tables for viewers, `--labels
totalseg`, NRRD / MetaImage / zipped DICOM inputs, the `-i/-o` CLI shape, and DICOM-SEG on the real DICOM sample."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_inference_predict import TINY, OracleNet, _levels_phantom, _phantom_nifti, _tiny_yaml
from typer.testing import CliRunner

import vertseg
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.inference.cases import collect_jobs
from vertseg.inference.colour_tables import verse_colour
from vertseg.inference.model_loading import random_model
from vertseg.inference.predictor import Predictor
from vertseg.inference.runner import predict_all
from vertseg.inference.statistics import vertebra_statistics
from vertseg.inference.writers import OutputOptions, Vertebra
from vertseg.labels import vertebra_labels

ORACLE_CONFIG = {**TINY, "inference": {**TINY["inference"], "overlap": 0.5, "min_fragment_ml": 0.1}}
HU_OF = {"L3": 400.0, "L4": 700.0, "L5": 1000.0}  # OracleNet.LEVELS by name


@pytest.fixture(scope="module")
def oracle():
    return Predictor(OracleNet(), build_config(ORACLE_CONFIG), "cpu")


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(1, a.sum() + b.sum())


def test_import_vertseg_stays_light():
    code = "import sys, vertseg; assert 'torch' not in sys.modules and 'vertseg.api' not in sys.modules; print(vertseg.predict.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "vertseg.api"


def test_python_api_in_memory_path_nibabel_and_array(tmp_path, oracle):
    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    original = nib.load(str(tmp_path / "levels.nii.gz"))
    files_before = sorted(tmp_path.iterdir())
    from_path = vertseg.predict(tmp_path / "levels.nii.gz", checkpoint=oracle)
    assert sorted(tmp_path.iterdir()) == files_before  # nothing written
    assert from_path.names == ["L3", "L4", "L5"]
    seg = np.asarray(from_path.labelmap.dataobj)
    assert seg.shape == truth.shape and seg.dtype == np.uint8
    np.testing.assert_array_equal(from_path.labelmap.affine, original.affine)
    for label in (22, 23, 24):
        assert _dice(seg == label, truth == label) > 0.85

    in_memory = vertseg.predict(nib.Nifti1Image(np.asarray(original.dataobj), original.affine), checkpoint=oracle)
    from_array = vertseg.predict(np.asarray(original.dataobj), checkpoint=oracle, affine=original.affine)
    for result in (in_memory, from_array):
        np.testing.assert_array_equal(np.asarray(result.labelmap.dataobj), seg)
        assert result.vertebrae == from_path.vertebrae

    for row in from_path.vertebrae:  # the per-vertebra table: HU of each body names its level
        assert row["hu_median_body"] == pytest.approx(HU_OF[row["name"]], abs=1.0), row
        assert abs(row["hu_mean_body"] - HU_OF[row["name"]]) < 60, row
        assert row["touches_border"] is False
        label = row["label"]
        voxel_ml = abs(np.linalg.det(original.affine[:3, :3])) / 1000
        assert row["volume_ml"] == pytest.approx(np.count_nonzero(seg == label) * voxel_ml, abs=1e-3)
        centre_ras = nib.affines.apply_affine(original.affine, np.argwhere(truth == label).mean(axis=0))
        np.testing.assert_allclose([row[f"centroid_ras_{a}"] for a in "xyz"], centre_ras, atol=1.5)

    with pytest.raises(ValueError, match="affine"):
        vertseg.predict(np.asarray(original.dataobj), checkpoint=oracle)


def test_api_partial_vertebra_touches_the_border(oracle, tmp_path):
    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    original = nib.load(str(tmp_path / "levels.nii.gz"))
    cropped = np.asarray(original.dataobj)[:, :, 4:]  # cut through L5 (k 1..10): it now starts on the first slice
    affine = original.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(original.affine, [0, 0, 4])
    result = vertseg.predict(cropped, checkpoint=oracle, affine=affine)
    flags = {row["name"]: row["touches_border"] for row in result.vertebrae}
    assert flags == {"L3": False, "L4": False, "L5": True}
    assert truth.any()


def test_api_loads_checkpoints_and_falls_back_to_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VERTSEG_HOME", str(tmp_path / "home"))
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz")
    bundled = vertseg.predict(phantom, device="cpu")  # an empty registry: the model shipped in the package
    assert bundled.labelmap.shape == nib.load(str(phantom)).shape
    (tmp_path / "home" / "weights").mkdir(parents=True)
    (tmp_path / "home" / "weights" / "registry.json").write_text("{not json")
    with pytest.raises(ValueError, match="registry.json is damaged"):
        vertseg.predict(phantom)
    config = build_config(TINY)
    path = tmp_path / "ckpt.pt"
    torch.save({"config": config.model_dump(mode="json"), "teacher": random_model(config, seed=2).state_dict()}, path)
    result = vertseg.predict(phantom, checkpoint=path, device="cpu", labels="totalseg")
    assert result.labelmap.shape == nib.load(str(phantom)).shape
    assert set(np.unique(np.asarray(result.labelmap.dataobj))) <= {0, *range(25, 51)}


def test_statistics_read_the_body_not_the_posterior_elements():
    """A vertebra whose body is 250 HU and whose arch is 900 HU: the body region must see only 250."""
    store = np.zeros((20, 40, 20), np.uint8)
    hu = np.full(store.shape, -100.0, np.float32)
    store[5:15, 5:20, 5:15] = 20  # body (anterior, small y)
    hu[5:15, 5:20, 5:15] = 250.0
    store[5:15, 20:38, 8:12] = 20  # arch, attached behind it
    hu[5:15, 20:38, 8:12] = 900.0
    store[0:3, 5:15, 5:15] = 19  # a partial T12 cut by the top of the volume
    hu[0:3, 5:15, 5:15] = 300.0
    store[16:19, 30:36, 16:20] = 21  # a fragment cut by the last x index
    volume = np.count_nonzero(store == 20) / 1000
    vertebrae = [Vertebra(19, 300, 0.3, 0.9, (0, 0, 0), (1.0, 2.0, 3.0)),
                 Vertebra(20, int(volume * 1000), volume, 0.8, (0, 0, 0), (-10.0, 20.0, 30.0)),
                 Vertebra(21, 72, 0.072, float("nan"), (0, 0, 0), (0.0, 0.0, 0.0))]
    centroids = {20: np.array([10.0, 12.0, 10.0])}
    rows = vertebra_statistics(vertebrae, store, store, hu, centroids, 1.0, hu)
    l1 = rows[1]
    assert l1["name"] == "L1" and l1["hu_mean_body"] == 250.0 and l1["hu_median_body"] == 250.0
    assert [row["touches_border"] for row in rows] == [True, False, True]
    assert rows[2]["confidence"] is None
    assert (l1["centroid_ras_x"], l1["centroid_ras_y"], l1["centroid_ras_z"]) == (10.0, -20.0, 30.0)
    whole_mean = float(hu[store == 20].mean())
    assert whole_mean > 400  # what a label-wide mean reports: the whole-vertebra columns, beside the body's
    assert l1["hu_mean_vertebra"] == round(whole_mean, 1) and l1["hu_median_vertebra"] == 250.0  # 1500 vs 720 voxels
    assert (rows[0]["hu_mean_vertebra"], rows[2]["hu_median_vertebra"]) == (300.0, -100.0)
    store_case = vertebra_statistics(vertebrae, store, store, hu, centroids, 1.0, None)  # a Zarr case: no original pixels
    assert store_case[1]["hu_mean_body"] == 250.0 and store_case[1]["hu_mean_vertebra"] is None


def _ctbl(path: Path) -> dict[int, str]:
    rows = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {int(r[0]): r[1] for r in rows}


def _itksnap(path: Path) -> dict[int, str]:
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {int(r.split()[0]): r.split('"')[1] for r in rows}


def test_outputs_statistics_label_tables_and_totalseg_numbering(tmp_path, oracle):
    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    jobs = collect_jobs([tmp_path / "levels.nii.gz"])
    [verse] = predict_all(oracle, jobs, tmp_path / "verse", options=OutputOptions(statistics=True))
    [total] = predict_all(oracle, jobs, tmp_path / "total", options=OutputOptions(labels="totalseg"))
    assert verse["status"] == total["status"] == "ok"
    case = tmp_path / "verse" / "levels"
    seg = np.asarray(nib.load(str(case / "levels_seg.nii.gz")).dataobj)
    slicer, itksnap = _ctbl(case / "levels_seg.ctbl"), _itksnap(case / "levels_seg_itksnap.txt")
    for label in (22, 23, 24):
        assert slicer[label] == itksnap[label] == {22: "L3", 23: "L4", 24: "L5"}[label]
    assert slicer[0] == "Background" and itksnap[0] == "Clear Label"
    assert len({verse_colour(label) for label in range(1, 29)}) == 28

    stats = json.loads((case / "levels_statistics.json").read_text())
    assert [row["name"] for row in stats["vertebrae"]] == ["L3", "L4", "L5"]
    assert [row["hu_median_body"] for row in stats["vertebrae"]] == [400.0, 700.0, 1000.0]
    header = (case / "levels_statistics.csv").read_text().splitlines()[0].split(",")
    assert {"volume_ml", "hu_mean_body", "hu_median_body", "centroid_ras_x", "confidence", "touches_border"} <= set(header)

    total_case = tmp_path / "total" / "levels"
    total_seg = np.asarray(nib.load(str(total_case / "levels_seg.nii.gz")).dataobj)
    # TotalSegmentator v2: L3 = 29, L4 = 28, L5 = 27, the same voxels
    for verse_label, total_id in ((22, 29), (23, 28), (24, 27)):
        np.testing.assert_array_equal(total_seg == total_id, seg == verse_label)
    assert _ctbl(total_case / "levels_seg.ctbl")[29] == "vertebrae_L3"
    assert not (total_case / "levels_statistics.json").exists()
    assert truth.any()


def test_totalseg_numbering_is_one_story_across_labelmap_header_tables_and_evaluate(tmp_path, oracle):
    """--labels totalseg: the labelmap's header names its values (TotalSegmentator's own label-table extension),
    every table row and statistic says which value it is in the file, and `vertseg evaluate` scores the file."""
    from vertseg.data.readers.label_formats import header_label_table
    from vertseg.evaluation.runner import evaluate_folder

    truth = _levels_phantom(tmp_path / "levels.nii.gz")
    jobs = collect_jobs([tmp_path / "levels.nii.gz"])
    predict_all(oracle, jobs, tmp_path / "total", options=OutputOptions(labels="totalseg", statistics=True))
    predict_all(oracle, jobs, tmp_path / "verse", options=OutputOptions(statistics=True))
    total, verse = tmp_path / "total" / "levels", tmp_path / "verse" / "levels"
    assert header_label_table(total / "levels_seg.nii.gz") == {27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3"}
    assert header_label_table(verse / "levels_seg.nii.gz") == {22: "L3", 23: "L4", 24: "L5"}
    for name in ("vertebrae", "statistics"):
        table = json.loads((total / f"levels_{name}.json").read_text())
        assert table["labelmap_numbering"] == "totalseg_v2"
        assert [(r["label"], r["map_value"]) for r in table["vertebrae"]] == [(22, 29), (23, 28), (24, 27)]
        csv_header = (total / f"levels_{name}.csv").read_text().splitlines()[0].split(",")
        assert csv_header[:3] == ["label", "map_value", "name"]
        plain = json.loads((verse / f"levels_{name}.json").read_text())
        assert [(r["label"], r["map_value"]) for r in plain["vertebrae"]] == [(22, 22), (23, 23), (24, 24)]
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "levels.nii.gz").write_bytes((tmp_path / "levels.nii.gz").read_bytes())
    nib.save(nib.Nifti1Image(truth, nib.load(str(tmp_path / "levels.nii.gz")).affine), str(gt / "levels_seg.nii.gz"))
    for pred in (tmp_path / "total", tmp_path / "verse"):
        report = evaluate_folder(pred, [gt])
        [case] = report.cases
        assert not case.failure and case.multilabel_dice == pytest.approx(1.0, abs=0.02)
        assert all(case.id_correct.values()) and sorted(case.id_correct) == [22, 23, 24]


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["vertebrae"]


def test_roi_subset_per_vertebra_masks_and_whole_vertebra_hu(tmp_path, oracle):
    """--roi-subset L3,vertebrae_L5,T12 (T12 not in the scan) --per-vertebra --statistics: every output carries
    exactly L3 and L5, each mask file is its label of the labelmap, and the whole-vertebra HU are the input's HU over
    the written label. A second run into the same folder leaves no mask of the first behind."""
    _levels_phantom(tmp_path / "levels.nii.gz")
    ct = nib.load(str(tmp_path / "levels.nii.gz"))
    jobs = collect_jobs([tmp_path / "levels.nii.gz"])
    predict_all(oracle, jobs, tmp_path / "full")
    subset = vertebra_labels(["L3,vertebrae_L5", "T12"])
    options = OutputOptions(statistics=True, roi_subset=subset, per_vertebra=True)
    [record] = predict_all(oracle, jobs, tmp_path / "out", options=options)
    assert record["vertebrae"] == ["L3", "L5"] and record["notes"] == ["roi subset: T12 not found in this scan"]
    case = tmp_path / "out" / "levels"
    whole = np.asarray(nib.load(str(tmp_path / "full" / "levels" / "levels_seg.nii.gz")).dataobj)
    seg = np.asarray(nib.load(str(case / "levels_seg.nii.gz")).dataobj)
    assert set(np.unique(whole)) == {0, 22, 23, 24}
    np.testing.assert_array_equal(seg, np.where(np.isin(whole, (22, 24)), whole, 0))  # L4 gone, the rest as predicted
    assert [entry["label"] for entry in json.loads((case / "levels_ctd.json").read_text())[1:]] == [22, 24]
    for name in ("vertebrae", "statistics"):
        assert [row["label"] for row in _rows(case / f"levels_{name}.json")] == [22, 24]
        assert [line.split(",")[0] for line in (case / f"levels_{name}.csv").read_text().splitlines()[1:]] == ["22", "24"]
    assert {i["label"] for i in json.loads((case / "levels_vertebrae.json").read_text())["instances"]} == {22, 24}

    masks = sorted((case / "vertebrae").iterdir())
    assert [path.name for path in masks] == ["L3.nii.gz", "L5.nii.gz"]
    for path, label in zip(masks, (22, 24)):
        mask = nib.load(str(path))
        assert mask.get_data_dtype() == np.uint8 and mask.shape == ct.shape
        np.testing.assert_array_equal(mask.affine, ct.affine)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), (seg == label).astype(np.uint8))

    hu = ct.get_fdata()
    for row in _rows(case / "levels_statistics.json"):
        voxels = hu[seg == row["label"]]
        assert row["hu_mean_vertebra"] == pytest.approx(voxels.mean(), abs=0.051), row
        assert row["hu_median_vertebra"] == pytest.approx(np.median(voxels), abs=0.051), row
    assert _rows(case / "levels_statistics.json")[0]["hu_mean_vertebra"] < 399  # the label's rim, not the body alone

    predict_all(oracle, jobs, tmp_path / "out", options=OutputOptions(labels="totalseg", roi_subset=(23,), per_vertebra=True))
    total = np.asarray(nib.load(str(case / "levels_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(total, np.where(whole == 23, 28, 0))  # TotalSegmentator v2: L4 = 28
    [mask] = (case / "vertebrae").iterdir()
    assert mask.name == "vertebrae_L4.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(str(mask)).dataobj), (whole == 23).astype(np.uint8))


def test_api_roi_subset_and_whole_vertebra_hu(tmp_path, oracle):
    _levels_phantom(tmp_path / "levels.nii.gz")
    hu = nib.load(str(tmp_path / "levels.nii.gz")).get_fdata()
    result = vertseg.predict(tmp_path / "levels.nii.gz", checkpoint=oracle, roi_subset="vertebrae_L4")
    seg = np.asarray(result.labelmap.dataobj)
    assert result.names == ["L4"] and set(np.unique(seg)) == {0, 23}
    [row] = result.vertebrae
    assert row["hu_mean_vertebra"] == pytest.approx(hu[seg == 23].mean(), abs=0.051)
    with pytest.raises(ValueError, match="unknown vertebra 'L9'"):
        vertseg.predict(tmp_path / "levels.nii.gz", checkpoint=oracle, roi_subset=["L4", "L9"])


def test_cli_roi_subset_per_vertebra_and_quiet(tmp_path, monkeypatch):
    """The options reach the files from the command line; --quiet prints nothing on success, and only the failed
    case's line (exit 1) when one fails; a name that is no vertebra stops it before any work."""
    import vertseg.cli.predict as cli_predict

    oracle = Predictor(OracleNet(), build_config(ORACLE_CONFIG), "cpu")
    monkeypatch.setattr(cli_predict, "_build_predictor", lambda *args: (oracle, "oracle"))
    _levels_phantom(tmp_path / "levels.nii.gz")
    scan = str(tmp_path / "levels.nii.gz")
    runner = CliRunner()
    args = ["predict", "-i", scan, "--random-weights", "--roi-subset", "L3,T12", "--roi-subset", "L5", "--per-vertebra",
            "--statistics"]
    loud = runner.invoke(app, [*args, "-o", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    assert "roi subset: T12 not found" in loud.output and "1/1 case(s) written" in loud.output
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "quiet"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
    case = tmp_path / "quiet" / "levels"
    assert sorted(p.name for p in (case / "vertebrae").iterdir()) == ["L3.nii.gz", "L5.nii.gz"]
    assert [row["name"] for row in _rows(case / "levels_statistics.json")] == ["L3", "L5"]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not a nifti file")
    failing = runner.invoke(app, ["predict", "-i", scan, "-i", str(tmp_path / "bad" / "broken.nii.gz"), "-o",
                                  str(tmp_path / "failing"), "--random-weights", "-q"])
    assert failing.exit_code == 1
    assert failing.output.startswith("failed broken: ") and len(failing.output.strip().splitlines()) == 1, failing.output
    unknown = runner.invoke(app, ["predict", "-i", scan, "-o", str(tmp_path / "never"), "--random-weights", "-q",
                                  "--roi-subset", "L1,X9"])
    assert unknown.exit_code == 2 and "--roi-subset: unknown vertebra 'X9'" in unknown.output
    assert not (tmp_path / "never").exists()


def test_nrrd_and_metaimage_inputs(tmp_path, oracle):
    _levels_phantom(tmp_path / "levels.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "levels.nii.gz"))
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"scan{suffix}"))
        jobs = collect_jobs([tmp_path / f"scan{suffix}"])
        assert [j.case_id for j in jobs] == ["scan"]
        [record] = predict_all(oracle, jobs, tmp_path / suffix[1:])
        assert record["status"] == "ok" and record["vertebrae"] == ["L3", "L4", "L5"], record.get("traceback")
        seg = sitk.ReadImage(record["outputs"]["seg"])
        assert seg.GetSize() == image.GetSize()
        np.testing.assert_allclose(seg.GetOrigin(), image.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(seg.GetDirection(), image.GetDirection(), atol=1e-6)


def _zip_series(source: Path, archive: Path, prefix: str = "export/") -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(source.iterdir()):
            bundle.write(path, prefix + path.name)
    return archive


def test_zipped_dicom_series_and_unsafe_archives(tmp_path, test_data):
    archive = _zip_series(test_data / "dicom-sample", tmp_path / "series.zip")
    jobs = collect_jobs([archive], unpack_dir=tmp_path / "unpacked")
    assert [j.case_id for j in jobs] == ["series"]
    assert len(list(Path(jobs[0].source.image).iterdir())) == 20
    with pytest.raises(ValueError, match="unpack"):
        collect_jobs([archive])
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("../escaped.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        collect_jobs([evil], unpack_dir=tmp_path / "unpacked")
    assert not (tmp_path / "escaped.txt").exists()


def test_cli_front_door_shape(tmp_path):
    phantom = _phantom_nifti(tmp_path / "phantom.nii.gz", width=160)  # a spine the bone localisation finds
    sitk.WriteImage(sitk.ReadImage(str(phantom)), str(tmp_path / "second.mha"))
    config = _tiny_yaml(tmp_path, overlap=0.5)  # nnU-Net's overlap, so --fast (0.25) has fewer windows
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "-i", str(phantom), "-i", str(tmp_path / "second.mha"), "-o", str(tmp_path / "out"),
                                 "--random-weights", "--config", str(config), "--device", "cpu", "--statistics"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["case_id"] for r in summary["records"]] == ["phantom", "second"]
    for case in ("phantom", "second"):
        for suffix in ("_seg.nii.gz", "_seg.ctbl", "_seg_itksnap.txt", "_statistics.json", "_statistics.csv"):
            assert (tmp_path / "out" / case / f"{case}{suffix}").is_file(), suffix
    fast = runner.invoke(app, ["predict", "-i", str(phantom), "-o", str(tmp_path / "fast"), "--fast", "--random-weights",
                               "--config", str(config), "--device", "cpu"])
    assert fast.exit_code == 0, fast.output
    fast_record = json.loads((tmp_path / "fast" / "summary.json").read_text())["records"][0]
    assert fast_record["windows"] < summary["records"][0]["windows"]  # --fast: less overlap, fewer windows
    refused = runner.invoke(app, ["predict", "-i", str(phantom), "-o", str(tmp_path / "o2"), "--random-weights",
                                  "--config", str(config), "--output-type", "dicom-seg"])
    assert refused.exit_code != 0 and "DICOM" in refused.output
    bad_labels = runner.invoke(app, ["predict", "-i", str(phantom), "-o", str(tmp_path / "o3"), "--random-weights",
                                     "--config", str(config), "--labels", "nnunet"])
    assert bad_labels.exit_code != 0 and "--labels" in bad_labels.output
    nothing = runner.invoke(app, ["predict", "-o", str(tmp_path / "o4"), "--random-weights", "--config", str(config)])
    assert nothing.exit_code != 0 and "-i SCAN" in nothing.output
