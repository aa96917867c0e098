"""Held-out evaluation after training, logged to the training run's MLflow run (shared by `vertseg train
--evaluate` and Tune trials), so `vertseg report` reads full-volume `test_*`/`val_*` metrics back from MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vertseg.evaluation.holdout import HoldoutResult

TAG_EVAL_SPLIT = "vertseg.eval_split"


def log_holdout(tracking_uri: str, run_id: str, result: "HoldoutResult", step: int) -> None:
    """Flat metrics at the last training step (they become the run's latest values; NaN is skipped), the split as
    a tag, and `evaluation.json`/`.csv` as artifacts under `evaluation/<split>/`."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from vertseg.evaluation.holdout import write_holdout

    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, step) for k, v in result.finite_metrics().items()]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])
    client.set_tag(run_id, TAG_EVAL_SPLIT, result.split)
    with tempfile.TemporaryDirectory(prefix="vertseg-holdout-") as tmp:
        write_holdout(result, Path(tmp))
        client.log_artifacts(run_id, tmp, f"evaluation/{result.split}")


def evaluate_on_ray(checkpoint: Path, store: Path, split: str, use_gpu: bool) -> "HoldoutResult":
    """Run the evaluation as a Ray task holding one CPU (and one GPU when training used GPUs), so a trial's
    evaluation is scheduled like its training instead of borrowing another trial's devices. "DEFAULT" scheduling
    keeps the task out of the trial's placement group (it books driver memory only, as Ray Train's workers do)."""
    import ray

    from vertseg.evaluation.holdout import evaluate_checkpoint

    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0, scheduling_strategy="DEFAULT")(evaluate_checkpoint)
    return ray.get(task.remote(Path(checkpoint), Path(store), split))
