"""DICOM-SEG output on the real DICOM series of tests/data: highdicom and pydicom read it back with one segment per
vertebra, named and coded, each frame on the position of the source slice it references."""

from __future__ import annotations

import json
import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from test_inference_predict import TINY, OracleNet

import vertseg
from vertseg.config import build_config
from vertseg.inference.cases import collect_jobs
from vertseg.inference.dicom_seg import series_files, write_dicom_seg
from vertseg.inference.model_loading import WeightsSource, load_model, random_model
from vertseg.inference.predictor import Predictor
from vertseg.inference.runner import predict_all
from vertseg.inference.writers import OutputOptions


@pytest.fixture(scope="module")
def series(test_data):
    files = series_files(test_data / "dicom-sample", None)
    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    return files, headers


def _by_instance(headers) -> dict[str, pydicom.Dataset]:
    return {str(h.file_meta.MediaStorageSOPInstanceUID): h for h in headers}


def _check_frames_on_source_slices(seg, headers) -> None:
    """Every frame's position/orientation is that of the source slice it was derived from."""
    sources = _by_instance(headers)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[str(referenced)]
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [float(v) for v in headers[0].ImageOrientationPatient])
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID


def test_known_labelmap_round_trips_with_the_series_geometry(tmp_path, series):
    files, headers = series
    labels = np.zeros((len(files), int(headers[0].Rows), int(headers[0].Columns)), np.uint8)
    labels[2:9, 200:300, 220:300] = 20  # L1
    labels[11:17, 190:310, 210:310] = 21  # L2
    labels[18:20, 100:140, 100:150] = 28  # T13: no SNOMED code of its own
    path = tmp_path / "case_seg.dcm"
    notes = write_dicom_seg(path, labels, files)
    assert any("StudyInstanceUID" in note for note in notes)  # the sample is anonymised without UIDs

    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 3
    described = [seg.get_segment_description(n) for n in (1, 2, 3)]
    assert [d.segment_label for d in described] == ["L1", "L2", "T13"]
    assert [d.segmented_property_type.meaning for d in described] == ["L1 vertebra", "L2 vertebra", "Vertebra"]
    from vertseg.inference.colour_tables import verse_colour

    for description, label in zip(described, (20, 21, 28)):  # the colours of the NIfTI colour tables
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(rgb, verse_colour(label), atol=2), (label, rgb)
    assert described[0].algorithm_identification[0].AlgorithmName == "vertseg"
    _check_frames_on_source_slices(seg, headers)
    uids = [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    expected = np.zeros_like(labels)
    for number, label in enumerate((20, 21, 28), start=1):
        expected[labels == label] = number
    np.testing.assert_array_equal(pixels, expected)  # slice k of the volume = source file k

    plain = pydicom.dcmread(str(path))
    assert plain.Modality == "SEG" and plain.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    frames = sum(int(np.count_nonzero((labels == label).any(axis=(1, 2)))) for label in (20, 21, 28))
    assert int(plain.NumberOfFrames) == frames  # one frame per (slice, segment) that holds the segment


def test_the_seg_records_which_model_made_it(tmp_path, series):
    """A SEG a PACS holds for years must say what made it: vertseg, its version, an AI algorithm, and the weights
    (checkpoint file name, sha256 prefix, state dict) on every segment; the model name names the checkpoint."""
    from vertseg.weights import sha256_of

    files, headers = series
    config = build_config(TINY)
    checkpoint = tmp_path / "spine-v7.pt"
    torch.save({"config": config.model_dump(mode="json"), "teacher": random_model(config).state_dict()}, checkpoint)
    weights = Predictor(load_model(checkpoint)[0], config, "cpu").weights
    assert weights == {"checkpoint": "spine-v7.pt", "sha256": sha256_of(checkpoint)[:16], "state": "teacher"}
    labels = np.zeros((len(files), int(headers[0].Rows), int(headers[0].Columns)), np.uint8)
    labels[2:9, 200:300, 220:300] = 20
    labels[11:17, 190:310, 210:310] = 21
    write_dicom_seg(tmp_path / "case_seg.dcm", labels, files, weights)

    seg = hd.seg.segread(str(tmp_path / "case_seg.dcm"))
    for number in (1, 2):
        algorithm = seg.get_segment_description(number).algorithm_identification
        assert (algorithm.name, algorithm.version) == ("vertseg", vertseg.__version__)
        assert algorithm.family.meaning == "Artificial Intelligence"
        assert algorithm.parameters == weights
    plain = pydicom.dcmread(str(tmp_path / "case_seg.dcm"))
    assert plain.ManufacturerModelName == "vertseg spine-v7" and plain.SoftwareVersions == vertseg.__version__


def test_grid_mismatch_and_empty_prediction(tmp_path, series):
    files, _ = series
    with pytest.raises(ValueError, match="series grid"):
        write_dicom_seg(tmp_path / "x.dcm", np.ones((len(files), 10, 10), np.uint8), files)
    assert "no DICOM-SEG" in write_dicom_seg(tmp_path / "y.dcm", np.zeros((len(files), 512, 512), np.uint8), files)[0]
    assert not (tmp_path / "y.dcm").exists()


@pytest.mark.slow
def test_predict_zipped_series_to_dicom_seg(tmp_path, test_data, series):
    _, headers = series
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted((test_data / "dicom-sample").iterdir()):
            bundle.write(path, path.name)
    jobs = collect_jobs([archive], unpack_dir=tmp_path / "unpacked")
    network = OracleNet()  # names bone by HU: some vertebra labels appear
    (tmp_path / "oracle.pt").write_bytes(b"stands for a checkpoint")
    network.weights_source = WeightsSource("checkpoint", tmp_path / "oracle.pt", "teacher")
    predictor = Predictor(network, build_config(TINY), "cpu")
    [record] = predict_all(predictor, jobs, tmp_path / "out", options=OutputOptions(output_type="dicom-seg"))
    assert record["status"] == "ok", record.get("traceback")
    assert record["outputs"]["seg"].endswith("ct_seg.dcm") and not (tmp_path / "out" / "ct" / "ct_seg.nii.gz").exists()
    table = json.loads((tmp_path / "out" / "ct" / "ct_vertebrae.json").read_text())["vertebrae"]
    assert table, "the oracle should label some bone of the real CT"
    seg = hd.seg.segread(record["outputs"]["seg"])
    assert seg.number_of_segments == len(table)
    assert [seg.get_segment_description(n).segment_label for n in range(1, len(table) + 1)] == [r["name"] for r in table]
    assert seg.get_segment_description(1).algorithm_identification.parameters["checkpoint"] == "oracle.pt"
    _check_frames_on_source_slices(seg, headers)


def test_zip_archives_unpack_only_into_their_own_fresh_folder(tmp_path, test_data):
    """`...zip` (stem `..`) unpacked into --out itself and overwrote earlier results; members are checked first."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    dots = tmp_path / "...zip"
    with zipfile.ZipFile(dots, "w") as bundle:
        bundle.writestr("keep.txt", "overwritten")
    with pytest.raises(ValueError, match=r"case id '\.\.'"):
        collect_jobs([dots], unpack_dir=out / ".unpacked")
    assert (out / "keep.txt").read_text() == "earlier result"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as bundle:
        bundle.writestr("a/../../../escape.txt", "x")
    with pytest.raises(ValueError, match="would be written outside"):
        collect_jobs([evil], unpack_dir=out / ".unpacked")
    assert not (tmp_path / "escape.txt").exists() and not (out / ".unpacked" / "evil").exists()
    stale = out / ".unpacked" / "ct"
    stale.mkdir(parents=True)
    (stale / "old-slice.dcm").write_text("from an earlier run")
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted((test_data / "dicom-sample").iterdir())[:3]:
            bundle.write(path, path.name)
    collect_jobs([archive], unpack_dir=out / ".unpacked")
    assert not (stale / "old-slice.dcm").exists() and len(list(stale.iterdir())) == 3  # replaced, not merged
