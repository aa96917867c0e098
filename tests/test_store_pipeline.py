"""`vertseg preprocess` on Ray end to end: bad cases fail by name while others complete, reruns skip, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from _store_phantom import write_case

from vertseg.data.config import DataConfig
from vertseg.data.parallel import run_preprocess
from vertseg.data.readers import discover_cases
from vertseg.data.store import VertStore

pytestmark = pytest.mark.slow
VERTSEG = [sys.executable, "-m", "vertseg"]


def _bad_inputs(folder: Path) -> dict[str, tuple[str, str]]:
    """Broken cases beside good ones; returns case id -> (file name that must be named, words of the problem)."""
    for name in ("trunc", "shape", "affine", "badlabel", "empty", "nan"):
        write_case(folder, name, "RAS", (2.0, 2.0, 2.0), image_dtype=np.float32 if name == "nan" else np.int16)
    data = (folder / "trunc.nii.gz").read_bytes()
    (folder / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    seg = nib.load(folder / "shape_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj)[:-2], seg.affine), folder / "shape_seg.nii.gz")
    seg = nib.load(folder / "affine_seg.nii.gz")
    shifted = seg.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj), shifted), folder / "affine_seg.nii.gz")
    seg = nib.load(folder / "badlabel_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.where(np.asarray(seg.dataobj) == 22, 40, np.asarray(seg.dataobj)).astype(np.uint8), seg.affine),
             folder / "badlabel_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine), folder / "empty_seg.nii.gz")
    img = nib.load(folder / "nan.nii.gz")
    values = np.asarray(img.dataobj, dtype=np.float32)
    values[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(values, img.affine), folder / "nan.nii.gz")
    return {
        "trunc": ("trunc.nii.gz", "truncated"),
        "shape": ("shape_seg.nii.gz", "shape"),
        "affine": ("affine_seg.nii.gz", "origin"),
        "badlabel": ("badlabel_seg.nii.gz", "outside"),
        "empty": ("empty_seg.nii.gz", "empty"),
        "nan": ("nan.nii.gz", "nan"),
    }


def _store_content(root: Path) -> dict:
    """Everything a reader can see: manifest, per-case attributes and array bytes."""
    store = VertStore(root)
    content = {"manifest": store.manifest}
    for case_id in store.cases():
        group = zarr.open_group(str(root / "cases" / case_id), mode="r")
        content[case_id] = {
            "attrs": dict(group.attrs),
            **{name: group[name][...].tobytes() for name in ("image", "labels", "fg") if name in group},
        }
    return content


def test_bad_cases_fail_by_name_others_complete_and_rerun_skips(tmp_path, ray_cluster):
    data = tmp_path / "data"
    for n, codes in enumerate(("RAS", "LPS", "PIR")):
        write_case(data, f"good{n}", codes, (1.5, 1.5, 2.0), seed=n)
    expected = _bad_inputs(data)
    store = tmp_path / "store.zarr"
    summary = run_preprocess(discover_cases([data]), store, DataConfig(), workers=2)
    failures = {f["case_id"]: f for f in summary.failures}
    assert set(failures) == set(expected)
    for case_id, (file_name, words) in expected.items():
        assert Path(failures[case_id]["file"]).name == file_name, failures[case_id]
        assert words in failures[case_id]["problem"].lower(), failures[case_id]
    manifest = json.loads((store / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == ["good0", "good1", "good2"]
    assert manifest["pools"]["labeled"] == ["good0", "good1", "good2"] and manifest["pools"]["unlabeled"] == []
    assert {f["case_id"] for f in manifest["failures"]} == set(expected)
    assert set(manifest["label_counts"]) == {"0", "20", "21", "22", "23", "24"}
    before = _store_content(store)
    again = run_preprocess(discover_cases([data]), store, DataConfig(), workers=2)
    assert again.count("skipped") == 3 and again.count("written") == 0
    assert _store_content(store) == before
    redo = run_preprocess(discover_cases([data / "good0.nii.gz"]), store, DataConfig(), overwrite=True, pool="unlabeled")
    assert redo.count("written") == 1
    assert VertStore(store).cases(pool="unlabeled") == ["good0"]


def test_killed_run_resumes_to_identical_store(tmp_path, ray_cluster):
    data = tmp_path / "data"
    for n in range(5):
        write_case(data, f"case{n}", ("RAS", "PIR", "LPS")[n % 3], (0.9, 0.9, 1.0), seed=n)
    env = {**os.environ, "RAY_ADDRESS": os.environ["RAY_ADDRESS"]}
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    assert not run_preprocess(discover_cases([data]), reference, DataConfig(), workers=2).failures
    process = subprocess.Popen([*VERTSEG, "preprocess", str(data), "--out", str(resumed), "--workers", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((resumed / "cases").glob("case*/zarr.json")):
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((resumed / "cases").glob("case*/zarr.json")))
    assert 1 <= finished < 5, "the kill must land mid-run"
    assert not (resumed / "manifest.json").exists()
    result = subprocess.run([*VERTSEG, "preprocess", str(data), "--out", str(resumed), "--workers", "2"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{5 - finished} written, {finished} unchanged" in " ".join(result.stderr.split())
    assert not list((resumed / "cases").glob(".*"))
    assert _store_content(resumed) == _store_content(reference)


def test_cli_inspect_reports_ras_centroids_and_failures(tmp_path, ray_cluster):
    from typer.testing import CliRunner

    from vertseg.cli.main import app

    data = tmp_path / "data"
    truth = write_case(data, "ok", "PIR", (1.2, 1.2, 1.2), tilt_deg=8.0)
    write_case(data, "broken", "RAS", (2.0, 2.0, 2.0))
    (data / "broken.nii.gz").write_bytes((data / "broken.nii.gz").read_bytes()[:500])
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    result = runner.invoke(app, ["preprocess", str(data), "--out", str(store)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "1 written, 0 unchanged, 1 failed" in " ".join(result.output.split()) and "broken.nii.gz" in result.output
    shown = json.loads(runner.invoke(app, ["inspect", str(store), "ok", "--json"]).stdout)
    (case,) = shown["cases"]
    assert shown["summary"]["cases"] == 1 and shown["summary"]["failures"] == 1
    assert case["orientation"]["original"] == "PIR"
    for row in case["labels"]:
        assert np.linalg.norm(np.asarray(row["body_centroid_ras"]) - truth["centroids_ras"][row["label"]]) < 1.5
        assert abs(row["volume_ml"] - truth["volume_ml"][row["label"]]) / truth["volume_ml"][row["label"]] < 0.03
    table = runner.invoke(app, ["inspect", str(store)], env={"COLUMNS": "200"}).stdout
    assert "L1 L2 L3 L4 L5" in table and "PIR -> RPI" in table and "broken" in table
    missing = runner.invoke(app, ["inspect", str(tmp_path)])
    assert missing.exit_code == 2 and "not a vertseg store" in " ".join(missing.output.split())
