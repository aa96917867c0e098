"""MLflow tracking for a training run: full config as params, per-epoch metrics, artifacts.

Default store: `sqlite:///<runs dir>/mlflow.db` with artifacts under `<runs dir>/mlartifacts` (MLflow 3 no longer
defaults to ./mlruns; an explicit artifact location lets every node of a cluster write to the same place).

A run name is a label, as in MLflow itself: a fresh training always gets a new MLflow run, even when an earlier run
carries the same name. Only a resume re-attaches, and it does so by the run id recorded in the run folder
(`mlflow_run.json`), never by name. The driver opens the run; Ray Train's rank 0 attaches to it by id, so a worker
restarted after a failure keeps logging to the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vertseg.distributed.run_identity import RunIdentity, RunMismatchError
from vertseg.io import atomic_write_json

EXPERIMENT = "vertseg"
RUN_NAME_TAG = "vertseg.run_name"
CONFIG_HASH = "vertseg.config_sha256"
MANIFEST_HASH = "vertseg.store_manifest_sha256"
RUN_FILE = "mlflow_run.json"
STEP_KEYS = ("loss", "lr", "lambda_cons", "pass_seg", "pass_cls", "loss_cons_seg", "loss_cons_cls")  # logged per step


def step_metrics(logs: dict[str, float]) -> dict[str, float]:
    return {f"step/{k}": logs[k] for k in STEP_KEYS if k in logs}


def default_tracking_uri(runs_dir: Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def default_artifact_location(runs_dir: Path) -> str:
    return (Path(runs_dir).resolve() / "mlartifacts").as_uri()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.optim.lr": "0.01", ...} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def equals_clause(key: str, value: str) -> str:
    """A `search_runs` filter clause for `key = value` that any value survives.

    MLflow strips the outer quotes of a filter value without unescaping, so the value is quoted with a quote
    character it does not contain. A value holding both quotes (or a backslash, which the SQL tokenizer reads as an
    escape) becomes a LIKE pattern with `_` in their place: a superset, so callers re-check the exact value.
    """
    if "\\" not in value and "'" not in value:
        return f"{key} = '{value}'"
    if "\\" not in value and '"' not in value:
        return f'{key} = "{value}"'
    pattern = "".join("_" if c in "'\"\\%_" else c for c in value)
    return f"{key} LIKE '{pattern}'"


class Tracker:
    """Logs to one existing MLflow run, given its id."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params once; a resumed run keeps the values it started with (MLflow params are immutable)."""
        existing = self.client.get_run(self.run_id).data.params
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in flatten(params).items() if k not in existing]
        for start in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def open_run(
    tracking_uri: str,
    artifact_location: str | None,
    run_name: str,
    run_dir: Path,
    identity: RunIdentity,
    resume: bool,
    parent_run_id: str | None = None,
) -> Tracker:
    """A new MLflow run for a fresh start; for a resume, the run recorded in `run_dir` (a new one if none was)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    record_path = Path(run_dir) / RUN_FILE
    if resume and record_path.exists():
        tracker = Tracker(tracking_uri, _recorded_run(client, record_path, run_name, tracking_uri, identity))
        client.update_run(tracker.run_id, status="RUNNING")
        return tracker
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (
        experiment.experiment_id if experiment is not None
        else client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
    )
    hashes = {CONFIG_HASH: identity.config_sha256, MANIFEST_HASH: identity.store_manifest_sha256}
    tags = {RUN_NAME_TAG: run_name, **hashes}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tracker = Tracker(tracking_uri, client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id)
    tracker.log_params(hashes)
    atomic_write_json(record_path, {"run_id": tracker.run_id, "tracking_uri": tracking_uri})
    return tracker


def _recorded_run(client: Any, record_path: Path, run_name: str, tracking_uri: str, identity: RunIdentity) -> str:
    """The run id in `record_path`, checked to exist in this tracking store and to carry the same hashes."""
    from mlflow.exceptions import MlflowException

    record = json.loads(record_path.read_text())
    try:
        run = client.get_run(record["run_id"])
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage != "active":
        raise RunMismatchError(
            f"cannot resume run {run_name!r}: it was tracked as MLflow run {record['run_id']} at "
            f"{record['tracking_uri']}, which {tracking_uri} does not hold (or holds deleted); "
            f"resume with --mlflow-uri {record['tracking_uri']}"
        )
    tags = run.data.tags
    for key, value in ((CONFIG_HASH, identity.config_sha256), (MANIFEST_HASH, identity.store_manifest_sha256)):
        if key in tags and tags[key] != value:
            raise RunMismatchError(f"cannot resume run {run_name!r}: MLflow run {run.info.run_id} has {key}="
                                   f"{tags[key]}, this config and store give {value}")
    return run.info.run_id
