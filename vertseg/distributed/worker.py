"""The per-worker training function run by Ray Train: DDP student, synchronised EMA teacher, checkpoints, MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vertseg.config import VertsegConfig, dump_config
from vertseg.data.store import VertStore
from vertseg.io import atomic_write_json, atomic_write_text
from vertseg.training.checkpoint import load_checkpoint, save_checkpoint
from vertseg.training.data import build_training_data
from vertseg.training.loop import EpochResult, fit
from vertseg.training.methods import get_method
from vertseg.training.progress import StepReporter
from vertseg.training.runner import epoch_line
from vertseg.training.trainer import Trainer, is_better

CHECKPOINT_FILE = "checkpoint.pt"


class TeacherDesyncError(RuntimeError):
    """The EMA teacher differs between ranks: pseudo-labels would differ per rank, so the run stops."""


def gather_floats(value: float, device: torch.device) -> list[float]:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    out = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return [float(t.item()) for t in out]


def check_teacher(trainer: Trainer) -> dict[str, float]:
    """Cross-rank checksum of the teacher; a mismatch fails the run loudly."""
    if trainer.teacher is None:
        return {}
    values = gather_floats(trainer.teacher.checksum(), trainer.device)
    if max(values) != min(values):
        raise TeacherDesyncError(f"EMA teacher checksums differ across ranks at epoch {trainer.epoch}: {values}")
    return {"teacher_checksum": values[0], "teacher_checksum_ranks_equal": 1.0}


def _stop_requested(stop_file: Path, device: torch.device) -> bool:
    """True on every rank as soon as one rank sees the stop file (so all ranks stop after the same step)."""
    flag = torch.tensor([1.0 if stop_file.exists() else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def train_worker(loop: dict[str, Any]) -> None:
    """Ray Train entry point (one call per rank, restarted from the latest checkpoint after a failure)."""
    import ray.train
    from ray.train import Checkpoint
    from torch.nn.parallel import DistributedDataParallel

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = VertsegConfig.model_validate(loop["config"])
    run_dir = Path(loop["run_dir"])
    device = ray.train.torch.get_device()
    data = build_training_data(
        config, Path(loop["store"]), Path(loop["unlabeled"]) if loop["unlabeled"] else None, rank=rank, world_size=world,
        loader_workers=config.train.loader_workers, uses_unlabeled=get_method(config.train.method).uses_unlabeled,
    )
    ddp = lambda m: DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)  # noqa: E731
    trainer = Trainer(config, device, class_counts=data.class_counts, wrap=ddp, rank=rank)
    best: dict[str, float] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop.get("resume_from"):
        # A run killed after writing a checkpoint but before Ray registered it: Ray would silently start over.
        checkpoint = Checkpoint.from_directory(str(Path(loop["resume_from"]).parent))
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / CHECKPOINT_FILE, device)
        trainer.load_state_dict(state)
        trainer.generator.manual_seed(config.train.seed * 1000 + rank + 7919 * trainer.step)  # per-rank, from the step
        best = state.get("best_metrics")
        if rank == 0:
            print(f"[vertseg] {loop['run_name']}: resumed at epoch {trainer.epoch} (step {trainer.step})", flush=True)
    elif loop.get("init_from"):
        report = trainer.initialise_from(loop["init_from"])
        if rank == 0:
            print(f"[vertseg] {loop['run_name']}: {report.summary()}", flush=True)

    tracker = None
    if rank == 0 and loop["mlflow_uri"]:
        from vertseg.distributed.tracking import Tracker, step_metrics

        tracker = Tracker(loop["mlflow_uri"], loop["mlflow_run_id"])  # opened by the driver, so restarts keep it
        tracker.log_params({**loop["config"], "run": {"world_size": world, "store": loop["store"],
                                                       "unlabeled": loop["unlabeled"], "store_fingerprint": loop["fingerprint"],
                                                       "global_labeled_batch": world * config.train.optim.labeled_batch_size}})

    stop_file = Path(loop["stop_file"])
    fail_epoch = loop.get("fail_once_at_epoch")
    fail_marker = run_dir / ".injected_failure_done"

    schedule = config.train.schedule
    reporter = StepReporter(schedule.epochs, schedule.iterations_per_epoch, config.train.log_every_steps, trainer.step)

    def on_step(logs: dict[str, float]) -> None:
        line = reporter.report(trainer.epoch, trainer.iteration, trainer.step, logs) if rank == 0 else None
        if line is not None:
            print("[vertseg] " + line, flush=True)
            if tracker is not None:
                tracker.log_metrics(step_metrics(logs), step=trainer.step)
        if fail_epoch is not None and trainer.epoch == fail_epoch and rank == world - 1 and not fail_marker.exists():
            fail_marker.touch()
            raise RuntimeError(f"injected worker failure on rank {rank} at epoch {trainer.epoch}, step {trainer.step}")

    def on_epoch_end(result: EpochResult) -> None:
        nonlocal best
        metrics = dict(result.metrics)
        if trainer.teacher is not None and (result.epoch % config.train.teacher_check_every == 0 or trainer.finished):
            metrics.update(check_teacher(trainer))
        metrics.update(epoch=float(result.epoch), step=float(trainer.step), world_size=float(world))
        if device.type == "cuda":
            metrics["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        is_best = result.validated and is_better(metrics, best)
        if is_best:
            best = {**metrics}
        state = {**trainer.state_dict(), "best_metrics": best, "store_fingerprint": loop["fingerprint"]}
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="vertseg-ckpt-") as folder:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, state)
            if is_best:
                save_checkpoint(run_dir / "best" / CHECKPOINT_FILE, state)
                atomic_write_json(run_dir / "best" / "metrics.json", best)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))
        if tracker is not None:
            tracker.log_metrics(metrics, step=result.epoch)
        print("[vertseg] " + epoch_line(result, config.train.schedule.epochs, is_best), flush=True)

    atomic_write_text(run_dir / "config.yaml", dump_config(config)) if rank == 0 else None
    validation = loop.get("volume_validation")
    fit(trainer, data, on_epoch_end, should_stop=lambda: _stop_requested(stop_file, device), on_step=on_step,
        validate_volumes=validation(config, device, rank, world) if validation else None)
    if tracker is not None:
        tracker.log_artifact(run_dir / "config.yaml")
        if (run_dir / "best" / CHECKPOINT_FILE).exists():
            tracker.log_artifact(run_dir / "best" / CHECKPOINT_FILE, "best")
            tracker.log_artifact(run_dir / "best" / "metrics.json", "best")
        tracker.finish("FINISHED" if trainer.finished else "KILLED")


def store_fingerprint(store: Path) -> str:
    return str(VertStore(store).manifest.get("fingerprint", ""))
