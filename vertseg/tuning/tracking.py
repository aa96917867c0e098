"""MLflow bookkeeping of a sweep: one parent run per sweep, one nested child run per trial.

Parent and children live in the training runs' experiment (`vertseg.distributed.tracking.EXPERIMENT`), so the
MLflow UI nests them. The child run itself is created by `run_training` (given the parent id); this module creates
the parent, finds a
trial's finished child (so a resumed sweep never trains a finished trial twice) and tags children with what the
report groups by. Tags, not params: params are immutable and `run_training` already logs the full config.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vertseg.distributed.tracking import EXPERIMENT, default_tracking_uri, equals_clause
from vertseg.tuning.sweep import SSL_METHODS, SweepError, SweepPlan, TrialSpec

__all__ = ["EXPERIMENT", "default_tracking_uri"]  # re-exported: `vertseg train` and sweeps share one store

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

TAG_SWEEP = "vertseg.sweep"
TAG_ROLE = "vertseg.role"
TAG_TRIAL = "vertseg.trial"
TAG_VARIANT = "vertseg.variant"
TAG_SEED = "vertseg.seed"
TAG_X = "vertseg.x"
TAG_ORDER = "vertseg.order"
TAG_METHOD = "vertseg.method"
TAG_DATASET = "vertseg.dataset"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"


def client(uri: str) -> "MlflowClient":
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(mlflow: "MlflowClient", name: str, artifact_root: Path) -> str:
    """The experiment's id, created with an explicit artifact location so every node writes to the same place."""
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            mlflow.restore_experiment(existing.experiment_id)
        return existing.experiment_id
    artifact_root = Path(artifact_root).resolve()
    artifact_root.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=artifact_root.as_uri())


def store_provenance(store: Path, split: str) -> dict[str, str]:
    """Fingerprint and evaluation split of a preprocessed store, for every number the report prints."""
    from vertseg.data.store import StoreError, VertStore

    try:
        vert = VertStore(store)
    except StoreError as error:
        raise SweepError(str(error)) from None
    cases = vert.cases(split=split)
    return {
        "data.store": str(store),
        "data.store_fingerprint": str(vert.manifest.get("fingerprint", "unknown")),
        "data.eval_split": split,
        "data.eval_cases": str(len(cases)),
    }


def start_parent(mlflow: "MlflowClient", experiment_id: str, plan: SweepPlan, provenance: dict[str, str]) -> str:
    sweep = plan.sweep
    run = mlflow.create_run(
        experiment_id,
        run_name=f"sweep-{sweep.name}{'-smoke' if plan.smoke else ''}",
        tags={TAG_SWEEP: sweep.name, TAG_ROLE: "sweep", "vertseg.smoke": str(plan.smoke).lower()},
    )
    params = {
        "sweep.file": str(plan.path),
        "sweep.title": sweep.title or sweep.name,
        "sweep.kind": sweep.kind,
        "sweep.x_key": sweep.x_key or "",
        "sweep.trials": str(len(plan.trials)),
        "sweep.seeds": ",".join(str(s) for s in sweep.seeds[: 1 if plan.smoke else None]),
        "sweep.smoke": str(plan.smoke).lower(),
        "resources.workers_per_trial": str(sweep.resources.workers_per_trial),
        "resources.use_gpu": str(sweep.resources.use_gpu).lower(),
        "data.unlabeled": str(sweep.data.unlabeled or ""),
        **provenance,
    }
    for key, value in params.items():
        mlflow.log_param(run.info.run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(plan.path.read_text())
        (Path(tmp) / "trials.json").write_text(json.dumps([t.model_dump(mode="json") for t in plan.trials], indent=2))
        mlflow.log_artifacts(run.info.run_id, tmp, "sweep")
    return run.info.run_id


def reopen_parent(mlflow: "MlflowClient", run_id: str) -> None:
    mlflow.update_run(run_id, status="RUNNING")


def finish_parent(mlflow: "MlflowClient", run_id: str, finished: int, failed: int, interrupted: int) -> None:
    """Trial counts by state; KILLED while trials remain (the sweep resumes), else FAILED if any trial failed."""
    for state, count in (("finished", finished), ("failed", failed), ("interrupted", interrupted)):
        mlflow.log_metric(run_id, f"trials_{state}", count)
    if interrupted:
        kill_sweep(mlflow, run_id)
    else:
        mlflow.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def kill_sweep(mlflow: "MlflowClient", parent_run_id: str) -> None:
    """End an interrupted sweep's parent run, and the child runs its stopped trials left RUNNING, as KILLED; a
    resumed sweep re-attaches them."""
    parent = mlflow.get_run(parent_run_id)
    running = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"{equals_clause(f'tags.`{TAG_PARENT}`', parent_run_id)} and attributes.status = 'RUNNING'",
    )
    for run in [*running, parent]:
        mlflow.set_terminated(run.info.run_id, status="KILLED")


def finished_child(mlflow: "MlflowClient", parent_run_id: str, run_name: str) -> "Run | None":
    """The finished child run of this trial, if an earlier attempt of the sweep completed it."""
    parent = mlflow.get_run(parent_run_id)
    runs = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"{equals_clause(f'tags.`{TAG_PARENT}`', parent_run_id)} and "
            f"{equals_clause(f'tags.`{TAG_RUN_NAME}`', run_name)} and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    exact = [r for r in runs if r.data.tags.get(TAG_RUN_NAME) == run_name and TAG_TRIAL in r.data.tags]
    return exact[0] if exact else None


def finished_trials(mlflow: "MlflowClient", parent_run_id: str) -> set[str]:
    """Keys of the trials whose child run finished and was annotated: the ones a resumed sweep does not rerun."""
    parent = mlflow.get_run(parent_run_id)
    runs = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"{equals_clause(f'tags.`{TAG_PARENT}`', parent_run_id)} and attributes.status = 'FINISHED'",
        max_results=50_000,
    )
    return {r.data.tags[TAG_TRIAL] for r in runs if TAG_TRIAL in r.data.tags}


def annotate_child(
    mlflow: "MlflowClient",
    run_id: str,
    parent_run_id: str,
    sweep_name: str,
    trial: TrialSpec,
    method: str,
    best_metrics: dict[str, float] | None = None,
) -> None:
    """Tag a finished trial run with what the report groups by, log its best-epoch metrics as `best_<name>`
    (the report prefers them over the last epoch's), and attach the trial spec as an artifact."""
    tags: dict[str, Any] = {
        TAG_PARENT: parent_run_id,
        TAG_SWEEP: sweep_name,
        TAG_ROLE: "trial",
        TAG_VARIANT: trial.variant,
        TAG_SEED: trial.seed,
        TAG_ORDER: trial.order,
        TAG_METHOD: method,
        TAG_DATASET: "labeled + unlabeled" if method in SSL_METHODS else "labeled",
    }
    if trial.x is not None:
        tags[TAG_X] = trial.x
    for key, value in tags.items():
        mlflow.set_tag(run_id, key, str(value))
    for key, value in (best_metrics or {}).items():
        mlflow.log_metric(run_id, f"best_{key}", value)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "trial.json").write_text(json.dumps(trial.model_dump(mode="json"), indent=2))
        mlflow.log_artifact(run_id, str(Path(tmp) / "trial.json"), "sweep")
    # Set last: `finished_child` treats a run without this tag as unfinished bookkeeping.
    mlflow.set_tag(run_id, TAG_TRIAL, trial.key)
