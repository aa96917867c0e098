"""Launch (or resume) a validated sweep on Ray Tune, tracked under one MLflow parent run.

`root` is the runs folder `vertseg train` uses too (default `runs/`): MLflow's `mlflow.db` and `mlartifacts/` sit
there, shared with plain training runs. Layout of a sweep folder `<root>/sweeps/<sweep name>/`: `state.json` (parent run id, trial keys), `tune/` (Tune's
experiment state, what `Tuner.restore` reads), `train/<run name>/` (each trial's Ray Train checkpoints).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vertseg.io import atomic_write_json
from vertseg.tuning import tracking
from vertseg.tuning.sweep import SweepError, SweepPlan
from vertseg.tuning.trial import TrialContext, resolve_entrypoint, run_trial

STATE_FILE = "state.json"
TRIAL_DRIVER_MEMORY = 256 * 1024**2  # bytes booked per trial driver process


@dataclass(frozen=True)
class SweepOutcome:
    root: Path
    parent_run_id: str
    mlflow_uri: str
    finished: int
    failed: int
    errors: dict[str, str]
    interrupted: int  # trials neither finished nor failed: Ctrl-C stopped them, or they had not started


def concurrency_limit(cluster: dict[str, float], workers: int, use_gpu: bool, requested: int | None) -> int:
    """How many trials run at once: what the cluster fits (1 CPU, plus 1 GPU if asked, per Train worker)."""
    need = {"CPU": float(workers)} | ({"GPU": float(workers)} if use_gpu else {})
    fits = min(math.floor(cluster.get(resource, 0.0) / amount) for resource, amount in need.items())
    if fits < 1:
        have = {k: cluster.get(k, 0.0) for k in need}
        raise SweepError(f"one trial needs {need} but the Ray cluster has {have}; lower --workers-per-trial")
    return min(fits, requested) if requested else fits


def trial_label(trial: Any) -> str:
    """Tune's name and folder for a trial: the sweep's deterministic trial key instead of a random id."""
    return trial.config["trial"]


def resolve_eval_split(store: Path, split: str | None) -> str:
    """The sweep's held-out split: as given, else `test` when the store has labelled test cases, else `validation`."""
    from vertseg.data.store import StoreError
    from vertseg.evaluation.holdout import default_split

    if split is not None:
        return split
    try:
        return default_split(store)
    except StoreError as error:
        raise SweepError(str(error)) from None


def sweep_identity(plan: SweepPlan) -> dict[str, Any]:
    """Hashes of the stores' manifests and of every trial's resolved config, kept in `state.json`."""
    from vertseg.data.store import StoreError
    from vertseg.distributed.run_identity import config_sha256, manifest_sha256

    data = plan.sweep.data
    try:
        manifests = manifest_sha256([Path(data.store), Path(data.unlabeled) if data.unlabeled else None])
    except StoreError as error:
        raise SweepError(str(error)) from None
    return {
        "store_manifest_sha256": manifests,
        "trial_config_sha256": {trial.key: config_sha256(plan.config_for(trial)) for trial in plan.trials},
    }


def check_sweep_resume(name: str, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to continue a sweep whose stores or trial configs changed: finished trials would be reused as they are."""
    if "trial_config_sha256" not in state:
        raise SweepError(f"{name}: cannot resume: its state.json predates config and store hashes; start anew")
    if state["store_manifest_sha256"] != identity["store_manifest_sha256"]:
        raise SweepError(f"{name}: cannot resume: the store manifest changed since the sweep started; start anew")
    changed = sorted(k for k, v in identity["trial_config_sha256"].items() if state["trial_config_sha256"].get(k) != v)
    if changed:
        raise SweepError(f"{name}: cannot resume: the config of trial(s) {', '.join(changed)} changed since the sweep "
                         "started (its base config or overrides); start anew")


class _NoRestoreAdvice(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" after a Ctrl-C: a sweep resumes with
    `vertseg tune --resume`, which checks its stores and configs and reuses finished trials from MLflow."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


_NO_RESTORE_ADVICE = _NoRestoreAdvice()


def sweep_folder(root: Path, name: str) -> Path:
    return Path(root).resolve() / "sweeps" / name


def _read_state(path: Path) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path.exists() else None


def _connect_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = "auto"
    ray.init(address=address, include_dashboard=False, log_to_driver=False)


def run_sweep(
    plan: SweepPlan,
    *,
    root: Path,
    mlflow_uri: str | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    workers: int | None = None,
    use_gpu: bool | None = None,
    address: str | None = None,
) -> SweepOutcome:
    """Run every trial of `plan` (or, with `resume`, the ones not finished yet) and return the tally."""
    from ray import tune

    sweep = plan.sweep
    resolve_entrypoint(sweep.entrypoint)
    root = Path(root).resolve()
    folder = sweep_folder(root, sweep.name)
    state_path = folder / STATE_FILE
    state = _read_state(state_path)
    keys = [t.key for t in plan.trials]
    if state is not None and not resume:
        raise SweepError(f"sweep folder {folder} already holds a sweep; pass --resume to continue it")
    if state is None and resume:
        raise SweepError(f"nothing to resume: {state_path} does not exist")
    if state is not None and state["trial_keys"] != keys:
        raise SweepError(f"{sweep.name}: the sweep's trials changed since {state_path} was written; start anew")

    if state is not None and mlflow_uri and mlflow_uri != state["mlflow_uri"]:
        raise SweepError(f"{sweep.name} was tracked at {state['mlflow_uri']}, not {mlflow_uri}; resume without --mlflow-uri")
    identity = sweep_identity(plan)
    if state is not None:
        check_sweep_resume(sweep.name, state, identity)

    # Everything that can fail is checked before the MLflow parent run and the state file are written.
    eval_split = resolve_eval_split(sweep.data.store, sweep.data.eval_split)
    provenance = tracking.store_provenance(sweep.data.store, eval_split)
    resources = sweep.resources
    workers = workers or resources.workers_per_trial
    use_gpu = resources.use_gpu if use_gpu is None else use_gpu
    _connect_ray(address)
    import ray

    limit = concurrency_limit(ray.cluster_resources(), workers, use_gpu, max_concurrent or resources.max_concurrent)

    uri = (state or {}).get("mlflow_uri") or mlflow_uri or tracking.default_tracking_uri(root)
    mlflow = tracking.client(uri)
    if state is None:
        experiment_id = tracking.ensure_experiment(mlflow, tracking.EXPERIMENT, root / "mlartifacts")
        parent = tracking.start_parent(mlflow, experiment_id, plan, provenance)
        state = {"parent_run_id": parent, "mlflow_uri": uri, "trial_keys": keys, "smoke": plan.smoke, **identity}
        atomic_write_json(state_path, state)
    else:
        parent = state["parent_run_id"]
        tracking.reopen_parent(mlflow, parent)

    context = TrialContext(
        sweep_name=sweep.name,
        source=str(plan.path),
        base=plan.base,
        store=Path(sweep.data.store).resolve(),
        unlabeled=Path(sweep.data.unlabeled).resolve() if sweep.data.unlabeled else None,
        storage=folder / "train",
        mlflow_uri=uri,
        parent_run_id=parent,
        workers=workers,
        use_gpu=use_gpu,
        entrypoint=sweep.entrypoint,
        trials={t.key: t for t in plan.trials},
        eval_split=eval_split if sweep.data.evaluate else None,
    )
    # The trial function only drives its TorchTrainer; Train's workers hold the CPUs/GPUs. The trial reserves
    # no CPU (Tune needs a non-empty request, so it books driver memory), and concurrency comes from `limit`.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
    )
    tune_dir = folder / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(keys)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=limit, trial_name_creator=trial_label, trial_dirname_creator=trial_label
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(folder),
                failure_config=tune.FailureConfig(max_failures=resources.max_failures),
                verbose=1,
            ),
        )
    logging.getLogger("ray.tune.tune").addFilter(_NO_RESTORE_ADVICE)
    try:
        results = tuner.fit()  # a first Ctrl-C ends it early (Tune saves its state), leaving trials unfinished
    except KeyboardInterrupt:  # a second Ctrl-C cuts Tune's shutdown short; the sweep resumes all the same
        tracking.kill_sweep(mlflow, parent)
        raise
    errors = {
        result.config["trial"]: f"{type(result.error).__name__}: {result.error}"
        for result in results
        if result.error is not None
    }
    # Counted from MLflow, not Tune: after a Ctrl-C Tune marks the trials it stopped as terminated, without error.
    finished = tracking.finished_trials(mlflow, parent) & set(keys)
    failed = len(set(errors) - finished)
    interrupted = len(keys) - len(finished) - failed
    tracking.finish_parent(mlflow, parent, finished=len(finished), failed=failed, interrupted=interrupted)
    return SweepOutcome(folder, parent, uri, len(finished), failed, errors, interrupted)
