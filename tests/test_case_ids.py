"""Case ids name output folders: ids from file names and manifests are checked, and outputs stay under their root.

The two reproductions: a scan named `...nii.gz` (case id `..`) and a store manifest listing `../cases/x` both made
`vertseg predict` write outside `--out`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.data.case_ids import CaseIdError, check_case_id
from vertseg.data.readers import discover_cases
from vertseg.data.store import STORE_FORMAT, StoreError, VertStore, case_path, write_case
from vertseg.inference.cases import collect_jobs
from vertseg.inference.runner import case_outputs
from vertseg.io import path_under


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("bad", ["..", "../cases/x", "a/b", "a\\b", "", "   ", ".hidden", "tab\there"])
def test_unsafe_ids_are_refused_naming_their_origin(bad):
    with pytest.raises(CaseIdError, match="manifest.json: case id"):
        check_case_id(bad, "manifest.json")


def test_ordinary_ids_pass_unchanged():
    for good in ("sub-verse004", "verse004_seg", "1.3.12.2_5", "case 7"):
        assert check_case_id(good) == good


def test_path_under_refuses_every_way_out(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert path_under(root, "case", "case_seg.nii.gz") == root / "case" / "case_seg.nii.gz"
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "link")
    for parts in (("..", "x"), ("..",), (str(tmp_path / "abs"),), ("link", "x"), (".",)):
        with pytest.raises(ValueError, match="resolves outside"):
            path_under(root, *parts)


def _scan(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)
    return path


def test_a_scan_named_dot_dot_is_refused_at_discovery(tmp_path):
    scan = _scan(tmp_path / "...nii.gz")
    with pytest.raises(CaseIdError) as caught:
        discover_cases([scan])
    assert str(scan) in str(caught.value) and "'..'" in str(caught.value)


def test_predict_on_a_dot_dot_scan_writes_nothing_outside_out(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    scan = _scan(inputs / "...nii.gz")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
                                      "data": {"patch_size": [16, 16, 16]}}))
    work = tmp_path / "work"
    work.mkdir()
    result = CliRunner().invoke(app, ["predict", str(scan), "--random-weights", "--config", str(config),
                                      "--device", "cpu", "--out", str(work / "out")])
    assert result.exit_code == 2
    assert "case id '..' starts with a dot" in _flat(result.output)
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in", "tiny.yaml", "work"]


def _manifest_store(root: Path, case_id: str) -> Path:
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({
        "format": STORE_FORMAT, "settings": {"spacing_mm": 1.0}, "label_counts": {},
        "cases": {case_id: {"split": "test", "pool": "unlabeled", "patient_id": "p"}},
    }))
    return root


def test_a_manifest_id_that_climbs_out_is_refused(tmp_path):
    store = _manifest_store(tmp_path / "s.zarr", "../cases/x")
    with pytest.raises(StoreError) as caught:
        VertStore(store)
    assert "manifest.json: case id '../cases/x' contains a path separator" in str(caught.value)
    with pytest.raises(StoreError):
        collect_jobs([store])
    result = CliRunner().invoke(app, ["predict", str(store), "--random-weights", "--device", "cpu",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'../cases/x' contains a path separator" in _flat(result.output)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cases").exists()


def test_outputs_of_store_and_predict_stay_under_their_root(tmp_path):
    assert case_outputs(tmp_path, "c1")["seg"] == tmp_path / "c1" / "c1_seg.nii.gz"
    assert case_path(tmp_path, "c1") == tmp_path / "cases" / "c1"
    for bad in ("..", "../cases/x", "a/b"):  # a/b stays inside, but is not the one folder per case readers expect
        with pytest.raises(ValueError):
            case_outputs(tmp_path / "out", bad)
        with pytest.raises(ValueError):
            case_path(tmp_path / "s.zarr", bad)
    config = build_config({}).data
    with pytest.raises(ValueError):
        write_case(tmp_path / "s.zarr", "..", config, np.zeros((2, 2, 2), np.int16), None, np.zeros((0, 4)), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
