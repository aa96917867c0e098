"""Ray Train end to end on 2 CPU workers (sharing the session Ray instance): failure recovery, teacher sync,
MLflow contents, stop (SIGTERM path) and `vertseg train --resume`."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from training_phantoms import TINY, make_store
from vertseg.config import build_config

pytestmark = pytest.mark.slow

RUN = TINY + ["train.method=proposed", "train.loader_workers=0", "train.validate_every=1", "train.schedule.e_cons=0",
              "train.schedule.e_ramp=1", "train.schedule.iterations_per_epoch=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("dist") / "phantoms.zarr", {"training": 3, "validation": 1, "unlabeled": 2})


def test_two_workers_recover_from_failure_keep_teacher_in_sync_and_log_to_mlflow(ray_cluster, store, tmp_path, monkeypatch):
    import mlflow

    from vertseg.distributed.train import FAIL_ONCE_ENV, run_training

    monkeypatch.setenv(FAIL_ONCE_ENV, "1")  # rank 1 raises once during epoch 2 (after the epoch-1 checkpoint)
    config = build_config({}, RUN + ["train.schedule.epochs=2"])
    result = run_training(config, store, None, num_workers=2, use_gpu=False, run_name="fail-once", storage_path=tmp_path,
                          mlflow_uri=None)
    run_dir = tmp_path / "fail-once"
    assert (run_dir / ".injected_failure_done").exists()
    assert result.epochs == 2 and result.checkpoint_path is not None and result.checkpoint_path.exists()
    assert result.best_metrics is not None and "val_dice" in result.best_metrics

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["train.method"] == "proposed" and run.data.params["run.world_size"] == "2"
    assert run.data.params["model.base_width"] == "4"
    for key in ("loss", "loss_seg", "loss_kl", "lr", "lambda_cons", "tau_seg", "val_dice", "samples_per_s", "pass_seg",
                "loss_cons_cls"):  # consistency is on in epoch 2
        assert key in run.data.metrics, key
    epochs_logged = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert sorted(epochs_logged) == [1, 2]  # the restart resumed after epoch 1 instead of starting again
    checksums = client.get_metric_history(run.info.run_id, "teacher_checksum_ranks_equal")
    assert [m.value for m in checksums] == [1.0, 1.0]  # all-gathered teacher checksums equal on both ranks
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "best")}
    assert {"config.yaml", "best/checkpoint.pt"} <= artifacts
    assert run.info.status == "FINISHED"


def test_stop_then_cli_resume_continues_from_saved_epoch(ray_cluster, store, tmp_path):
    from typer.testing import CliRunner

    from vertseg.cli.main import app
    from vertseg.distributed.train import ray_checkpoints, run_training
    from vertseg.training.checkpoint import load_checkpoint

    config = build_config({}, RUN + ["train.schedule.epochs=3"])
    run_dir = tmp_path / "stopped"

    def stop_after_first_checkpoint() -> None:  # what the driver's SIGTERM handler does
        deadline = time.time() + 600
        while time.time() < deadline and not ray_checkpoints(run_dir):
            time.sleep(0.2)
        (run_dir / ".stop").touch()

    watcher = threading.Thread(target=stop_after_first_checkpoint, daemon=True)
    watcher.start()
    first = run_training(config, store, None, num_workers=2, use_gpu=False, run_name="stopped", storage_path=tmp_path,
                         mlflow_uri="none")
    watcher.join()
    saved = ray_checkpoints(run_dir)[-1]
    stopped_at = load_checkpoint(saved / "checkpoint.pt")
    assert 1 <= stopped_at["epoch"] < 3 and first.epochs < 3

    args = ["train", "--store", str(store), "--cpu-workers", "2", "--name", "stopped", "--out", str(tmp_path),
            "--mlflow-uri", "none"] + [x for item in RUN + ["train.schedule.epochs=3"] for x in ("--set", item)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = CliRunner().invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    final = load_checkpoint(ray_checkpoints(run_dir)[-1] / "checkpoint.pt")
    assert final["epoch"] == 3
    iterations = config.train.schedule.iterations_per_epoch
    assert final["step"] == 3 * iterations  # every step ran exactly once across stop and resume
