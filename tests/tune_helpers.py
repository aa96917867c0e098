"""A small but real Ray Train V2 run with `run_training`'s signature, for testing the sweep layer on its own.

It runs a TorchTrainer with DDP (gloo) workers, reports through `ray.train.report` with checkpoints (and to Tune
through `TuneReportCallback`), resumes from its last checkpoint, and logs a nested MLflow child run from rank 0,
exactly the contract `vertseg tune` relies on, in a few seconds instead of a segmentation network's minutes.
Its "val_dice" is a deterministic function of the trial's config so reports can be checked.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

FAIL_ONCE_FILE = "FAIL_ONCE"  # in storage_path: the next trial to start deletes it and fails (Tune must retry)
HOLD_FILE = "HOLD"  # in storage_path: the trial whose key it holds waits after each report while the file exists


@dataclass(frozen=True)
class StandInResult:
    best_metrics: dict[str, float]
    checkpoint_path: Path | None
    mlflow_run_id: str | None


def expected_dice(tau_seg_end: float, seed: int) -> float:
    return 0.8 + 0.1 * tau_seg_end + 0.001 * seed


def _hold(cfg: dict) -> None:
    """Keep a trial running (a sweep to interrupt) until the test removes the hold file."""
    import time

    while cfg["hold"] and Path(cfg["hold"]).exists():
        time.sleep(0.2)


def _loop(cfg: dict) -> None:
    import mlflow
    import ray.train
    import torch
    from ray.train import Checkpoint

    torch.manual_seed(cfg["seed"])
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.module.load_state_dict(state["model"]) if hasattr(model, "module") else model.load_state_dict(state["model"])
        start = state["epoch"] + 1
    rank = ray.train.get_context().get_world_rank()
    run = None
    if rank == 0:  # like run_training: re-attach the run of that name (a resumed trial continues its MLflow run)
        client = mlflow.MlflowClient(cfg["mlflow_uri"])
        experiment = client.get_run(cfg["parent"]).info.experiment_id
        found = client.search_runs([experiment], filter_string=f"tags.`mlflow.runName` = '{cfg['run_name']}'")
        run = found[0] if found else client.create_run(experiment, run_name=cfg["run_name"],
                                                       tags={"mlflow.parentRunId": cfg["parent"]})
        if not found:
            client.log_param(run.info.run_id, "train.seed", cfg["seed"])
    x = torch.randn(16, 4)
    for epoch in range(min(start, cfg["epochs"] - 1), cfg["epochs"]):  # a finished run reports its last epoch again
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics = {"epoch": epoch, "loss": float(loss), "val_dice": cfg["dice"] * (epoch + 1) / cfg["epochs"],
                   "val_id_acc": 0.9}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "epoch": epoch}, Path(tmp) / "state.pt")
                for key, value in metrics.items():
                    client.log_metric(run.info.run_id, key, value, step=epoch)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)
        _hold(cfg)
    if run is not None:
        client.set_terminated(run.info.run_id)


def train(config, store, unlabeled, *, num_workers, use_gpu, run_name, storage_path, mlflow_uri,
          mlflow_parent_run_id=None, resume=False, report_to_tune=False, volume_validation=None) -> StandInResult:
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    request = Path(storage_path) / FAIL_ONCE_FILE
    if request.exists():  # a file, not an env var: trials run in Ray workers that do not see the driver's env
        request.unlink()
        raise RuntimeError("injected trial failure")
    hold = Path(storage_path) / HOLD_FILE
    seed = config.train.seed
    loop_config = {
        "seed": seed,
        "epochs": config.train.schedule.epochs,
        "dice": expected_dice(config.train.schedule.tau_seg_end, seed),
        "mlflow_uri": mlflow_uri,
        "parent": mlflow_parent_run_id,
        "run_name": run_name,
        "hold": str(hold) if hold.exists() and run_name.endswith(hold.read_text().strip()) else None,
    }
    trainer = TorchTrainer(
        _loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            callbacks=[TuneReportCallback()] if report_to_tune else [],
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    result = trainer.fit()
    runs = mlflow.MlflowClient(mlflow_uri).search_runs(
        [mlflow.MlflowClient(mlflow_uri).get_run(mlflow_parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.runName` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    best = {"val_dice": float(result.metrics["val_dice"]), "val_id_acc": float(result.metrics["val_id_acc"])}
    return StandInResult(best, Path(result.checkpoint.path) if result.checkpoint else None,
                         runs[0].info.run_id if runs else None)
