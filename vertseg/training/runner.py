"""Single-process training (`vertseg train --cpu-workers 0`): no Ray, checkpoints and metrics in the run folder.

Layout of `RUN_DIR`: `config.yaml`, `metrics.jsonl` (one line per epoch), `checkpoints/latest.pt` (every epoch and
on SIGTERM), `best/checkpoint.pt` + `best/metrics.json` (best validation score), as in a Ray run.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vertseg.config import VertsegConfig, dump_config
from vertseg.io import atomic_write_json, atomic_write_text
from vertseg.training.checkpoint import load_checkpoint, save_checkpoint
from vertseg.training.data import build_training_data
from vertseg.training.loop import EpochResult, VolumeValidation, fit
from vertseg.training.methods import get_method
from vertseg.training.progress import EpochProgress, StepReporter
from vertseg.training.trainer import Trainer, is_better


class StopFlag:
    """Set by SIGTERM/SIGINT (Slurm preemption, scancel, Ctrl-C): the run checkpoints and exits cleanly. A second
    Ctrl-C (say, during a long validation) raises KeyboardInterrupt at once; the last checkpoint is kept."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.event.is_set()

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, sig: int, _frame: Any) -> None:
        self.event.set()
        if sig == signal.SIGINT:
            signal.signal(sig, self._previous[sig])

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_local(
    config: VertsegConfig,
    store: Path,
    unlabeled: Path | None,
    run_dir: Path,
    resume: bool = False,
    init_from: Path | None = None,
    volume_validation: VolumeValidation | None = None,
    device: torch.device | None = None,
    loader_workers: int = 0,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochResult, dict[str, Any]], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train in this process (from `init_from`'s weights when given and not resuming); returns
    {"best": metrics, "best_checkpoint": path, "epochs": completed}. `on_step(step, logs)` is called at the steps
    `StepReporter` picks (a bounded rate), for step-level tracking."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    latest, best_path = ckpt_dir / "latest.pt", run_dir / "best" / "checkpoint.pt"  # best/ as in Ray runs
    device = device or default_device()
    data = build_training_data(
        config, store, unlabeled, loader_workers=loader_workers, uses_unlabeled=get_method(config.train.method).uses_unlabeled
    )
    trainer = Trainer(config, device, class_counts=data.class_counts)
    best: dict[str, float] | None = None
    history: list[dict[str, Any]] = []
    if resume:
        if not latest.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {latest}")
        state = load_checkpoint(latest, device)
        trainer.load_state_dict(state)
        best = state.get("best_metrics")
        log(f"resumed {run_dir.name} at epoch {trainer.epoch} (step {trainer.step})")
    elif init_from is not None:
        log(trainer.initialise_from(init_from).summary())
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists() and resume:
        history = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    atomic_write_text(run_dir / "config.yaml", dump_config(config))

    def on_epoch_end(result: EpochResult) -> None:
        nonlocal best
        is_best = result.validated and is_better(result.metrics, best)
        if is_best:
            best = {**result.metrics, "epoch": result.epoch}
        state = {**trainer.state_dict(), "best_metrics": best}
        save_checkpoint(latest, state)
        if is_best:
            save_checkpoint(best_path, state)
            atomic_write_json(best_path.parent / "metrics.json", best)
        history.append({"epoch": result.epoch, "interrupted": result.interrupted, **result.metrics})
        atomic_write_text(metrics_file, "".join(json.dumps(h) + "\n" for h in history))
        log(epoch_line(result, trainer.train_cfg.schedule.epochs, is_best))
        if on_epoch is not None:
            on_epoch(result, {"latest": latest, "best": best_path if best is not None else None})

    schedule = trainer.train_cfg.schedule
    progress = EpochProgress(schedule.epochs, schedule.iterations_per_epoch)
    reporter = StepReporter(schedule.epochs, schedule.iterations_per_epoch, trainer.train_cfg.log_every_steps,
                            trainer.step)

    def step_hook(logs: dict[str, float]) -> None:
        progress.step(trainer.epoch, trainer.iteration, logs)
        line = reporter.report(trainer.epoch, trainer.iteration, trainer.step, logs)
        if line is None:
            return
        if not progress.enabled:  # on a terminal the bar shows the same
            log(line)
        if on_step is not None:
            on_step(trainer.step, logs)

    stop = StopFlag().install()
    try:
        with progress:
            fit(trainer, data, on_epoch_end, should_stop=stop, on_step=step_hook,
                validate_volumes=volume_validation(config, device, 0, 1) if volume_validation else None)
    finally:
        stop.uninstall()
    return {"best": best, "best_checkpoint": best_path if best_path.exists() else latest, "epochs": trainer.epoch,
            "interrupted": stop(), "last": history[-1] if history else None}


def epoch_line(result: EpochResult, epochs: int, is_best: bool) -> str:
    """The one line per epoch the issue asks for."""
    m = result.metrics
    parts = [f"epoch {result.epoch}/{epochs}", f"loss {m.get('loss', float('nan')):.4f}", f"lr {m.get('lr', 0):.2e}",
             f"lambda {m.get('lambda_cons', 0):.3f}"]
    if "pass_seg" in m:
        parts.append(f"pass seg/cls {m['pass_seg']:.2f}/{m.get('pass_cls', 0):.2f}")
    if result.validated:
        parts.append(f"val dice {m['val_dice']:.3f}" + (f" id {m['val_id_acc']:.3f}" if "val_id_acc" in m else ""))
        if "val_volume_dice" in m:
            parts.append(f"volumes dice {m['val_volume_dice']:.3f} acc_id {m['val_volume_id_acc']:.3f} "
                         f"id_rate {m['val_volume_id_rate']:.3f}")
    parts.append(f"{m.get('samples_per_s', 0):.1f} samples/s")
    if is_best:
        parts.append("*best*")
    if result.interrupted:
        parts.append("(interrupted, checkpoint saved)")
    return " | ".join(parts)
