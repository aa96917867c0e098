"""`vertseg train --cpu-workers 0`: single-process training on a phantom store, with checkpoints and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from cli_text import normalised
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
    assert result.exit_code == 2
    assert "error: --store ROOT/nothing.zarr is not a vertseg store" in normalised(result.output, tmp_path)
    result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--set", "train.optim.lr=-1"])
    assert result.exit_code == 2 and "train.optim.lr" in normalised(result.output)
    result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--gpus", "1", "--cpu-workers", "1"])
    assert result.exit_code == 2 and "either" in normalised(result.output)
    if not torch.cuda.is_available():  # Ray used to wait for the GPU forever
        (not_store / "manifest.json").write_text("{}")
        result = CliRunner().invoke(app, ["train", "--store", str(not_store), "--gpus", "1"])
        assert result.exit_code == 2 and "--gpus 1: this machine has 0 GPU(s)" in normalised(result.output)


def test_error_messages_are_never_wrapped_off_a_terminal(tmp_path):
    """Scripts and CI logs grep whole lines: a message naming a long path stays on one line, ours (`fail`) and
    Typer's usage errors alike, in the test runner and in a real pipe."""
    deep = tmp_path / ("d" * 150) / "nothing.zarr"
    deep.mkdir(parents=True)
    ours = f"error: --store {deep} is not a vertseg store (no manifest.json); run `vertseg preprocess` first"
    result = CliRunner().invoke(app, ["train", "--store", str(deep), "--cpu-workers", "0"])
    assert result.exit_code == 2 and ours in result.output.splitlines()
    usage = CliRunner().invoke(app, ["train", "--store", str(deep), "--cpu-workers", "-3"])
    assert usage.exit_code == 2
    assert "Error: Invalid value for '--cpu-workers': Input should be greater than or equal to 0" in usage.output.splitlines()
    piped = subprocess.run([sys.executable, "-m", "vertseg", "train", "--store", str(deep), "--cpu-workers", "0"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert piped.returncode == 2 and ours in piped.stderr.splitlines(), piped.stderr


def test_training_on_non_finite_numbers_exits_non_zero_and_keeps_the_last_good_checkpoint(tmp_path):
    """An exploding learning rate: every step after the first is non-finite; the run must not end "finished"
    with NaN weights, but stop with exit code 1, say why and keep the checkpoint of the last good epoch."""
    from vertseg.training.checkpoint import load_checkpoint

    store = make_store(tmp_path / "s.zarr", {"training": 2, "validation": 1})
    sets = ["train.method=fsl", "train.schedule.epochs=3", "train.max_nonfinite_steps=2", "train.validate_every=1"]
    args = _args(store, tmp_path / "runs", "--name", "nan") + [
        x for item in sets + ["train.optim.lr=1e30"] for x in ("--set", item)]
    result = CliRunner().invoke(app, args)
    text = normalised(result.output, tmp_path)
    assert result.exit_code == 1, result.output
    assert "training stopped on non-finite numbers" in text and "consecutive non-finite steps" in text
    latest = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoints" / "latest.pt")
    assert all(torch.isfinite(t).all() for t in latest["model"].values() if t.is_floating_point())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("vertseg").experiment_id])
    assert run.info.status == "FAILED"  # not left RUNNING
