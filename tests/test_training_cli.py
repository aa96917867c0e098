"""`vertseg train --cpu-workers 0`: single-process training on a phantom store, with checkpoints and MLflow."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from training_phantoms import TINY, make_store
from vertseg.cli.main import app

SETS = TINY + ["train.method=proposed", "train.loader_workers=0", "train.validate_every=1", "train.schedule.epochs=2",
               "train.schedule.iterations_per_epoch=2", "train.schedule.e_cons=0", "train.schedule.e_ramp=1",
               "train.log_every_steps=1"]


def _args(store, out, *extra):
    return ["train", "--store", str(store), "--cpu-workers", "0", "--out", str(out), *extra] + [
        x for item in SETS for x in ("--set", item)]


@pytest.mark.slow
def test_single_process_training_writes_checkpoints_metrics_and_mlflow(tmp_path):
    import mlflow

    from vertseg.training.checkpoint import load_checkpoint

    store = make_store(tmp_path / "s.zarr", {"training": 2, "validation": 1, "unlabeled": 1})
    result = CliRunner().invoke(app, _args(store, tmp_path / "runs", "--name", "local"))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "local"
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all("val_dice" in h for h in history)
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert state["epoch"] == 2 and state["step"] == 4 and state["teacher"] is not None
    assert (run_dir / "best" / "checkpoint.pt").exists() and (run_dir / "config.yaml").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("vertseg").experiment_id])[0]
    assert run.data.params["train.method"] == "proposed" and "val_dice" in run.data.metrics
    assert "pass_seg" in history[1] and "step/pass_seg" in run.data.metrics  # consistency on in epoch 2, per step
    again = CliRunner().invoke(app, _args(store, tmp_path / "runs", "--name", "local"))
    assert again.exit_code == 2 and "--resume" in again.output


def test_bad_inputs_exit_with_a_clear_message(tmp_path):
    not_store = tmp_path / "nothing.zarr"
    not_store.mkdir()
    result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--cpu-workers", "0"])
    assert result.exit_code == 2 and "not a vertseg store" in result.output
    result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--set", "train.optim.lr=-1"])
    assert result.exit_code == 2 and "train.optim.lr" in result.output
    result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--gpus", "1", "--cpu-workers", "1"])
    assert result.exit_code == 2 and "either" in result.output
