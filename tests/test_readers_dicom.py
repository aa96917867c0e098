"""DICOM series on the real 20-slice sample: a missing or duplicated slice is refused by name, or resampled on request.

ITK alone stacks 19 of the 20 slices at (last - first) / 18 = 2.111 mm and says nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from typer.testing import CliRunner

from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.data.errors import CaseError
from vertseg.data.preprocess import preprocess_case
from vertseg.data.readers import discover_cases, load_case
from vertseg.data.readers.dicom import resample_slices, slice_layout
from vertseg.data.readers.load import read_image
from vertseg.inference.cases import collect_jobs, load_job

DROPPED = 10  # index, in file-name order, of the slice removed from the copy (name order is descending z)


def _files(test_data: Path) -> list[Path]:
    return sorted((test_data / "dicom-sample").iterdir())


@pytest.fixture()
def gapped(tmp_path, test_data) -> Path:
    folder = tmp_path / "gapped"
    folder.mkdir()
    for n, path in enumerate(_files(test_data)):
        if n != DROPPED:
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def original(test_data) -> sitk.Image:
    return read_image(test_data / "dicom-sample")


def test_a_missing_slice_is_refused_naming_the_gap_and_its_files(gapped, test_data):
    names = [p.name for p in _files(test_data)]
    with pytest.raises(CaseError) as caught:
        read_image(gapped)
    problem = caught.value.problem
    assert caught.value.file == gapped
    assert "4.000 mm" in problem and "2.000 mm" in problem and "1 missing slice" in problem
    # the slices on either side of the gap, lower position first
    assert f"from {names[DROPPED + 1]} to {names[DROPPED - 1]}" in problem
    assert names[DROPPED] not in problem and "--allow-irregular" in problem


@pytest.mark.parametrize("keep_bytes", [300, 0.5])
def test_a_truncated_slice_is_named_as_damaged_not_as_a_gap_even_when_irregular_series_are_allowed(
        tmp_path, test_data, keep_bytes):
    """GDCM leaves an unreadable slice out of the series, which then looks like a missing slice: --allow-irregular
    would have interpolated over a damaged file."""
    folder = tmp_path / "damaged"
    shutil.copytree(test_data / "dicom-sample", folder)
    victim = sorted(folder.iterdir())[DROPPED]
    data = victim.read_bytes()
    victim.write_bytes(data[: keep_bytes if isinstance(keep_bytes, int) else int(len(data) * keep_bytes)])
    (folder / "notes.txt").write_text("not DICOM, ignored")
    for allow in (False, True):
        with pytest.raises(CaseError) as caught:
            read_image(folder, allow_irregular=allow)
        assert "1 DICOM file(s) cannot be read (truncated or corrupt)" in caught.value.problem
        assert victim.name in caught.value.problem and "missing slice" not in caught.value.problem


def test_a_duplicated_slice_is_refused_even_when_irregular_series_are_allowed(tmp_path, test_data):
    folder = tmp_path / "doubled"
    shutil.copytree(test_data / "dicom-sample", folder)
    copied = _files(test_data)[5]
    shutil.copy(copied, folder / f"{copied.name}.copy")
    for allow in (False, True):
        with pytest.raises(CaseError) as caught:
            read_image(folder, allow_irregular=allow)
        assert "share one position" in caught.value.problem
        assert f"{copied.name} and {copied.name}.copy" in caught.value.problem


def test_allowed_irregular_series_is_resampled_onto_the_true_grid(gapped, original):
    image = read_image(gapped, allow_irregular=True)
    assert image.GetSize() == original.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin())
    np.testing.assert_allclose(image.GetDirection(), original.GetDirection())
    assert image.GetPixelID() == original.GetPixelID()
    ours, truth = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original)
    missing_z = 19 - DROPPED  # array index (ascending z) of the dropped file
    kept = [k for k in range(20) if k != missing_z]
    np.testing.assert_array_equal(ours[kept], truth[kept])  # every present slice is where it belongs, unchanged
    between = (truth[missing_z - 1].astype(float) + truth[missing_z + 1]) / 2
    assert np.abs(ours[missing_z] - between).max() <= 0.5  # the gap is linear interpolation of its neighbours


def test_the_option_travels_from_discovery_to_the_loaded_case(gapped):
    (refusing,) = discover_cases([gapped])
    with pytest.raises(CaseError, match="not evenly spaced"):
        load_case(refusing)
    (allowing,) = discover_cases([gapped], allow_irregular=True)
    assert allowing.allow_irregular and load_case(allowing).image.GetSpacing()[2] == pytest.approx(2.0)


def test_preprocess_records_the_refusal_and_resamples_when_allowed(gapped, tmp_path):
    config = build_config({"data": {"spacing_mm": 8.0, "chunk_size": [16, 16, 16], "shard_size": [32, 32, 32]}}).data
    (source,) = discover_cases([gapped])
    failed = preprocess_case(source, config, tmp_path / "s.zarr")
    assert failed["status"] == "failed" and "not evenly spaced" in failed["problem"]
    (allowed,) = discover_cases([gapped], allow_irregular=True)
    written = preprocess_case(allowed, config, tmp_path / "s.zarr")
    assert written["status"] == "written", written
    attrs = json.loads((tmp_path / "s.zarr" / "cases" / "gapped" / "zarr.json").read_text())["attributes"]
    assert attrs["geometry"]["original"]["size_xyz"] == [512, 512, 20]
    np.testing.assert_allclose(attrs["geometry"]["original"]["spacing_xyz"], [0.9765625, 0.9765625, 2.0])


def test_predict_jobs_carry_the_option_to_the_loaded_scan(gapped):
    (refusing,) = collect_jobs([gapped])
    with pytest.raises(CaseError, match="not evenly spaced"):
        load_job(refusing, 8.0, (-500.0, 1500.0))
    (allowing,) = collect_jobs([gapped], allow_irregular=True)
    scan = load_job(allowing, 8.0, (-500.0, 1500.0))
    assert scan.reference.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(scan.reference.GetSpacing(), (0.9765625, 0.9765625, 2.0))


@pytest.mark.slow
def test_predict_refuses_then_resamples_with_allow_irregular(gapped, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
        "data": {"patch_size": [16, 16, 16], "spacing_mm": 4.0},
        "inference": {"overlap": 0.0, "window_batch_size": 4, "localisation": "bone", "min_fragment_ml": 0.0},
    }))
    base = ["predict", str(gapped), "--random-weights", "--config", str(config), "--device", "cpu"]
    refused = CliRunner().invoke(app, base + ["--out", str(tmp_path / "a")])
    assert refused.exit_code == 1
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert "not evenly spaced" in summary["failed"][0]["error"]
    allowed = CliRunner().invoke(app, base + ["--out", str(tmp_path / "b"), "--allow-irregular"])
    assert allowed.exit_code == 0, allowed.output
    seg = sitk.ReadImage(str(tmp_path / "b" / "gapped" / "gapped_seg.nii.gz"))
    assert seg.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(seg.GetSpacing(), (0.9765625, 0.9765625, 2.0))


def test_layout_of_unsorted_positions_and_tilt():
    orientation = np.array([1.0, 0, 0, 0, 1, 0])
    positions = np.array([[0, 0, 4.0], [0, 0, 0.0], [0, 0, 2.0], [0, 0, 8.0]])
    layout = slice_layout(["c", "a", "b", "d"], positions, orientation)
    assert layout.files == ("a", "b", "c", "d") and layout.step_mm == 2.0
    assert layout.uneven() == [2] and layout.duplicates() == []
    np.testing.assert_allclose(layout.normal, [0, 0, 1])
    tilted = slice_layout(["a", "b"], np.array([[0, 0, 0.0], [0, 0.7, 2.0]]), orientation)
    assert tilted.in_plane_drift_mm() == pytest.approx(0.7)


def test_resample_slices_fills_gaps_linearly():
    slices = np.stack([np.full((2, 2), v, np.int16) for v in (0, 10, 30)])
    values, step = resample_slices(slices, np.array([0.0, 1.0, 3.0]), 1.0)
    assert step == 1.0 and values.dtype == np.int16
    np.testing.assert_array_equal(values[:, 0, 0], [0, 10, 20, 30])
