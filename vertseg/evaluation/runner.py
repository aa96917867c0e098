"""`vertseg evaluate`: pair predictions with ground truth, evaluate every case, write the per-case CSV and summary.

Predictions: `<pred>/<case>/<case>_seg.nii.gz` (VerSe labelmap on the input grid) and optionally
`<pred>/<case>/<case>_ctd.json` (VerSe centroids), as `vertseg predict` writes them; flat `<pred>/<case>_seg.nii.gz`
works too. Ground truth: any dataset the readers understand (`vertseg.data.readers.discover_cases`).

Like the official VerSe evaluation, masks are compared at 1 mm isotropic by default (nearest neighbour, outside
filled with 0: the official notebook pads masks with -1024, which turns the padding into foreground). Centroids are
compared in physical millimetres, so no voxel reorientation (and no off-by-one) is involved.
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
from vertseg.data.readers import discover_cases, load_case
from vertseg.data.readers.files import nifti_stem
from vertseg.data.readers.geometry import affine_lps, same_grid
from vertseg.data.readers.load import read_centroids_lps
from vertseg.data.types import CaseSource
from vertseg.evaluation.case import CaseMetrics, EvalSettings, evaluate_arrays, summarise
from vertseg.io import atomic_write_json, atomic_write_text
from vertseg.labels import MAX_VERSE_LABEL, VERSE_NAMES

SEG_SUFFIX = "_seg.nii.gz"
CTD_SUFFIX = "_ctd.json"


@dataclass(frozen=True)
class Prediction:
    case_id: str
    seg: Path
    ctd: Path | None


def find_predictions(pred_dir: Path) -> dict[str, Prediction]:
    """Case id -> prediction files under `pred_dir` (`<case>/<case>_seg.nii.gz` or flat `<case>_seg.nii.gz`)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction folder does not exist")
    found: dict[str, Prediction] = {}
    for seg in sorted(pred_dir.glob(f"*{SEG_SUFFIX}")) + sorted(pred_dir.glob(f"*/*{SEG_SUFFIX}")):
        case_id = seg.name[: -len(SEG_SUFFIX)]
        ctd = seg.with_name(case_id + CTD_SUFFIX)
        found.setdefault(case_id, Prediction(case_id, seg, ctd if ctd.is_file() else None))
    if not found:
        raise ValueError(f"{pred_dir}: no `<case>{SEG_SUFFIX}` files found")
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
    pairs: list[tuple[CaseSource, Prediction]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # labelled ground-truth cases without a prediction
    unmatched: list[str] = field(default_factory=list)  # predictions without ground truth


def pair_cases(pred_dir: Path, gt: list[Path], dataset: str | None = None) -> Pairing:
    predictions = find_predictions(pred_dir)
    sources = [s for s in discover_cases(gt, dataset) if s.mask is not None]
    if not sources:
        raise ValueError(f"{', '.join(map(str, gt))}: no labelled ground-truth cases found")
    pairing, used = Pairing(), set()
    for source in sources:
        match = next((predictions[k] for k in _keys(source) if k in predictions), None)
        if match is None:
            pairing.missing.append(source.case_id)
        else:
            pairing.pairs.append((source, match))
            used.add(match.case_id)
    pairing.unmatched = sorted(set(predictions) - used)
    return pairing


def _read_prediction(path: Path):
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(path, f"cannot read prediction ({str(error).strip().splitlines()[-1][:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(path, f"prediction must be a 3D scalar labelmap, got {image.GetDimension()}D")
    values = sitk.GetArrayViewFromImage(image)
    if values.size and (values.min() < 0 or values.max() > MAX_VERSE_LABEL or not np.array_equal(values, np.round(values))):
        raise CaseError(path, f"prediction values must be VerSe labels 0..{MAX_VERSE_LABEL}")
    return sitk.Cast(image, sitk.sitkUInt8)


def resample_nearest(image, reference=None, spacing_mm: float | None = None):
    """Nearest-neighbour resampling onto `reference`'s grid, or onto an isotropic grid of the same box; outside = 0."""
    import SimpleITK as sitk

    if reference is not None:
        return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    old_spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = [max(1, int(round(n * s / spacing_mm))) for n, s in zip(image.GetSize(), old_spacing)]
    # Same box: the new first voxel centre sits half a new voxel inside the old image border.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (old_spacing / 2)
    origin = corner + direction @ np.full(3, spacing_mm / 2)
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin.tolist(),
                         [spacing_mm] * 3, image.GetDirection(), 0, sitk.sitkUInt8)


def _array_affine(image) -> np.ndarray:
    """Affine from numpy (k, j, i) indices of GetArrayFromImage to LPS mm."""
    affine = affine_lps(image)
    affine[:3, :3] = affine[:3, :3][:, ::-1]
    return affine


def evaluate_pair(source: CaseSource, prediction: Prediction, settings: EvalSettings, spacing_mm: float | None = 1.0
                  ) -> tuple[CaseMetrics, list[str]]:
    """Metrics of one case and notes (e.g. a prediction resampled onto the ground-truth grid)."""
    import SimpleITK as sitk

    notes: list[str] = []
    case = load_case(replace(source, image=None))
    gt = case.mask
    pred = _read_prediction(prediction.seg)
    pred_centroids = read_centroids_lps(prediction.ctd, pred) if prediction.ctd is not None else None
    difference = same_grid(gt, pred)
    if difference is not None:
        notes.append(f"prediction grid differs from ground truth ({difference}); resampled nearest-neighbour")
        pred = resample_nearest(pred, reference=gt)
    if spacing_mm:
        gt = resample_nearest(gt, spacing_mm=spacing_mm)
        pred = resample_nearest(pred, reference=gt)
    gt_array = sitk.GetArrayFromImage(gt)
    pred_array = sitk.GetArrayFromImage(pred)
    metrics = evaluate_arrays(source.case_id, gt_array, pred_array, _array_affine(gt), case.centroids_lps or None,
                              pred_centroids or None, settings)
    return metrics, notes


@dataclass
class EvaluationReport:
    summary: dict[str, Any]
    cases: list[CaseMetrics]
    failed: dict[str, str]


def evaluate_folder(pred_dir: Path, gt: list[Path], settings: EvalSettings = EvalSettings(), by_region: bool = False,
                    spacing_mm: float | None = 1.0, dataset: str | None = None,
                    progress: Callable[[str], None] | None = None) -> EvaluationReport:
    """Evaluate every paired case; a failing case is recorded and the others go on."""
    pairing = pair_cases(pred_dir, gt, dataset)
    cases: list[CaseMetrics] = []
    failed: dict[str, str] = {case_id: "no prediction found" for case_id in pairing.missing}
    notes: dict[str, list[str]] = {}
    for source, prediction in pairing.pairs:
        try:
            metrics, case_notes = evaluate_pair(source, prediction, settings, spacing_mm)
        except (CaseError, ValueError, RuntimeError, OSError) as error:
            failed[source.case_id] = str(error)
        else:
            cases.append(metrics)
            if case_notes:
                notes[source.case_id] = case_notes
        if progress is not None:
            progress(source.case_id)
    summary = summarise(cases, by_region)
    summary.update({
        "failed": failed,
        "unmatched_predictions": pairing.unmatched,
        "notes": notes,
        "settings": {**settings.__dict__, "spacing_mm": spacing_mm or "native"},
        "per_case": {c.case_id: _case_detail(c) for c in cases},
    })
    return EvaluationReport(summary, cases, failed)


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
