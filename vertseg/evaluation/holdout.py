"""Full-volume held-out evaluation of a trained checkpoint on a store split, as flat metrics for MLflow reports.

Every case of the split is predicted with one loaded network through the inference code (localisation, sliding
window, section 2.6 decoder) from its image alone, then compared with the store's labels on the store frame
(isotropic `data.spacing_mm`; 1 mm by default, the VerSe protocol) with the evaluation code.

Flat metric names, `<prefix>` = the split name (`test`, `validation`; deliberately not `val`, the training loop's
patch-level monitor, so the two never mix in one MLflow metric):
`<prefix>_dice` binary Dice (Eq. 14, case mean), `<prefix>_vertebra_dice` mean per-vertebra Dice,
`<prefix>_multilabel_dice`, `<prefix>_id_acc` (Eq. 15-17), `<prefix>_id_rate` (VerSe), `<prefix>_distance_mm`,
`<prefix>_cases`, `<prefix>_vertebrae`; per region (cervical/thoracic/lumbar, vertebra-instance level as in
Table 5): `<prefix>_dice_<region>`, `_id_acc_<region>`, `_id_rate_<region>`, `_distance_mm_<region>`,
`_vertebrae_<region>`; per level (C1..L5): `<prefix>_dice_<level>`, `<prefix>_id_acc_<level>` (means over cases).
Torch and the inference code are imported lazily so `vertseg.evaluation` stays importable without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vertseg.evaluation.case import CaseMetrics, EvalSettings, evaluate_arrays, summarise
from vertseg.evaluation.overlap import mean_or_nan
from vertseg.labels import VERSE_NAMES

if TYPE_CHECKING:
    from vertseg.config import VertsegConfig
    from vertseg.inference.predictor import Predictor
    from vertseg.data.store import VertStore
    from vertseg.inference.cases import LoadedScan
    from vertseg.inference.runner import StorePrediction

REPORT_LEVELS = range(1, 25)  # C1..L5: the VerSe reporting protocol


class HoldoutError(ValueError):
    """The split cannot be evaluated (no labelled cases, spacing mismatch); the message names the store."""


@dataclass
class HoldoutResult:
    """Flat metrics (MLflow names), per-case rows, the nested summary and cases that failed to predict."""

    split: str  # also the prefix of every metric name
    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    cases: list[CaseMetrics] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def finite_metrics(self) -> dict[str, float]:
        """What MLflow and Tune can take: metrics measured on at least one vertebra."""
        return {k: v for k, v in self.metrics.items() if np.isfinite(v)}


def default_split(store: Path) -> str:
    """`test` when the store has labelled test cases, else `validation`."""
    from vertseg.data.store import VertStore

    vert = VertStore(store)
    return "test" if any(vert.is_labeled(c) for c in vert.cases("test")) else "validation"


def flat_metrics(cases: list[CaseMetrics], prefix: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The summary of `cases` as flat `<prefix>_...` metrics (NaN where nothing was measured) and nested."""
    summary = summarise(cases, by_region=True)
    p = prefix
    flat = {
        f"{p}_dice": summary["binary_dice"],
        f"{p}_vertebra_dice": summary["mean_vertebra_dice"],
        f"{p}_multilabel_dice": summary["multilabel_dice"],
        f"{p}_id_acc": summary["acc_id"],
        f"{p}_id_rate": summary["id_rate"],
        f"{p}_distance_mm": summary["mean_distance_mm"],
        f"{p}_cases": float(summary["cases"]),
        f"{p}_vertebrae": float(summary["vertebrae"]),
    }
    for region, values in summary["regions"].items():
        flat.update({
            f"{p}_dice_{region}": values["mean_vertebra_dice"],
            f"{p}_id_acc_{region}": values["acc_id"],
            f"{p}_id_rate_{region}": values["id_rate"],
            f"{p}_distance_mm_{region}": values["mean_distance_mm"],
            f"{p}_vertebrae_{region}": float(values["vertebrae"]),
        })
    for label in REPORT_LEVELS:
        dice = [c.vertebra_dice[label] for c in cases if label in c.vertebra_dice]
        if dice:
            name = VERSE_NAMES[label]
            flat[f"{p}_dice_{name}"] = mean_or_nan(dice)
            flat[f"{p}_id_acc_{name}"] = float(np.mean([c.id_correct.get(label, False) for c in cases
                                                       if label in c.vertebra_dice]))
    return {k: float(v) for k, v in flat.items()}, summary


def predict_case(predictor: "Predictor", store: Path, case_id: str) -> tuple["StorePrediction", "LoadedScan"]:
    """One store case predicted from its image only (the labels are never read here)."""
    from vertseg.inference.cases import PredictJob, load_job
    from vertseg.inference.runner import Timer, predict_store_frame

    timer = Timer()
    scan = load_job(PredictJob(case_id, store=Path(store)), predictor.spacing, tuple(predictor.config.data.hu_window))
    return predict_store_frame(predictor, scan, timer), scan


def evaluate_case(vert: "VertStore", case_id: str, prediction: "StorePrediction | None", settings: EvalSettings,
                  failure: str = "") -> CaseMetrics:
    """Compare a store-frame prediction with the store's labels; centroids in LPS mm. No prediction (it failed,
    `failure` says why) is scored as an empty one, as `vertseg evaluate` scores a missing file."""
    from vertseg.data.geometry import apply_affine

    affine = vert.geometry(case_id).canonical.affine_lps()

    def to_mm(points: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {k: apply_affine(affine, np.asarray(v, float)[None])[0] for k, v in points.items()}

    truth = vert.read_labels(case_id)
    predicted = np.zeros_like(truth) if prediction is None else prediction.labels
    predicted_centroids = None if prediction is None else to_mm(prediction.centroids_zyx) or None
    metrics = evaluate_arrays(case_id, truth, predicted, affine, to_mm(vert.centroids(case_id).best()) or None,
                              predicted_centroids, settings)
    metrics.failure = failure
    return metrics


def evaluate_predictor(predictor: "Predictor", store: Path, split: str = "test", out_dir: Path | None = None,
                       settings: EvalSettings | None = None,
                       progress: Callable[[str], None] | None = None) -> HoldoutResult:
    """Predict and evaluate every labelled case of `split`; a case that fails is recorded, the others go on."""
    from vertseg.data.store import VertStore
    from vertseg.inference.runner import Timer, write_prediction

    store = Path(store)
    vert = VertStore(store)
    case_ids = [c for c in vert.cases(split) if vert.is_labeled(c)]
    if not case_ids:
        splits = sorted({str(v["split"]) for v in vert.manifest["cases"].values()})
        raise HoldoutError(f"store {store} has no labelled cases in split {split!r} "
                           f"(splits present: {', '.join(splits)})")
    if abs(float(vert.settings["spacing_mm"]) - predictor.spacing) > 1e-6:
        raise HoldoutError(f"store {store} is at {vert.settings['spacing_mm']} mm but the model expects "
                           f"{predictor.spacing} mm")
    settings = settings or EvalSettings(min_fragment_ml=predictor.config.inference.min_fragment_ml)
    cases: list[CaseMetrics] = []
    failed: dict[str, str] = {}
    not_scored: list[str] = []
    for case_id in case_ids:
        prediction, failure = None, ""
        try:
            prediction, scan = predict_case(predictor, store, case_id)
            if out_dir is not None:
                write_prediction(predictor, scan, prediction, Path(out_dir), Timer())
        except (ValueError, RuntimeError, OSError, KeyError) as error:
            failure = f"{type(error).__name__}: {error}"
            failed[case_id] = f"scored as empty prediction: {failure}"
        try:
            cases.append(evaluate_case(vert, case_id, prediction, settings, failure))
        except (ValueError, RuntimeError, OSError, KeyError) as error:
            failed[case_id] = f"ground truth not scored: {type(error).__name__}: {error}"
            not_scored.append(case_id)
        if progress is not None:
            progress(case_id)
    scored_as_empty = [c.case_id for c in cases if c.failure]
    if len(scored_as_empty) == len(cases):
        raise HoldoutError(f"store {store}: no case of split {split!r} was predicted and scored: {failed}")
    metrics, summary = flat_metrics(cases, split)
    from vertseg.evaluation.runner import headline

    summary.update(split=split, store=str(store), failed=failed, settings=dict(settings.__dict__),
                   scored_as_empty=scored_as_empty, not_scored=not_scored,
                   headline=headline(len(cases), len(scored_as_empty), len(not_scored)))
    rows = [{"split": split, **c.row()} for c in cases]
    result = HoldoutResult(split, metrics, rows, summary, cases, failed)
    if out_dir is not None:
        write_holdout(result, Path(out_dir))
    return result


def write_holdout(result: HoldoutResult, out_dir: Path) -> tuple[Path, Path]:
    """`evaluation.json` (summary, flat metrics, per-case detail) and `evaluation.csv` (one row per case)."""
    from vertseg.evaluation.runner import EvaluationReport, _case_detail, write_report

    summary = {**result.summary, "metrics": result.metrics,
               "per_case": {c.case_id: _case_detail(c) for c in result.cases}}
    return write_report(EvaluationReport(summary, result.cases, result.failed), Path(out_dir) / "evaluation.json")


def evaluate_checkpoint(checkpoint: Path, store: Path, split: str = "test", config: "VertsegConfig | None" = None,
                        device: str | None = None, out_dir: Path | None = None,
                        progress: Callable[[str], None] | None = None) -> HoldoutResult:
    """Load `checkpoint` once (EMA teacher weights first) and evaluate it on every labelled case of `split`.

    `config` replaces the checkpoint's inference/post-processing settings (its `model` section must match);
    `device` None picks CUDA when present.
    """
    from vertseg.inference.model_loading import CheckpointError, load_model, resolve_device
    from vertseg.inference.predictor import Predictor

    model, trained, _ = load_model(checkpoint)
    if config is not None and config.model != trained.model:
        raise CheckpointError(f"checkpoint {checkpoint}: the given config's model section differs from the trained one")
    predictor = Predictor(model, config or trained, resolve_device(device or "auto"))
    return evaluate_predictor(predictor, store, split, out_dir, progress=progress)


VOLUME_PREFIX = "val_volume"  # full-volume validation during training (checkpoint selection)


def volume_validator(store: Path, config: "VertsegConfig", device: Any = "cpu", rank: int = 0, world_size: int = 1,
                     split: str = "validation") -> "Callable[[Any], dict[str, float]] | None":
    """What training calls every `train.validate_every` epochs to pick its best checkpoint by what users get:
    `model` -> `val_volume_*` metrics (Dice, Acc_ID, id-rate) of whole validation scans predicted from their image
    through the production inference path. Each rank predicts its share of the cases; under DDP the per-case
    results are gathered so every rank returns the same numbers. None when the store has no labelled `split`."""
    from vertseg.data.store import VertStore

    vert = VertStore(Path(store))
    case_ids = [c for c in vert.cases(split) if vert.is_labeled(c)]
    if not case_ids:
        return None
    shard = case_ids[rank::world_size]
    settings = EvalSettings(min_fragment_ml=config.inference.min_fragment_ml)

    def validate(model: Any) -> dict[str, float]:
        import torch.distributed as dist

        from vertseg.inference.predictor import Predictor

        predictor = Predictor(model, config, device)
        cases = [evaluate_case(vert, case_id, predict_case(predictor, Path(store), case_id)[0], settings)
                 for case_id in shard]
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[CaseMetrics]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, cases)
            cases = [case for part in gathered for case in part]
        metrics, _ = flat_metrics(cases, VOLUME_PREFIX)
        keys = ("dice", "vertebra_dice", "id_acc", "id_rate", "distance_mm")
        return {f"{VOLUME_PREFIX}_{k}": metrics[f"{VOLUME_PREFIX}_{k}"] for k in keys}

    return validate
