"""Predict cases end to end and write their files; one failing case is recorded and the others go on.

Per case: load -> localisation -> sliding window -> post-processing (section 2.6 decoder, back to the original
grid) -> writing. The time of each step is recorded in the case record (and `summary.json`).
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vertseg.data.case_ids import check_case_id
from vertseg.data.geometry import apply_affine, to_original_grid
from vertseg.inference.cases import LoadedScan, PredictJob, load_job
from vertseg.inference.centroids import body_centroids
from vertseg.inference.config import LabelResampling
from vertseg.inference.localisation import SpineBox
from vertseg.inference.predictor import Predictor
from vertseg.inference.qc import write_qc
from vertseg.inference.vertebrae import Vertebra, vertebrae_on_grid
from vertseg.inference.writers import OutputOptions, write_case_outputs
from vertseg.io import atomic_write_json, locked, path_under
from vertseg.labels import PROTOCOLS, VERSE_NAMES
from vertseg.postprocess.assign import labelmap_from_predictions

STEPS = ("load", "localisation", "sliding_window", "postprocess", "write")


class Timer:
    """Wall seconds per named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def case_outputs(out_dir: Path, case_id: str, options: OutputOptions = OutputOptions()) -> dict[str, Path]:
    """The files of one case under `out_dir/<case_id>/`; an id that would lead out of `out_dir` is refused."""
    check_case_id(case_id, out_dir)
    names = {"seg": "seg.nii.gz", "ctd": "ctd.json", "vertebrae_json": "vertebrae.json", "vertebrae_csv": "vertebrae.csv",
             "qc": "qc.png", **options.extra_outputs()}
    paths = {key: path_under(out_dir, case_id, f"{case_id}_{name}") for key, name in names.items()}
    return paths | ({"per_vertebra": path_under(out_dir, case_id, "vertebrae")} if options.per_vertebra else {})


@dataclass
class StorePrediction:
    """A scan's prediction on the store frame, before it is mapped back to the original grid."""

    box: SpineBox
    labels: np.ndarray  # (z, y, x) uint8 VerSe labelmap of the whole store-frame volume
    records: list  # decoder instances (postprocess.assign)
    centroids_zyx: dict[int, np.ndarray]  # VerSe label -> body centroid in store voxels
    windows: int


def predict_store_frame(predictor: Predictor, scan: LoadedScan, timer: Timer) -> StorePrediction:
    """Localisation, sliding window and post-processing of one scan; reads the image only, never labels."""
    config = predictor.config
    with timer.step("localisation"):
        box = predictor.localise(scan.image, scan.hu)
    with timer.step("sliding_window"):
        box, window = predictor.predict_spine(scan.image, box)
    with timer.step("postprocess"):
        spacing = (predictor.spacing,) * 3
        roi_labels, records = labelmap_from_predictions(window.fg_prob, window.id_prob, spacing, config)
        canonical = np.zeros(scan.image.shape, dtype=np.uint8)
        canonical[box.slices] = roi_labels
        body = body_centroids(roi_labels, window.id_prob, PROTOCOLS[config.data.protocol])
        centroids = {label: np.asarray(zyx, dtype=np.float64) + np.asarray(box.start) for label, zyx in body.items()}
    return StorePrediction(box, canonical, records, centroids, window.windows)


@dataclass
class OriginalPrediction:
    """A prediction on the ORIGINAL image grid: (k, j, i) uint8 VerSe labelmap and its vertebrae."""

    labels: np.ndarray
    vertebrae: list[Vertebra]

    def subset(self, labels: tuple[int, ...] | None) -> "OriginalPrediction":
        """Only the vertebrae `labels` (`--roi-subset`), the others made background; all of them for None."""
        if labels is None:
            return self
        keep = np.zeros(256, dtype=np.uint8)
        keep[list(labels)] = labels
        return OriginalPrediction(keep[self.labels], [v for v in self.vertebrae if v.label in labels])


def to_original(scan: LoadedScan, prediction: StorePrediction, resampling: LabelResampling) -> OriginalPrediction:
    """Map a store-frame prediction back onto the input's own grid (labels by `resampling`, centroids through LPS mm)."""
    original = to_original_grid(prediction.labels, scan.geometry, resampling, 0.0).astype(np.uint8)
    confidence = {r.label: r.confidence for r in prediction.records if r.label}
    to_lps = scan.geometry.canonical.affine_lps()
    centroids_lps = {label: apply_affine(to_lps, zyx[None])[0] for label, zyx in prediction.centroids_zyx.items()}
    return OriginalPrediction(original, vertebrae_on_grid(original, scan.reference, confidence, centroids_lps))


def unfound_notes(roi_subset: tuple[int, ...] | None, vertebrae: list[Vertebra]) -> list[str]:
    """A note naming the `--roi-subset` vertebrae the scan does not show: they have no row, mask or segment."""
    found = {v.label for v in vertebrae}
    unfound = [VERSE_NAMES[label] for label in roi_subset or () if label not in found]
    return [f"roi subset: {', '.join(unfound)} not found in this scan"] if unfound else []


def write_prediction(predictor: Predictor, scan: LoadedScan, prediction: StorePrediction, out_dir: Path,
                     timer: Timer, options: OutputOptions = OutputOptions()) -> dict[str, Any]:
    """Map a store-frame prediction back to the original grid, write its files; returns the case record."""
    from vertseg.inference.statistics import vertebra_statistics

    config = predictor.config
    case_id, box = scan.job.case_id, prediction.box
    with timer.step("postprocess"):
        whole = to_original(scan, prediction, config.inference.label_resampling)
        original = whole.subset(options.roi_subset)
        vertebrae = original.vertebrae
        statistics = None
        if options.statistics:
            statistics = vertebra_statistics(vertebrae, original.labels, prediction.labels, scan.hu,
                                             prediction.centroids_zyx, predictor.spacing, scan.original_hu)
    with timer.step("write"):
        paths = case_outputs(out_dir, case_id, options)
        extra = {
            "case_id": case_id,
            "input": scan.job.origin,
            "decoder": config.inference.decoder,
            "model": predictor.weights,  # which weights made it (file, sha256 prefix); the DICOM-SEG records it too
            "spine_box": box.to_dict(),
            "instances": [r.as_dict() for r in prediction.records if options.writes(r.label)],
        }
        notes = unfound_notes(options.roi_subset, whole.vertebrae)
        notes += write_case_outputs(paths, scan, original.labels, vertebrae, extra, options, statistics)
        # the QC image shows the whole spine, --roi-subset or not: the naming of a subset rests on all of it
        write_qc(paths["qc"], scan.image, prediction.labels, predictor.spacing,
                 f"{case_id}: {len(whole.vertebrae)} vertebrae ({box.method} localisation)")
    return {
        "case_id": case_id,
        "input": scan.job.origin,
        "status": "ok",
        "vertebrae": [v.row()["name"] for v in vertebrae],
        "spine_box": box.to_dict(),
        "windows": prediction.windows,
        "outputs": {name: str(path) for name, path in paths.items()},
        **({"notes": notes} if notes else {}),
    }


def predict_loaded(predictor: Predictor, scan: LoadedScan, out_dir: Path, timer: Timer,
                   options: OutputOptions = OutputOptions()) -> dict[str, Any]:
    """Everything after loading for one scan; returns the case record."""
    return write_prediction(predictor, scan, predict_store_frame(predictor, scan, timer), out_dir, timer, options)


def predict_job(predictor: Predictor, job: PredictJob, out_dir: Path,
                options: OutputOptions = OutputOptions()) -> dict[str, Any]:
    """Predict one job; an exception becomes a `failed` record naming the input and the error."""
    timer = Timer()
    try:
        with timer.step("load"):
            scan = load_job(job, predictor.spacing, tuple(predictor.config.data.hu_window))
        record = predict_loaded(predictor, scan, Path(out_dir), timer, options)
    except Exception as error:  # a bad case must not stop the batch
        record = {
            "case_id": job.case_id,
            "input": job.origin,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=6),
        }
    record["seconds"] = {step: round(timer.seconds.get(step, 0.0), 4) for step in STEPS}
    record["seconds"]["total"] = round(sum(timer.seconds.values()), 4)
    return record


def stage_line(record: dict[str, Any]) -> str:
    """The one line `vertseg predict` prints per case: seconds per step, so the slow stage shows at a glance."""
    seconds = record["seconds"]
    steps = ", ".join(f"{step} {seconds[step]:.1f}" for step in STEPS)
    windows = f" ({record['windows']} windows)" if "windows" in record else ""
    return f"{record['case_id']}: {steps}, total {seconds['total']:.1f} s{windows}"


def write_summary(out_dir: Path, records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """This run's summary; `summary.json` holds it merged with the cases earlier or concurrent runs wrote into the
    same folder (a case predicted again takes its newest record), so a second run never hides the first one's."""
    out_dir = Path(out_dir)
    with locked(out_dir / ".summary.lock"):
        merged = {r["case_id"]: r for r in _earlier_records(out_dir / "summary.json")}
        merged.update({r["case_id"]: r for r in records})
        atomic_write_json(out_dir / "summary.json", _summary(list(merged.values()), extra))
    return _summary(records, extra)


def _summary(records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    failed = [r for r in records if r["status"] != "ok"]
    return {
        **extra,
        "cases": len(records),
        "succeeded": len(records) - len(failed),
        "failed": [{"case_id": r["case_id"], "input": r["input"], "error": r["error"]} for r in failed],
        "records": records,
    }


def _earlier_records(path: Path) -> list[dict[str, Any]]:
    """Records of an existing summary.json; an unreadable one is kept aside rather than overwritten blindly."""
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["records"])
    except (ValueError, KeyError, TypeError):
        path.replace(path.with_name("summary.unreadable.json"))
        return []


def predict_all(
    predictor: Predictor,
    jobs: Iterable[PredictJob],
    out_dir: Path,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    options: OutputOptions = OutputOptions(),
) -> list[dict[str, Any]]:
    """Run every job with one loaded network, in order."""
    records = []
    for job in jobs:
        record = predict_job(predictor, job, out_dir, options)
        records.append(record)
        if on_done is not None:
            on_done(record)
    return records
