"""MLflow tracking for a training run (rank 0 only): full config as params, per-epoch metrics, artifacts.

Default store: `sqlite:///<runs dir>/mlflow.db` with artifacts under `<runs dir>/mlartifacts` (MLflow 3 no longer
defaults to ./mlruns; an explicit artifact location lets every node of a cluster write to the same place).
A run is found again by its `vertseg.run_name` tag, so a restarted or resumed training continues the same MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXPERIMENT = "vertseg"
RUN_NAME_TAG = "vertseg.run_name"
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


class Tracker:
    """One MLflow run, created or re-attached by run name."""

    def __init__(self, tracking_uri: str, artifact_location: str | None, run_name: str, parent_run_id: str | None = None) -> None:
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment is not None
            else self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        )
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {RUN_NAME_TAG: run_name}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

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
