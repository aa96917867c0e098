"""Masks of other conventions are read BY NAME: TotalSegmentator v1/v2 (multilabel, header tables, per-structure
folders), CTSpine1K, VerSe; what cannot be told apart is refused; VerSe labelmaps export to TotalSegmentator ids."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from vertseg import labels
from vertseg.cli.main import app
from vertseg.data.errors import CaseError
from vertseg.data.readers import detect_layout, discover_cases, load_case
from vertseg.data.readers.load import read_mask
from vertseg.data.types import CaseSource

SHAPE = (10, 12, 14)  # nibabel (i, j, k)
T8, L5 = 15, 24  # VerSe


def _nifti(path, data, extensions=()):
    image = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    for extension in extensions:
        image.header.extensions.append(extension)
    nib.save(image, str(path))
    return path


def _mask_with(*values):
    """One slab per value along k, so each value keeps its own voxels."""
    data = np.zeros(SHAPE, np.uint8)
    for n, value in enumerate(values):
        data[2:8, 2:9, 1 + 3 * n: 3 + 3 * n] = value
    return data


def _verse_values(image):
    return sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(image)) if v)


def test_totalsegmentator_v1_t8_is_not_read_as_l5(tmp_path):
    """The bug the tables fix: v1 id 27 is T8; the old arithmetic (51 - id, v2's layout) made it L5."""
    path = _nifti(tmp_path / "v1.nii.gz", _mask_with(27, 41, 5))  # v1: T8, C1, an organ (liver)
    assert _verse_values(read_mask(path, "totalseg_v1")) == [1, T8]
    assert _verse_values(read_mask(path, "totalseg_v2")) == [10, L5]  # same values as v2 mean L5 and T3


def test_unversioned_totalsegmentator_is_refused_unless_the_file_tells(tmp_path):
    ambiguous = _nifti(tmp_path / "ts.nii.gz", _mask_with(27, 31))
    with pytest.raises(CaseError, match="totalseg_v1 or totalseg_v2"):
        read_mask(ambiguous, "totalsegmentator")
    v2_only = _nifti(tmp_path / "ts_ribs.nii.gz", _mask_with(27, 31, 110))  # 110 = rib_right_7 exists in v2 only
    assert _verse_values(read_mask(v2_only, "totalsegmentator")) == [20, L5]


def test_verse_default_refuses_foreign_values_with_a_hint(tmp_path):
    path = _nifti(tmp_path / "x_seg.nii.gz", _mask_with(27, 41))
    with pytest.raises(CaseError, match="--label-format"):
        read_mask(path, "verse")


def _caret_extension(table: dict[int, str]) -> nib.nifti1.Nifti1Extension:
    """The label-table extension TotalSegmentator v2 writes (`nifti_ext_header.add_label_map_to_nifti`)."""
    rows = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in table.items())
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>\n'
           f"{rows}</LabelTable> <VolumeType><![CDATA[Label]]></VolumeType> </VolumeInformation></CaretExtension>\n   ")
    return nib.nifti1.Nifti1Extension(0, xml.encode())


def test_a_header_label_table_wins_over_the_declared_format(tmp_path):
    """A mask that names its own values is read by those names, whatever numbering it uses."""
    table = {5: "liver", 27: "vertebrae_T8", 41: "vertebrae_C1", 92: "sacrum"}  # v1 numbering, named
    path = _nifti(tmp_path / "named_seg.nii.gz", _mask_with(27, 41, 92, 5), [_caret_extension(table)])
    for declared in ("verse", "totalsegmentator", "totalseg_v2"):
        assert _verse_values(read_mask(path, declared)) == [1, T8, labels.SACRUM]
    nameless = _nifti(tmp_path / "organs_seg.nii.gz", _mask_with(5), [_caret_extension({5: "liver"})])
    with pytest.raises(CaseError, match="names no vertebra"):
        read_mask(nameless, "verse")


def _totalseg_case(root, name="s0001", overlap=False):
    folder = root / name
    (folder / "segmentations").mkdir(parents=True)
    _nifti(folder / "ct.nii.gz", np.full(SHAPE, 40))
    for structure, k in (("vertebrae_T12", 1), ("vertebrae_L1", 4), ("sacrum", 7), ("vertebrae_S1", 7), ("liver", 10)):
        data = np.zeros(SHAPE, np.uint8)
        data[2:8, 2:9, k: k + 2] = 1
        _nifti(folder / "segmentations" / f"{structure}.nii.gz", data)
    if overlap:
        data = np.zeros(SHAPE, np.uint8)
        data[2:8, 2:9, 4:6] = 1
        _nifti(folder / "segmentations" / "vertebrae_L2.nii.gz", data)
    return folder


def test_totalsegmentator_release_folders_combine_structure_files_by_name(tmp_path):
    _totalseg_case(tmp_path / "release")
    assert detect_layout(tmp_path / "release") == "totalseg"
    [source] = discover_cases([tmp_path / "release"])
    assert source.case_id == "s0001" and source.mask.name == "segmentations"
    case = load_case(source)
    mask = sitk.GetArrayViewFromImage(case.mask)  # (k, j, i)
    assert _verse_values(case.mask) == [19, 20, labels.SACRUM]  # liver left out
    assert np.unique(mask[1:3, 2:9, 2:8]).tolist() == [19]
    assert np.unique(mask[4:6, 2:9, 2:8]).tolist() == [20]
    _totalseg_case(tmp_path / "bad", overlap=True)
    with pytest.raises(CaseError, match="another structure"):
        load_case(discover_cases([tmp_path / "bad"])[0])


def test_ctspine1k_l6_and_verse_identity(tmp_path):
    path = _nifti(tmp_path / "c_seg.nii.gz", _mask_with(1, 24, 25))
    assert _verse_values(read_mask(path, "ctspine1k")) == [1, 24, labels.L6]
    assert _verse_values(read_mask(path, "verse")) == [1, 24, labels.L6]


def test_tables_agree_by_name_and_export_to_totalsegmentator():
    v1, v2 = labels.TOTALSEG_V1_SPINE, labels.TOTALSEG_V2_SPINE
    v1_by_name = {name: raw for raw, name in v1.items()}
    for raw, name in v2.items():
        if name.startswith("vertebrae_") and name != "vertebrae_S1":
            assert v1_by_name[name] == raw - 9  # both releases list L5..C1 contiguously
    verse = np.array([labels.NAME_TO_VERSE["L1"], labels.NAME_TO_VERSE["C1"], labels.SACRUM, labels.L6, 0])
    exported, dropped = labels.LABEL_FORMATS["totalseg_v2"].from_verse(verse)
    assert exported.tolist() == [31, 50, 25, 0, 0] and dropped == [labels.L6]
    round_trip = labels.LABEL_FORMATS["totalseg_v2"].to_verse(exported)
    assert round_trip.tolist() == [20, 1, labels.SACRUM, 0, 0]


def test_vertebra_names_of_a_roi_subset_verse_or_totalsegmentator():
    """`--roi-subset`: VerSe and TotalSegmentator names, commas or blanks, in anatomical order (T13 between T12 and
    L1); a name of no vertebra (sacrum included: no model labels it) is refused by name."""
    assert labels.vertebra_labels(["L1,vertebrae_T12", "l2 T13", "L1"]) == (19, labels.T13, 20, 21)
    assert labels.vertebra_labels(["C1", "vertebrae_L6"]) == (1, labels.L6)
    for bad, named in ((["L1,X9"], "'X9'"), (["sacrum"], "'sacrum'"), (["vertebrae_S1"], "'vertebrae_S1'"),
                       ([" , "], "no vertebra named")):
        with pytest.raises(ValueError, match=named):
            labels.vertebra_labels(bad)


def test_unknown_label_format_is_refused_before_any_work(tmp_path):
    _nifti(tmp_path / "x.nii.gz", np.zeros(SHAPE))
    with pytest.raises(ValueError, match="unknown label format"):
        discover_cases([tmp_path / "x.nii.gz"], label_format="totalseg_v3")
    result = CliRunner().invoke(app, ["preprocess", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path / "s.zarr"),
                                      "--label-format", "totalseg_v3"])
    assert result.exit_code != 0 and "unknown label format" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_label_format_reaches_the_masks_of_a_generic_folder(tmp_path):
    (tmp_path / "data").mkdir()
    _nifti(tmp_path / "data" / "a.nii.gz", np.full(SHAPE, 40))
    _nifti(tmp_path / "data" / "a_seg.nii.gz", _mask_with(27))
    [source] = discover_cases([tmp_path / "data"], label_format="totalseg_v1")
    assert isinstance(source, CaseSource) and source.label_format == "totalseg_v1"
    assert _verse_values(load_case(source).mask) == [T8]


def test_evaluate_reads_ground_truth_with_the_named_format(tmp_path):
    """`vertseg evaluate --label-format totalseg_v1`: a v1 mask (27 = T8, 26 = T9) scores a VerSe T8/T9 prediction
    perfectly; read as v2 the same values are L5 and S1 and nothing matches."""
    (tmp_path / "data").mkdir()
    (tmp_path / "pred" / "a").mkdir(parents=True)
    affine = np.eye(4)
    mask = np.zeros((30, 30, 30), np.uint8)
    mask[5:25, 5:25, 3:12] = 27
    mask[5:25, 5:25, 15:25] = 26
    nib.save(nib.Nifti1Image(np.full(mask.shape, 40, np.int16), affine), str(tmp_path / "data" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "data" / "a_seg.nii.gz"))
    prediction = np.where(mask == 27, T8, np.where(mask == 26, 16, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(prediction, affine), str(tmp_path / "pred" / "a" / "a_seg.nii.gz"))
    scores = {}
    for fmt in ("totalseg_v1", "totalseg_v2"):
        out = tmp_path / f"{fmt}.json"
        result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "data"),
                                          "--label-format", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        scores[fmt] = json.loads(out.read_text())["multilabel_dice"]
    assert scores["totalseg_v1"] == pytest.approx(1.0) and scores["totalseg_v2"] < 0.5


def test_evaluate_reads_the_totalsegmentator_release_layout_as_ground_truth(tmp_path):
    """`vertseg evaluate --gt <release>` used to fail every case with "segmentations: file does not exist"."""
    from typer.testing import CliRunner

    from vertseg.cli.main import app

    _totalseg_case(tmp_path / "release")
    [source] = discover_cases([tmp_path / "release"])
    truth = load_case(source).mask
    pred = tmp_path / "pred" / "s0001"
    pred.mkdir(parents=True)
    sitk.WriteImage(truth, str(pred / "s0001_seg.nii.gz"))  # the ground truth itself as the prediction
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "release"),
                                      "--no-surface", "--spacing", "0", "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["cases"] == 1 and summary["binary_dice"] == 1.0 and not summary["failed"]


@pytest.mark.parametrize("given", ["structure folder", "multilabel file"])
def test_evaluate_takes_a_bare_mask_as_ground_truth(tmp_path, given):
    """`--gt segmentations/` (per-structure files) or `--gt mask.nii.gz` (one multilabel file, here with
    TotalSegmentator v2 ids and their header table) used to find "no labelled ground-truth cases"."""
    from typer.testing import CliRunner

    from vertseg.cli.main import app
    from vertseg.data.readers.label_formats import label_table_extension

    case = _totalseg_case(tmp_path / "release")
    [source] = discover_cases([tmp_path / "release"])
    truth = load_case(source).mask
    pred = tmp_path / "pred" / "scan"
    pred.mkdir(parents=True)
    sitk.WriteImage(truth, str(pred / "scan_seg.nii.gz"))  # another name than the mask: one mask, one prediction
    if given == "structure folder":
        gt = case / "segmentations"
    else:
        values = sitk.GetArrayFromImage(truth).transpose(2, 1, 0)
        v2 = labels.LABEL_FORMATS["totalseg_v2"].from_verse(values)[0]
        image = nib.Nifti1Image(v2, nib.load(str(case / "ct.nii.gz")).affine)
        image.header.extensions.append(nib.nifti1.Nifti1Extension(0, label_table_extension(
            {int(v): labels.LABEL_FORMATS["totalseg_v2"].structures[int(v)] for v in np.unique(v2) if v})))
        gt = tmp_path / "mask.nii.gz"
        nib.save(image, str(gt))
        assert set(np.unique(v2)) - {0} and not set(np.unique(v2)) & {19, 20}  # really v2 ids, not VerSe
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(gt),
                                      "--no-surface", "--spacing", "0", "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["cases"] == 1 and summary["binary_dice"] == 1.0 and summary["multilabel_dice"] == 1.0
