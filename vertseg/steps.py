"""The pipeline stages as plain functions, shared by `vertseg demo` and `vertseg bench quality`.

Each wraps one stage's public API (phantoms, preprocessing, prediction, evaluation) with the choices both callers
make the same way; like `cli/`, this module calls across stages and nothing below it imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vertseg.config import VertsegConfig

RESOURCES = Path(__file__).parent / "resources"


@dataclass(frozen=True)
class PhantomPools:
    """Case counts of a phantom benchmark; each pool gets its own patient ids, so no patient is in two pools."""

    training: int
    validation: int
    unlabeled: int
    test: int
    seed: int = 0
    variant_rate: float = 0.1
    size: str = "small"  # synth size preset: field of view and cranio-caudal coverage (`vertseg synth --size`)


def make_phantom_pools(root: Path, pools: PhantomPools) -> dict[str, Path]:
    """Write `labeled/` (training + validation), `unlabeled/` (no masks) and `test/` VerSe 2020-style folders."""
    from vertseg.data.synth import generate_dataset

    labeled_total = pools.training + pools.validation
    plans = {
        "labeled": (labeled_total, 1.0, {"training": pools.training, "validation": pools.validation, "test": 0}, 500),
        "unlabeled": (pools.unlabeled, 0.0, {"training": 1, "validation": 0, "test": 0}, 700),
        "test": (pools.test, 1.0, {"training": 0, "validation": 0, "test": 1}, 900),
    }
    out = {}
    for offset, (name, (count, fraction, splits, first_id)) in enumerate(plans.items()):
        if count == 0:
            continue
        folder = Path(root) / name
        generate_dataset(folder, count, "verse20", pools.seed + offset, pools.size, labeled_fraction=fraction, splits=splits,
                         variant_rate=pools.variant_rate, multi_scan_rate=0.0, first_id=first_id, overwrite=True)
        out[name] = folder
    return out


def pool_sources(folders: list[Path]):
    """Cases of the training folders, refusing any patient that appears in two pools (labeled and unlabeled)."""
    from vertseg.data.readers import check_pool_overlap, discover_cases

    return check_pool_overlap(discover_cases(folders), policy="refuse").kept


def preprocess_in_process(sources, store: Path, config: VertsegConfig) -> int:
    """Preprocess without Ray (the same per-case function Ray runs); returns the cases written or unchanged."""
    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.store import build_manifest, init_store, write_manifest

    init_store(store, config.data)
    results = [preprocess_case(source, config.data, store, "auto") for source in sources]
    failures = [r for r in results if r["status"] == "failed"]
    if failures:
        raise RuntimeError("preprocessing failed: " + "; ".join(f"{r['file']}: {r['problem']}" for r in failures))
    write_manifest(store, build_manifest(store, config.data, []))
    return len(results)


def predict_folder(
    checkpoint: Path, inputs: list[Path], out: Path, on_done: Callable[[dict[str, Any]], None] | None = None,
    student: bool = False,
) -> dict[str, Any]:
    """Predict every scan under `inputs`; raises if any case failed. Weights: what `vertseg predict` loads (the EMA
    teacher first), or with `student` the student that validation scored (single-process checkpoints)."""
    from vertseg.inference.cases import collect_jobs
    from vertseg.inference.model_loading import load_model, resolve_device
    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import predict_all, write_summary

    model, config, key = load_model(checkpoint, weights="model" if student else None)
    predictor = Predictor(model, config, resolve_device("auto"))
    jobs = collect_jobs(inputs)
    if not jobs:
        raise ValueError(f"no scans found in {', '.join(map(str, inputs))}")
    records = predict_all(predictor, jobs, out, on_done)
    summary = write_summary(out, records, {"weights": f"{checkpoint} ({key} weights)", "ray": False})
    if summary["failed"]:
        problems = "; ".join(f"{f['input']}: {f['error']}" for f in summary["failed"])
        raise RuntimeError(f"prediction failed for {len(summary['failed'])} case(s): {problems}")
    return summary


def evaluate_predictions(pred_dir: Path, gt: list[Path], out_json: Path, split: str = "test") -> dict[str, float]:
    """VerSe-comparable metrics at 1 mm with the per-region split; writes the JSON + CSV and returns the flat
    `<split>_*` metrics under the names held-out evaluation logs (`vertseg.evaluation.holdout.flat_metrics`)."""
    from vertseg.evaluation.holdout import flat_metrics
    from vertseg.evaluation.runner import evaluate_folder, write_report

    report = evaluate_folder(pred_dir, gt, by_region=True)
    if not report.cases:
        raise RuntimeError(f"no case of {pred_dir} could be evaluated: {report.failed}")
    write_report(report, out_json)
    metrics, _ = flat_metrics(report.cases, split)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}
