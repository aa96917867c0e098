"""The Ray Tune function trainable: one trial = one full multi-worker Ray Train run (Train V2 builds its
TorchTrainer inside the trial; `Tuner(trainer)` is not supported there)."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from vertseg.tuning import tracking
from vertseg.tuning.sweep import SSL_METHODS, TrialSpec, trial_config


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its own spec; pickled once per sweep by `tune.with_parameters`."""

    sweep_name: str
    source: str  # sweep file, for error messages
    base: dict[str, Any]
    store: Path
    unlabeled: Path | None
    storage: Path  # <sweep root>/train: one Ray Train run folder per trial
    mlflow_uri: str
    parent_run_id: str
    workers: int
    use_gpu: bool
    entrypoint: str
    trials: dict[str, TrialSpec]  # by key: Tune's param space holds only the keys, so its table stays readable
    eval_split: str | None = None  # full-volume evaluation of each trial's best checkpoint; None = none


def resolve_entrypoint(entrypoint: str) -> Callable[..., Any]:
    module_name, _, function = entrypoint.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"sweep entrypoint {entrypoint!r} cannot be imported: {error}") from error


def run_name(sweep_name: str, parent_run_id: str, trial: TrialSpec) -> str:
    """Deterministic within one sweep (a retried or restored trial resumes the same Ray Train and MLflow run) and
    distinct across sweeps of the same name (training re-attaches MLflow runs by name)."""
    return f"{sweep_name}-{parent_run_id[:8]}-{trial.key}"


def has_checkpoint(run_dir: Path) -> bool:
    """A Ray Train run folder with at least one reported checkpoint: the trial resumes instead of restarting."""
    return any(run_dir.glob("checkpoint_*"))


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """Train one trial (or reuse its finished MLflow run) and report its best metrics to Tune."""
    from ray import tune

    from vertseg.evaluation.holdout import volume_validator

    trial = context.trials[params["trial"]]
    name = run_name(context.sweep_name, context.parent_run_id, trial)
    mlflow = tracking.client(context.mlflow_uri)
    done = tracking.finished_child(mlflow, context.parent_run_id, name)
    if done is not None:
        tune.report({**_numeric(done.data.metrics), "reused": 1.0})
        return
    config = trial_config(context.base, trial, context.source)
    train = resolve_entrypoint(context.entrypoint)
    result = train(
        config,
        context.store,
        context.unlabeled if config.train.method in SSL_METHODS else None,
        num_workers=context.workers,
        use_gpu=context.use_gpu,
        run_name=name,
        storage_path=context.storage,
        mlflow_uri=context.mlflow_uri,
        mlflow_parent_run_id=context.parent_run_id,
        resume=has_checkpoint(context.storage / name),
        report_to_tune=True,
        volume_validation=partial(volume_validator, Path(context.store).resolve()),
    )
    if getattr(result, "interrupted", False):
        raise RuntimeError(f"trial {trial.key}: training was stopped before its last epoch; resume the sweep")
    if result.mlflow_run_id is None:
        raise RuntimeError(f"trial {trial.key}: the training run logged no MLflow run")
    best = _numeric(dict(result.best_metrics or {}))
    held_out = _evaluate(context, result, trial)
    tracking.annotate_child(mlflow, result.mlflow_run_id, context.parent_run_id, context.sweep_name, trial,
                            config.train.method, best)
    tune.report({**best, **held_out, "reused": 0.0})


def _evaluate(context: TrialContext, result: Any, trial: TrialSpec) -> dict[str, float]:
    """Evaluate the trial's checkpoint on the held-out split and log it to the trial's MLflow run."""
    checkpoint = getattr(result, "checkpoint_path", None)
    if context.eval_split is None or checkpoint is None or not Path(checkpoint).is_file():
        return {}
    from vertseg.tuning.holdout import evaluate_on_ray, log_holdout

    try:
        held_out = evaluate_on_ray(checkpoint, context.store, context.eval_split, context.use_gpu)
    except Exception as error:
        raise RuntimeError(f"trial {trial.key}: evaluation of {checkpoint} on {context.eval_split!r} failed: "
                           f"{error}") from error
    log_holdout(context.mlflow_uri, result.mlflow_run_id, held_out, int(getattr(result, "epochs", 0) or 0))
    return held_out.finite_metrics()
