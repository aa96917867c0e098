"""Predict cases end to end and write their files; one failing case is recorded and the others go on.

Per case: load -> localisation -> sliding window -> post-processing (section 2.6 decoder, back to the original
grid) -> writing. The time of each step is recorded in the case record (and `summary.json`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vertseg.data.geometry import apply_affine, to_original_grid
from vertseg.inference.cases import LoadedScan, PredictJob, load_job
from vertseg.inference.centroids import body_centroids
from vertseg.inference.localisation import SpineBox
from vertseg.inference.predictor import Predictor
from vertseg.inference.qc import write_qc
from vertseg.inference.writers import vertebrae_on_grid, write_centroids, write_labelmap, write_vertebra_tables
from vertseg.io import atomic_write_json
from vertseg.labels import PROTOCOLS
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


def case_outputs(out_dir: Path, case_id: str) -> dict[str, Path]:
    folder = Path(out_dir) / case_id
    return {
        "seg": folder / f"{case_id}_seg.nii.gz",
        "ctd": folder / f"{case_id}_ctd.json",
        "vertebrae_json": folder / f"{case_id}_vertebrae.json",
        "vertebrae_csv": folder / f"{case_id}_vertebrae.csv",
        "qc": folder / f"{case_id}_qc.png",
    }


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
        window = predictor.predict_box(scan.image, box)
    with timer.step("postprocess"):
        spacing = (predictor.spacing,) * 3
        roi_labels, records = labelmap_from_predictions(window.fg_prob, window.id_prob, spacing, config)
        canonical = np.zeros(scan.image.shape, dtype=np.uint8)
        canonical[box.slices] = roi_labels
        body = body_centroids(roi_labels, window.id_prob, PROTOCOLS[config.data.protocol])
        centroids = {label: np.asarray(zyx, dtype=np.float64) + np.asarray(box.start) for label, zyx in body.items()}
    return StorePrediction(box, canonical, records, centroids, window.windows)


def write_prediction(predictor: Predictor, scan: LoadedScan, prediction: StorePrediction, out_dir: Path,
                     timer: Timer) -> dict[str, Any]:
    """Map a store-frame prediction back to the original grid, write its files; returns the case record."""
    config = predictor.config
    case_id, box = scan.job.case_id, prediction.box
    with timer.step("postprocess"):
        original = to_original_grid(prediction.labels, scan.geometry, "nearest", 0.0).astype(np.uint8)
        confidence = {r.label: r.confidence for r in prediction.records if r.label}
        to_lps = scan.geometry.canonical.affine_lps()
        centroids_lps = {label: apply_affine(to_lps, zyx[None])[0] for label, zyx in prediction.centroids_zyx.items()}
        vertebrae = vertebrae_on_grid(original, scan.reference, confidence, centroids_lps)
    with timer.step("write"):
        paths = case_outputs(out_dir, case_id)
        write_labelmap(paths["seg"], original, scan.reference, scan.nifti_source)
        write_centroids(paths["ctd"], vertebrae, scan.reference)
        extra = {
            "case_id": case_id,
            "input": scan.job.origin,
            "decoder": config.inference.decoder,
            "spine_box": box.to_dict(),
            "instances": [r.as_dict() for r in prediction.records],
        }
        write_vertebra_tables(paths["vertebrae_json"], paths["vertebrae_csv"], vertebrae, extra)
        write_qc(paths["qc"], scan.image, prediction.labels, predictor.spacing,
                 f"{case_id}: {len(vertebrae)} vertebrae ({box.method} localisation)")
    return {
        "case_id": case_id,
        "input": scan.job.origin,
        "status": "ok",
        "vertebrae": [v.row()["name"] for v in vertebrae],
        "spine_box": box.to_dict(),
        "windows": prediction.windows,
        "outputs": {name: str(path) for name, path in paths.items()},
    }


def predict_loaded(predictor: Predictor, scan: LoadedScan, out_dir: Path, timer: Timer) -> dict[str, Any]:
    """Everything after loading for one scan; returns the case record."""
    return write_prediction(predictor, scan, predict_store_frame(predictor, scan, timer), out_dir, timer)


def predict_job(predictor: Predictor, job: PredictJob, out_dir: Path) -> dict[str, Any]:
    """Predict one job; an exception becomes a `failed` record naming the input and the error."""
    timer = Timer()
    try:
        with timer.step("load"):
            scan = load_job(job, predictor.spacing, tuple(predictor.config.data.hu_window))
        record = predict_loaded(predictor, scan, Path(out_dir), timer)
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


def write_summary(out_dir: Path, records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    failed = [r for r in records if r["status"] != "ok"]
    summary = {
        **extra,
        "cases": len(records),
        "succeeded": len(records) - len(failed),
        "failed": [{"case_id": r["case_id"], "input": r["input"], "error": r["error"]} for r in failed],
        "records": records,
    }
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary


def predict_all(
    predictor: Predictor,
    jobs: Iterable[PredictJob],
    out_dir: Path,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every job with one loaded network, in order."""
    records = []
    for job in jobs:
        record = predict_job(predictor, job, out_dir)
        records.append(record)
        if on_done is not None:
            on_done(record)
    return records
