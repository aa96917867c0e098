"""`vertseg train --cpu-workers 0`: single-process training on a phantom store, with checkpoints and MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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


def _mlflow_run(runs):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("vertseg").experiment_id])
    return client, run


def test_training_reports_steps_before_the_first_epoch_ends(tmp_path):
    """A step line (step k/total, loss, steps/s, epoch ETA) and step metrics in MLflow from the first step on, then
    every train.log_every_steps steps: an epoch of a paper-sized run takes minutes on a laptop."""
    store = make_store(tmp_path / "s.zarr", {"training": 2, "validation": 1})
    sets = ["train.method=fsl", "train.schedule.epochs=1", "train.schedule.iterations_per_epoch=3",
            "train.log_every_steps=2"]
    args = _args(store, tmp_path / "runs", "--name", "steps") + [x for item in sets for x in ("--set", item)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    epoch_end = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/1 | loss"))
    steps = [line for line in lines[:epoch_end] if line.startswith("epoch 1/1 step ")]
    assert [line.split(" | ")[0] for line in steps[:2]] == ["epoch 1/1 step 1/3", "epoch 1/1 step 2/3"]
    assert all(" steps/s | epoch ETA " in line for line in steps)
    client, run = _mlflow_run(tmp_path / "runs")
    assert {1, 2} <= {m.step for m in client.get_metric_history(run.info.run_id, "step/loss")}


def _interrupt(command: list[str], log, wait_for: str) -> int:
    """Run `command` until its output shows `wait_for`, then send SIGINT to its process group (what Ctrl-C does);
    its exit code."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                                   stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 900  # a hang guard, not a speed claim
            while wait_for not in log.read_text():
                assert process.poll() is None and time.monotonic() < deadline, f"no {wait_for!r}:\n{log.read_text()}"
                time.sleep(0.2)
            os.killpg(process.pid, signal.SIGINT)
            return process.wait(timeout=900)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _resume_words(output: str) -> list[str]:
    import shlex

    return shlex.split(next(line.split("resume it with: ", 1)[1] for line in output.splitlines()
                            if "resume it with: " in line))


CTRL_C_SETS = ["train.method=fsl", "train.schedule.iterations_per_epoch=100000"]  # an epoch that outlasts the test


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_ends_the_mlflow_run_killed_and_prints_the_resume_command(tmp_path):
    """Ctrl-C mid-epoch: exit 130, a checkpoint of the steps done, the MLflow run KILLED (not RUNNING), and a
    printed command line that resumes the same run from there."""
    from vertseg.training.checkpoint import load_checkpoint

    store = make_store(tmp_path / "s.zarr", {"training": 2, "validation": 1})
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    args = _args(store, runs, "--name", "ctrl-c") + [x for item in CTRL_C_SETS for x in ("--set", item)]
    assert _interrupt([sys.executable, "-m", "vertseg", *args], log, "epoch 1/2 step 2/100000") == 130, log.read_text()
    latest = load_checkpoint(runs / "ctrl-c" / "checkpoints" / "latest.pt")
    assert latest["epoch"] == 0 and latest["step"] >= 2
    client, run = _mlflow_run(runs)
    assert run.info.status == "KILLED"
    words = _resume_words(log.read_text())
    all_sets = [x for item in SETS + CTRL_C_SETS for x in ("--set", item)]
    assert words == ["vertseg", "train", "--store", str(store), *all_sets, "--cpu-workers", "0", "--out", str(runs),
                     "--name", "ctrl-c", "--resume"]

    assert _interrupt([sys.executable, "-m", "vertseg", *words[1:]], log, "resumed ctrl-c") == 130, log.read_text()
    assert f"resumed ctrl-c at epoch 0 (step {latest['step']})" in log.read_text()
    assert client.get_run(run.info.run_id).info.status == "KILLED"  # the same MLflow run, re-attached and ended


@pytest.mark.slow
def test_ctrl_c_of_ray_training_stops_its_workers_after_a_step_with_a_checkpoint(ray_cluster, tmp_path):
    """The same on Ray Train (--cpu-workers 1), whose own SIGINT handler would abort the workers: no checkpoint
    of the interrupted epoch, the MLflow run left RUNNING and exit code 0."""
    from vertseg.distributed.train import ray_checkpoints
    from vertseg.training.checkpoint import load_checkpoint

    store = make_store(tmp_path / "s.zarr", {"training": 2, "validation": 1})
    runs, log = tmp_path / "runs", tmp_path / "train.log"
    args = _args(store, runs, "--name", "ray-c") + [x for item in CTRL_C_SETS for x in ("--set", item)]
    args[args.index("--cpu-workers") + 1] = "1"
    assert _interrupt([sys.executable, "-m", "vertseg", *args], log, "epoch 1/2 step 2/100000") == 130, log.read_text()
    [checkpoint] = ray_checkpoints(runs / "ray-c")
    state = load_checkpoint(checkpoint / "checkpoint.pt")
    assert state["epoch"] == 0 and state["step"] >= 2
    assert _mlflow_run(runs)[1].info.status == "KILLED"
    assert _resume_words(log.read_text())[-5:] == ["--out", str(runs), "--name", "ray-c", "--resume"]
