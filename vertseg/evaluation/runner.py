"""`vertseg evaluate`: pair predictions with ground truth, evaluate every case, write the per-case CSV and summary.

Predictions: `<case>_seg.nii.gz` (what `vertseg predict` writes, in `<pred>/<case>/` or flat in `<pred>`) or the VerSe
name `<case>_seg-vert_msk.nii.gz` (the challenge's and other tools'), with optional centroids beside them
(`<case>_ctd.json` or `<case>_seg-subreg_ctd.json`). Ground truth: any dataset the readers understand
(`vertseg.data.readers.discover_cases`).

No case drops out of the averages silently: as in the VerSe challenge, a missing, unreadable or truncated
prediction is scored as an empty prediction and listed with its reason. Every NIfTI read (prediction and ground
truth) first passes the integrity check of `preprocess` (`vertseg.data.integrity`), since SimpleITK reads a
truncated .nii.gz as zeros. A ground truth that cannot be read cannot be scored: it is listed as not scored.

Like the official VerSe evaluation (`vertseg.evaluation.verse_grid`), both masks are resliced to 1 mm isotropic by
default with nearest neighbour on the official grid, centroids are taken in voxel coordinates of that grid and
rounded as the official utilities round them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vertseg.data.errors import CaseError
from vertseg.data.integrity import nifti_problem
from vertseg.data.readers import discover_cases, load_case
from vertseg.data.readers.files import NIFTI_SUFFIXES, nifti_stem
from vertseg.data.readers.geometry import affine_ras, lps_to_voxel, same_grid
from vertseg.data.readers.label_formats import convert_mask_values, header_label_table, structure_files
from vertseg.data.readers.load import read_centroids_lps
from vertseg.data.types import CaseSource
from vertseg.evaluation.case import CaseMetrics, EvalSettings, evaluate_arrays, summarise
from vertseg.evaluation.verse_grid import centres_of_mass, rescale_points, reslice_nearest
from vertseg.io import atomic_write_json, atomic_write_text
from vertseg.labels import MAX_VERSE_LABEL, VERSE_NAMES

SEG_SUFFIXES = ("_seg.nii.gz", "_seg-vert_msk.nii.gz")  # vertseg's own name, the VerSe name
CTD_SUFFIXES = ("_ctd.json", "_seg-subreg_ctd.json")


@dataclass(frozen=True)
class Prediction:
    case_id: str
    seg: Path
    ctd: Path | None


def _case_id(seg: Path) -> str | None:
    return next((seg.name[: -len(s)] for s in SEG_SUFFIXES if seg.name.endswith(s)), None)


def find_predictions(pred_dir: Path) -> dict[str, Prediction]:
    """Case id -> prediction files under `pred_dir` (flat or one folder per case, either naming)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction folder does not exist")
    found: dict[str, Prediction] = {}
    for seg in sorted(pred_dir.glob("*.nii.gz")) + sorted(pred_dir.glob("*/*.nii.gz")):
        case_id = _case_id(seg)
        if case_id is None:
            continue
        if case_id in found:
            raise ValueError(f"{pred_dir}: two predictions for case {case_id}: {found[case_id].seg} and {seg}")
        ctd = next((c for c in (seg.with_name(case_id + s) for s in CTD_SUFFIXES) if c.is_file()), None)
        found[case_id] = Prediction(case_id, seg, ctd)
    if not found:
        names = " or ".join(f"`<case>{s}`" for s in SEG_SUFFIXES)
        raise ValueError(f"{pred_dir}: no {names} files found")
    return found


def _keys(source: CaseSource) -> list[str]:
    """Names a prediction of this case may carry: the case id, or the stem of its image/mask file."""
    keys = [source.case_id]
    for path in (source.image, source.mask):
        if path is not None and not path.is_dir():
            keys.append(nifti_stem(path))
    return keys


@dataclass
class Pairing:
    pairs: list[tuple[CaseSource, Prediction | None]] = field(default_factory=list)  # None: no prediction found
    unmatched: list[str] = field(default_factory=list)  # predictions without ground truth


def mask_only_source(path: Path, label_format: str | None) -> CaseSource | None:
    """`--gt` naming the mask itself: one labelmap file (any numbering the readers know, by its header table or
    `label_format`) or one folder of per-structure files (TotalSegmentator's `segmentations/`); None otherwise."""
    path = Path(path)
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        stem = nifti_stem(path)
        case_id = next((stem[: -len(s)] for s in ("_seg", "_seg-vert_msk", "_msk", "_mask") if stem.endswith(s)), stem)
        return CaseSource(case_id, case_id, "mask", "", None, mask=path, label_format=label_format or "verse")
    if path.is_dir() and structure_files(path) and not any(p.is_dir() for p in path.iterdir()):
        return CaseSource(path.name, path.name, "mask", "", None, mask=path, label_format="structures")
    return None


def pair_cases(pred_dir: Path, gt: list[Path], dataset: str | None = None, label_format: str | None = None) -> Pairing:
    predictions = find_predictions(pred_dir)
    masks = {Path(p): mask_only_source(p, label_format) for p in gt}
    folders = [p for p, source in masks.items() if source is None]
    sources = [s for s in masks.values() if s is not None]
    sources += [s for s in discover_cases(folders, dataset, label_format) if s.mask is not None] if folders else []
    if not sources:
        raise ValueError(f"{', '.join(map(str, gt))}: no labelled ground-truth cases found")
    pairing, used = Pairing(), set()
    lone = len(sources) == 1 and len(predictions) == 1  # one mask, one prediction: they belong together by name or not
    for source in sources:
        match = next((predictions[k] for k in _keys(source) if k in predictions), None)
        if match is None and lone:
            match = next(iter(predictions.values()))
        pairing.pairs.append((source, match))
        if match is not None:
            used.add(match.case_id)
    pairing.unmatched = sorted(set(predictions) - used)
    return pairing


def _check_file(path: Path) -> None:
    """The integrity check of the readers, for a prediction file (ground truth is checked by `load_case`)."""
    if not Path(path).is_file():
        raise CaseError(path, "file does not exist")
    if Path(path).name.lower().endswith(NIFTI_SUFFIXES):
        problem = nifti_problem(path)
        if problem is not None:
            raise CaseError(path, problem)


def _read_prediction(path: Path):
    import SimpleITK as sitk

    _check_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(path, f"cannot read prediction ({str(error).strip().splitlines()[-1][:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(path, f"prediction must be a 3D scalar labelmap, got {image.GetDimension()}D")
    values = sitk.GetArrayViewFromImage(image)
    if values.size and not np.array_equal(values, np.round(values)):
        raise CaseError(path, "prediction values must be integer labels")
    if header_label_table(path) is not None:  # `vertseg predict --labels totalseg`, TotalSegmentator --ml: by name
        verse = sitk.GetImageFromArray(convert_mask_values(path, np.asarray(values).astype(np.int64), "verse"))
        verse.CopyInformation(image)
        return verse
    if values.size and (values.min() < 0 or values.max() > MAX_VERSE_LABEL):
        raise CaseError(path, f"prediction values must be VerSe labels 0..{MAX_VERSE_LABEL} (or carry a label table "
                              "in the NIfTI header, as `vertseg predict --labels totalseg` writes)")
    return sitk.Cast(image, sitk.sitkUInt8)


def resample_nearest(image, reference):
    """Nearest-neighbour resampling onto `reference`'s grid; outside = 0."""
    import SimpleITK as sitk

    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


@dataclass(frozen=True)
class LabelGrid:
    """A labelmap in NIfTI array order with its file's geometry (the affine and zooms nibabel reads)."""

    labels: np.ndarray
    affine: np.ndarray  # RAS
    zooms: np.ndarray

    @classmethod
    def of(cls, image, path: Path | None) -> "LabelGrid":
        """Geometry from the NIfTI header when there is one (as the official code reads it), else from ITK."""
        import nibabel as nib
        import SimpleITK as sitk

        labels = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        if path is not None and path.name.lower().endswith(NIFTI_SUFFIXES):
            header = nib.load(path)
            if header.shape[:3] == labels.shape:
                return cls(labels, header.affine, np.asarray(header.header.get_zooms()[:3], np.float64))
        return cls(labels, affine_ras(image), np.asarray(image.GetSpacing(), np.float64))


@dataclass(frozen=True)
class GroundTruth:
    image: Any  # SimpleITK labelmap (VerSe labels)
    grid: LabelGrid
    voxels: dict[int, np.ndarray]  # annotated centroids as continuous voxel indices of `grid`


def load_ground_truth(source: CaseSource) -> GroundTruth:
    """Mask and centroids of a labelled case, integrity-checked by the reader (`load_case`: files and folders of
    per-structure files alike); CaseError names the file otherwise."""
    case = load_case(replace(source, image=None))
    voxels = {}
    if case.centroids_lps:
        labels = sorted(case.centroids_lps)
        points = lps_to_voxel(np.stack([case.centroids_lps[k] for k in labels]), case.mask)
        voxels = dict(zip(labels, points))
    return GroundTruth(case.mask, LabelGrid.of(case.mask, source.mask), voxels)


def load_prediction(prediction: Prediction, gt: GroundTruth) -> tuple[np.ndarray, dict[int, np.ndarray], list[str]]:
    """Predicted labels on the ground-truth grid, its JSON centroids as ground-truth voxel indices, notes."""
    image = _read_prediction(prediction.seg)
    voxels = {}
    if prediction.ctd is not None:
        lps = read_centroids_lps(prediction.ctd, image)
        voxels = {k: lps_to_voxel(np.asarray(v)[None], gt.image)[0] for k, v in lps.items()}
    notes = []
    difference = same_grid(gt.image, image)
    if difference is None:
        return LabelGrid.of(image, None).labels, voxels, notes
    notes.append(f"prediction grid differs from ground truth ({difference}); resampled nearest-neighbour")
    return LabelGrid.of(resample_nearest(image, gt.image), None).labels, voxels, notes


def evaluate_pair(source: CaseSource, prediction: Prediction | None, settings: EvalSettings,
                  spacing_mm: float | None = 1.0) -> tuple[CaseMetrics, list[str]]:
    """Metrics of one case and notes; a missing or unreadable prediction is scored as empty (`failure` says why).

    Ground-truth problems raise CaseError: such a case cannot be scored at all.
    """
    gt = load_ground_truth(source)
    failure, notes, pred_voxels = "", [], {}
    if prediction is None:
        failure = "no prediction found (" + " or ".join(f"{source.case_id}{s}" for s in SEG_SUFFIXES) + ")"
        pred = np.zeros_like(gt.grid.labels)
    else:
        try:
            pred, pred_voxels, notes = load_prediction(prediction, gt)
        except CaseError as error:
            failure = str(error)
            pred = np.zeros_like(gt.grid.labels)
    gt_labels, zooms = gt.grid.labels, gt.grid.zooms
    if spacing_mm:
        gt_labels, _ = reslice_nearest(gt_labels, gt.grid.affine, zooms, spacing_mm)
        pred, _ = reslice_nearest(pred, gt.grid.affine, zooms, spacing_mm)
        rescale, zooms = zooms, np.full(3, float(spacing_mm))
    else:
        rescale, spacing_mm = np.ones(3), 1.0

    def frame(points: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {k: v * zooms for k, v in points.items()}  # grid voxel coordinates -> mm along the grid axes

    gt_points = rescale_points(gt.voxels, rescale, spacing_mm) if gt.voxels else centres_of_mass(gt_labels)
    pred_points = rescale_points(pred_voxels, rescale, spacing_mm) if pred_voxels else centres_of_mass(pred)
    source_of = {"gt": "json" if gt.voxels else "mask", "pred": "json" if pred_voxels else "mask"}
    metrics = evaluate_arrays(source.case_id, gt_labels, pred, np.diag([*zooms, 1.0]), frame(gt_points),
                              frame(pred_points), settings, source_of)
    metrics.prediction = str(prediction.seg) if prediction is not None else ""
    metrics.failure = failure
    return metrics, notes


@dataclass
class EvaluationReport:
    summary: dict[str, Any]
    cases: list[CaseMetrics]  # every scored case, failed predictions (scored as empty) included
    failed: dict[str, str]  # case -> reason: failed predictions and ground truths that could not be read
    scored_as_empty: list[str] = field(default_factory=list)
    not_scored: list[str] = field(default_factory=list)  # ground truth unreadable: in no average


def headline(cases: int, scored_as_empty: int, not_scored: int, mask_centroids: int = 0) -> str:
    """What the averages are over, in words, and what makes the id-rate less comparable."""
    text = f"averages over {cases} cases"
    if scored_as_empty:
        text += f", {scored_as_empty} of them failed predictions scored as empty"
    if not_scored:
        text += f"; {not_scored} cases not scored (ground truth unreadable)"
    if mask_centroids:
        text += (f"; {mask_centroids} ground truths have no centroid file: their id-rate compares mask centres of "
                 "mass with predicted body centroids (about 10 mm apart on VerSe), not VerSe-comparable")
    return text


def evaluate_folder(pred_dir: Path, gt: list[Path], settings: EvalSettings = EvalSettings(), by_region: bool = False,
                    spacing_mm: float | None = 1.0, dataset: str | None = None,
                    progress: Callable[[str], None] | None = None, label_format: str | None = None) -> EvaluationReport:
    """Evaluate every labelled case; a failing case is recorded and the others go on."""
    pairing = pair_cases(pred_dir, gt, dataset, label_format)
    cases: list[CaseMetrics] = []
    failed: dict[str, str] = {}
    not_scored: list[str] = []
    notes: dict[str, list[str]] = {}
    for source, prediction in pairing.pairs:
        try:
            metrics, case_notes = evaluate_pair(source, prediction, settings, spacing_mm)
        except (CaseError, ValueError, RuntimeError, OSError) as error:
            failed[source.case_id] = f"ground truth not scored: {error}"
            not_scored.append(source.case_id)
        else:
            cases.append(metrics)
            if metrics.failure:
                failed[source.case_id] = f"scored as empty prediction: {metrics.failure}"
            if case_notes:
                notes[source.case_id] = case_notes
        if progress is not None:
            progress(source.case_id)
    scored_as_empty = [c.case_id for c in cases if c.failure]
    summary = summarise(cases, by_region)
    mask_centroids = sum(c.centroid_source.get("gt") == "mask" and not c.failure for c in cases)
    summary.update({
        "headline": headline(len(cases), len(scored_as_empty), len(not_scored), mask_centroids),
        "scored_as_empty": scored_as_empty,
        "not_scored": not_scored,
        "failed": failed,
        "predictions": {c.case_id: c.prediction for c in cases if c.prediction},
        "unmatched_predictions": pairing.unmatched,
        "notes": notes,
        "settings": {**settings.__dict__, "spacing_mm": spacing_mm or "native"},
        "per_case": {c.case_id: _case_detail(c) for c in cases},
    })
    return EvaluationReport(summary, cases, failed, scored_as_empty, not_scored)


def _case_detail(case: CaseMetrics) -> dict[str, Any]:
    return {
        **case.row(),
        "centroid_source": case.centroid_source,
        "vertebrae": {
            VERSE_NAMES[lab]: {
                "dice": round(case.vertebra_dice[lab], 6),
                "id_correct": case.id_correct.get(lab),
                "match_iou": round(case.match_iou.get(lab, 0.0), 6),
                "identified": case.identified.get(lab),
                "distance_mm": round(case.distance_mm.get(lab, float("nan")), 3),
                "hausdorff_mm": round(case.hausdorff_mm.get(lab, float("nan")), 3),
                "hd95_mm": round(case.hd95_mm.get(lab, float("nan")), 3),
            }
            for lab in sorted(case.vertebra_dice)
        },
    }


def cases_csv(cases: list[CaseMetrics]) -> str:
    """Per-case CSV: one row per case with its headline metrics."""
    buffer = io.StringIO()
    if cases:
        writer = csv.DictWriter(buffer, fieldnames=list(cases[0].row()))
        writer.writeheader()
        for case in cases:
            writer.writerow(case.row())
    return buffer.getvalue()


def _strict_json(value: Any) -> Any:
    """NaN (a metric without data, e.g. no cervical vertebrae) becomes null so the file is valid JSON."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def write_report(report: EvaluationReport, out_json: Path) -> tuple[Path, Path]:
    """Summary JSON at `out_json`, per-case CSV beside it (same stem, .csv); both written atomically."""
    out_json = Path(out_json)
    out_csv = out_json.with_suffix(".csv")
    atomic_write_json(out_json, _strict_json(report.summary))
    atomic_write_text(out_csv, cases_csv(report.cases))
    return out_json, out_csv
