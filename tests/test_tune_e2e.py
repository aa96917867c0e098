"""Sweeps on real Ray Tune + Ray Train + MLflow, sharing the session Ray instance.

The smoke sweep trains with the real `run_training` on a phantom store; the kill/resume test drives
`tests/tune_helpers.py:train` (a small real TorchTrainer run with run_training's signature) so that its timing
(kill after the first trial) does not depend on the segmentation network's speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vertseg.tuning import tracking
from vertseg.tuning.runner import run_sweep
from vertseg.tuning.sweep import plan_sweep

REPO = Path(__file__).resolve().parents[1]

SWEEP = """
name: tau
title: "Pseudo-label threshold"
kind: line
x_key: train.schedule.tau_seg_end
entrypoint: {entrypoint}
data: {{store: {store}}}
grid: {{train.schedule.tau_seg_end: [0.6, 0.9]}}
seeds: [7]
resources: {{workers_per_trial: {workers}, max_failures: 1}}
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from training_phantoms import make_store

    return make_store(tmp_path_factory.mktemp("tune-store") / "ph.zarr", {"training": 1, "validation": 1})


def _sweep_file(tmp_path: Path, store: Path, workers: int, entrypoint: str = "tests.tune_helpers:train") -> Path:
    path = tmp_path / "tau.yaml"
    path.write_text(SWEEP.format(entrypoint=entrypoint, store=store, workers=workers))
    return path


def _trial_runs(uri: str, parent: str) -> list:
    mlflow = tracking.client(uri)
    experiment = mlflow.get_run(parent).info.experiment_id
    return mlflow.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.mark.slow
def test_two_trial_smoke_sweep_with_run_training_is_tracked_and_reported(ray_cluster, tmp_path):
    """The real trainer: a two-trial CBAM sweep, each trial a 2-worker DDP run of run_training on phantoms."""
    import yaml

    from training_phantoms import TINY, make_store
    from vertseg.reporting.collect import from_sweep
    from vertseg.reporting.render import build_report, log_to_parent, write_report

    store = make_store(tmp_path / "real.zarr", {"training": 2, "validation": 1, "unlabeled": 1})
    smoke = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY + ["train.loader_workers=0"])}
    sweep = {
        "name": "cbam",
        "title": "3D-CBAM placement",
        "data": {"store": str(store)},
        "variants": [
            {"label": "No CBAM", "overrides": {"model.cbam_placement": "none"}},
            {"label": "CBAM in ID branch only", "overrides": {"model.cbam_placement": "id"}},
        ],
        "resources": {"workers_per_trial": 2, "max_failures": 0},
        "smoke": smoke,
    }
    sweep_file = tmp_path / "cbam.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    plan = plan_sweep(sweep_file, smoke=True)
    outcome = run_sweep(plan, root=tmp_path / "runs")
    assert (outcome.finished, outcome.failed) == (2, 0), outcome.errors

    mlflow = tracking.client(outcome.mlflow_uri)
    parent = mlflow.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[tracking.TAG_SWEEP] == "cbam"
    fingerprint = json.loads((store / "manifest.json").read_text())["fingerprint"]
    assert parent.data.params["data.store_fingerprint"] == fingerprint
    assert parent.data.params["data.eval_split"] == "validation" and parent.data.params["data.eval_cases"] == "1"
    assert parent.data.metrics["trials_finished"] == 2
    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert experiment.name == "vertseg"
    assert experiment.artifact_location == (tmp_path / "runs" / "mlartifacts").resolve().as_uri()
    children = [r for r in _trial_runs(outcome.mlflow_uri, outcome.parent_run_id) if tracking.TAG_TRIAL in r.data.tags]
    assert sorted(c.data.tags[tracking.TAG_VARIANT] for c in children) == ["CBAM in ID branch only", "No CBAM"]
    for child in children:
        placement = "none" if child.data.tags[tracking.TAG_VARIANT] == "No CBAM" else "id"
        assert child.info.status == "FINISHED" and child.data.params["model.cbam_placement"] == placement
        assert child.data.params["model.base_width"] == "4" and child.data.params["run.world_size"] == "2"
        assert len(mlflow.get_metric_history(child.info.run_id, "val_dice")) == 2  # two smoke epochs
        assert "best_val_dice" in child.data.metrics
        assert child.data.tags["vertseg.eval_split"] == "validation"  # full-volume evaluation of the best checkpoint
        assert child.data.metrics["validation_cases"] == 1 and "validation_dice" in child.data.metrics
        assert "sweep/trial.json" in {f.path for f in mlflow.list_artifacts(child.info.run_id, "sweep")}
        run_dir = tmp_path / "runs/sweeps/cbam/train" / child.data.tags["mlflow.runName"]
        assert any(run_dir.glob("checkpoint_*"))

    source = from_sweep(mlflow, "cbam")
    report, figs = build_report(source, "val", outcome.mlflow_uri)
    paths = write_report(report, figs, tmp_path / "report")
    log_to_parent(outcome.mlflow_uri, outcome.parent_run_id, tmp_path / "report")
    markdown = paths["report.md"].read_text()
    assert "| No CBAM | labeled + unlabeled |" in markdown and fingerprint in markdown
    assert paths["main_bars.png"].read_bytes().startswith(b"\x89PNG")
    assert "report/report.html" in {f.path for f in mlflow.list_artifacts(outcome.parent_run_id, "report")}


@pytest.mark.slow
def test_ctrl_c_counts_trials_by_state_and_prints_the_command_that_resumes_the_sweep(ray_cluster, store, tmp_path):
    """Ctrl-C (SIGINT to the CLI's process group) while the second trial runs: Tune stops it, the summary says one
    finished and one interrupted, the exit code is 130, the parent run is KILLED, and the printed vertseg command
    (not Tune's `Tuner.restore` advice) finishes the sweep."""
    import shlex

    from tune_helpers import HOLD_FILE

    sweep_file = _sweep_file(tmp_path, store, workers=1)
    runs = tmp_path / "runs"
    held = runs / "sweeps/tau/train" / HOLD_FILE  # the second trial waits after its first report while this exists
    held.parent.mkdir(parents=True)
    held.write_text("tau-seg-end-0-9-s7")
    command = [sys.executable, "-m", "vertseg", "tune", str(sweep_file), "--smoke", "--max-concurrent", "1",
               "--out", str(runs)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reported = runs / "sweeps/tau/tune/tau-seg-end-0-9-s7/result.json"  # Tune's record of the trial's reports
    with open(tmp_path / "tune.log", "w") as log:
        first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=log)
        deadline = time.monotonic() + 1800  # a hang guard, not a speed claim
        try:
            while time.monotonic() < deadline and first.poll() is None and not (
                    reported.exists() and reported.stat().st_size):
                time.sleep(0.5)
            assert first.poll() is None, "the sweep ended before the held trial reported"
            os.killpg(first.pid, signal.SIGINT)
            first.wait(timeout=1800)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
                first.wait()
    output = (tmp_path / "tune.log").read_text()
    text = " ".join(output.split())
    assert first.returncode == 130, output
    assert "1 trials finished, 0 failed, 1 interrupted or not started" in text
    assert "sweep tau interrupted; resume it with: vertseg tune" in text and "Tuner.restore" not in output
    state = json.loads((runs / "sweeps/tau/state.json").read_text())
    assert tracking.client(state["mlflow_uri"]).get_run(state["parent_run_id"]).info.status == "KILLED"
    children = {r.data.tags["mlflow.runName"][-18:]: r.info.status
                for r in _trial_runs(state["mlflow_uri"], state["parent_run_id"])}
    assert children == {"tau-seg-end-0-6-s7": "FINISHED", "tau-seg-end-0-9-s7": "KILLED"}  # none left RUNNING
    resume = next(line.split("resume it with: ", 1)[1] for line in output.splitlines() if "resume it with: " in line)
    words = shlex.split(resume)
    assert words[:2] == ["vertseg", "tune"] and words[-1] == "--resume"

    held.unlink()
    resumed = subprocess.run([sys.executable, "-m", "vertseg", *words[1:]], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 trials finished, 0 failed;" in " ".join(resumed.stderr.split())
    assert tracking.client(state["mlflow_uri"]).get_run(state["parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_killed_sweep_resumes_without_retraining_finished_trials(ray_cluster, store, tmp_path):
    """`vertseg tune` is SIGKILLed after its first trial; `--resume` finishes the sweep under the same parent,
    retrying the remaining trial after an injected failure."""
    from tune_helpers import FAIL_ONCE_FILE

    sweep_file = _sweep_file(tmp_path, store, workers=1)
    uri = tracking.default_tracking_uri(tmp_path / "runs")
    command = [sys.executable, "-m", "vertseg", "tune", str(sweep_file), "--smoke", "--max-concurrent", "1",
               "--out", str(tmp_path / "runs"), "--mlflow-uri", uri]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "runs/sweeps/tau/state.json"
    deadline = time.monotonic() + 1800  # a hang guard, not a speed claim: a loaded machine may take minutes
    finished: list = []
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if state.exists():
                parent = json.loads(state.read_text())["parent_run_id"]
                finished = [r for r in _trial_runs(uri, parent) if tracking.TAG_TRIAL in r.data.tags]
                if finished:
                    break
            time.sleep(1.0)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert len(finished) == 1, "the first trial should finish before the kill"
    assert first.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    done_key = finished[0].data.tags[tracking.TAG_TRIAL]

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert "already holds a sweep" in " ".join(again.stderr.split()) and again.returncode == 2
    request = tmp_path / "runs/sweeps/tau/train" / FAIL_ONCE_FILE
    request.parent.mkdir(parents=True, exist_ok=True)
    request.touch()
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not request.exists()  # the unfinished trial failed once on resume, and Tune retried it
    assert "2 trials finished, 0 failed" in " ".join(resumed.stderr.split())
    runs = _trial_runs(uri, parent)
    tagged = [r for r in runs if tracking.TAG_TRIAL in r.data.tags]
    assert sorted(r.data.tags[tracking.TAG_TRIAL] for r in tagged) == ["tau-seg-end-0-6-s7", "tau-seg-end-0-9-s7"]
    # The finished trial was reused from MLflow, not trained again.
    assert len([r for r in runs if r.data.tags["mlflow.runName"].endswith(done_key)]) == 1
    assert tracking.client(uri).get_run(parent).info.status == "FINISHED"
