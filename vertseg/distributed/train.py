"""`run_training`: Ray Train (TorchTrainer, DDP) around the trainer core; the entry point of `vertseg train` and of
tuning trials. `num_workers=0` trains in this process without Ray (laptops, debugging), with the same outputs.

Run layout under `storage_path/run_name/`: Ray's `checkpoint_*` folders (the latest two; restored after a worker
failure or with `resume=True`), `best/checkpoint.pt` + `best/metrics.json`, `config.yaml`, `identity.json` (hashes
of the config and the store manifests; a resume is refused when they changed), `mlflow_run.json` (the MLflow run a
resume re-attaches to).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vertseg.config import VertsegConfig, dump_config
from vertseg.training.loop import VolumeValidation

FAIL_ONCE_ENV = "VERTSEG_FAIL_ONCE_AT_EPOCH"  # fault-injection hook for tests of worker-failure recovery


class RunExistsError(RuntimeError):
    """A run of that name already has checkpoints; resume it or pick another name."""


@dataclass
class TrainingResult:
    best_metrics: dict[str, float] | None
    checkpoint_path: Path | None  # the best checkpoint (the latest when no validation ran)
    mlflow_run_id: str | None
    run_dir: Path
    epochs: int
    interrupted: bool = False
    metrics: dict[str, float] | None = None  # the last epoch's reported metrics


def default_run_name(config: VertsegConfig, store: Path) -> str:
    """Deterministic: method + hash of the full config and the store path, so a requeued job finds its run."""
    digest = hashlib.sha256((dump_config(config) + str(Path(store).resolve())).encode()).hexdigest()[:10]
    return f"{config.train.method}-{digest}"


def ray_checkpoints(run_dir: Path) -> list[Path]:
    """Ray Train's checkpoint folders of a run, oldest first (their names carry the report time)."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if (p / "checkpoint.pt").is_file())


def _has_checkpoint(run_dir: Path) -> bool:
    return bool(ray_checkpoints(run_dir)) or (run_dir / "checkpoints" / "latest.pt").exists()


class _TermToStopFile:
    """SIGTERM/SIGINT on the driver (Slurm preemption, scancel) -> the stop file every rank polls each step."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file, self.previous, self.fired = stop_file, {}, False

    def __enter__(self) -> "_TermToStopFile":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        self.fired = True
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _fit_off_main_thread(trainer: Any) -> Any:
    """`trainer.fit()` in a daemon thread. On the main thread Ray Train takes SIGINT over and aborts the workers (no
    checkpoint of the interrupted epoch, the MLflow run left RUNNING, exit 0); off it, Ctrl-C reaches
    `_TermToStopFile`, and the ranks stop after a step, checkpoint and end the MLflow run KILLED."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # re-raised on the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_training(
    config: VertsegConfig,
    store: Path,
    unlabeled: Path | None,
    *,
    num_workers: int,
    use_gpu: bool,
    run_name: str,
    storage_path: Path,
    mlflow_uri: str | None,
    mlflow_parent_run_id: str | None = None,
    resume: bool | Literal["auto"] = False,
    report_to_tune: bool = False,
    init_from: Path | None = None,
    volume_validation: "VolumeValidation | None" = None,
) -> TrainingResult:
    """Train `config` on `store` (+ `unlabeled`) with `num_workers` Ray Train workers (0 = in this process).

    `resume`: True continues the run's latest checkpoint (an error if it has none); "auto" continues it when there
    is one and starts the run otherwise (what a requeued batch job wants). `init_from`: a checkpoint whose weights
    start a new run (fine-tuning, `Trainer.initialise_from`); a resumed run continues its own weights instead.

    `mlflow_uri` None means the default local SQLite store under `storage_path`; "none" disables MLflow.
    `volume_validation` (`functools.partial(evaluation.holdout.volume_validator, store)`, built by the caller so
    training never imports inference): full-volume validation on each rank, which then picks the best checkpoint.
    """
    from vertseg.distributed.run_identity import check_resume, run_identity, write_identity
    from vertseg.distributed.tracking import RUN_FILE, default_artifact_location, default_tracking_uri, open_run
    from vertseg.distributed.worker import store_fingerprint

    if run_name in ("", ".", "..") or "/" in run_name or "\\" in run_name:
        raise ValueError(f"run name {run_name!r} must be a single folder name (no '/', '\\', '.' or '..')")
    storage_path = Path(storage_path).resolve()
    run_dir = storage_path / run_name
    if resume == "auto":
        resume = _has_checkpoint(run_dir)
    if _has_checkpoint(run_dir) and not resume:
        raise RunExistsError(f"run {run_name!r} already has checkpoints in {run_dir}; pass --resume to continue it "
                             "or --name to start another run")
    if resume and not _has_checkpoint(run_dir):
        raise FileNotFoundError(f"--resume: run {run_name!r} has no checkpoint in {run_dir}")
    identity = run_identity(config, Path(store), Path(unlabeled) if unlabeled else None)
    if resume:
        check_resume(run_dir, run_name, identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_identity(run_dir, identity)
    if not resume:
        (run_dir / RUN_FILE).unlink(missing_ok=True)  # an earlier attempt's MLflow run is not this run's
    uri = None if mlflow_uri == "none" else (mlflow_uri or default_tracking_uri(storage_path))
    artifacts = default_artifact_location(storage_path) if mlflow_uri is None else None
    tracker = open_run(uri, artifacts, run_name, run_dir, identity, bool(resume), mlflow_parent_run_id) if uri else None
    if num_workers == 0:
        return _run_local(config, Path(store), unlabeled, run_dir, tracker, resume, init_from, volume_validation)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from vertseg.distributed.worker import train_worker

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    stop_file = run_dir / ".stop"
    stop_file.unlink(missing_ok=True)
    fail_epoch = os.environ.get(FAIL_ONCE_ENV)
    loop = {
        "config": config.model_dump(mode="json"), "store": str(Path(store).resolve()),
        "unlabeled": str(Path(unlabeled).resolve()) if unlabeled else None, "run_dir": str(run_dir), "run_name": run_name,
        "mlflow_uri": uri, "mlflow_run_id": tracker.run_id if tracker else None,
        "fingerprint": store_fingerprint(Path(store)), "stop_file": str(stop_file),
        "fail_once_at_epoch": int(fail_epoch) if fail_epoch else None,
        "resume_from": str(ray_checkpoints(run_dir)[-1] / "checkpoint.pt") if resume and ray_checkpoints(run_dir) else None,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
        "volume_validation": volume_validation,
    }
    callbacks = []
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_name, storage_path=str(storage_path), callbacks=callbacks,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    with _TermToStopFile(stop_file) as term:
        result = _fit_off_main_thread(trainer)
    return _result(run_dir, result.checkpoint.path if result.checkpoint else None, result.metrics, term.fired)


def _result(run_dir: Path, latest: str | None, last_metrics: dict[str, Any] | None, interrupted: bool) -> TrainingResult:
    import json

    best_file, best_metrics = run_dir / "best" / "checkpoint.pt", run_dir / "best" / "metrics.json"
    best = json.loads(best_metrics.read_text()) if best_metrics.exists() else None
    mlflow_file = run_dir / "mlflow_run.json"  # tracking.RUN_FILE, written when the run was opened
    run_id = json.loads(mlflow_file.read_text())["run_id"] if mlflow_file.exists() else None
    checkpoint = best_file if best_file.exists() else (Path(latest) / "checkpoint.pt" if latest else None)
    epochs = int((last_metrics or {}).get("epoch", 0))
    return TrainingResult(best, checkpoint, run_id, run_dir, epochs, interrupted, dict(last_metrics or {}))


def _run_local(config, store, unlabeled, run_dir, tracker, resume, init_from=None, volume_validation=None
               ) -> TrainingResult:
    """The single-process path, with the same MLflow logging as rank 0 of a Ray run."""
    from vertseg.distributed.tracking import step_metrics
    from vertseg.distributed.worker import store_fingerprint
    from vertseg.training.runner import train_local

    if tracker is not None:
        tracker.log_params({**config.model_dump(mode="json"), "run": {"world_size": 0, "store": str(store),
                                                                      "unlabeled": str(unlabeled) if unlabeled else None,
                                                                      "store_fingerprint": store_fingerprint(store)}})
    log_metrics = (lambda result, paths: tracker.log_metrics(result.metrics, result.epoch)) if tracker else None

    log_step = (lambda step, logs: tracker.log_metrics(step_metrics(logs), step=step)) if tracker else None
    try:
        outcome = train_local(config, store, unlabeled, run_dir, resume=resume, init_from=init_from,
                              volume_validation=volume_validation,
                              loader_workers=config.train.loader_workers,
                              on_epoch=log_metrics, on_step=log_step)
    except BaseException as error:  # a run that dies (non-finite loss, bad data) or is interrupted is not left RUNNING
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.log_artifact(run_dir / "config.yaml")
        tracker.log_artifact(outcome["best_checkpoint"], "best")
        tracker.finish("KILLED" if outcome["interrupted"] else "FINISHED")
    return TrainingResult(outcome["best"], outcome["best_checkpoint"], tracker.run_id if tracker else None, run_dir,
                          outcome["epochs"], outcome["interrupted"], outcome["last"])
