"""The epoch loop shared by the single-process runner and the Ray Train worker: train, validate, hand off."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from vertseg.training.data import TrainingData
from vertseg.training.trainer import Trainer, is_better


# (config, device, rank, world size) -> the validator of this rank, or None: evaluation.holdout.volume_validator
# with the store bound by the caller.
VolumeValidation = Callable[..., "Callable[[nn.Module], dict[str, float]] | None"]


@dataclass
class EpochResult:
    """What one (possibly interrupted) epoch produced; `epoch` is the number of completed epochs."""

    epoch: int
    metrics: dict[str, float]
    validated: bool
    interrupted: bool
    seconds: float


def _cycle(loader) -> Iterator[dict]:
    while True:
        yield from loader


def fit(
    trainer: Trainer,
    data: TrainingData,
    on_epoch_end: Callable[[EpochResult], None],
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    validate_volumes: Callable[[nn.Module], dict[str, float]] | None = None,
) -> None:
    """Train until the configured number of epochs (or a stop request, which ends the run after the current step).

    Each epoch starts fresh, seeded patch streams (`set_epoch`), so a resumed run sees the same data as an
    uninterrupted one; an epoch interrupted mid-way restarts its stream and runs only its remaining iterations.
    `validate_volumes` (evaluation.holdout.volume_validator) adds full-volume metrics at each validation, and
    checkpoint selection (`trainer.selection_score`) then uses them. Each validation may open the readiness gate
    (`trainer.observe_validation`); with `train.plateau_patience` the run ends after that many validations without
    a better score (a warm-up that trains until the teacher is ready).
    """
    import time

    every, patience = trainer.train_cfg.validate_every, trainer.train_cfg.plateau_patience
    best, stale = None, 0
    while not trainer.finished:
        started, first_step = time.perf_counter(), trainer.step
        data.set_epoch(trainer.epoch)
        labeled = _cycle(data.labeled)
        unlabeled = _cycle(data.unlabeled) if data.unlabeled is not None else None
        metrics = trainer.train_epoch(labeled, unlabeled, on_step=on_step, should_stop=should_stop)
        interrupted = trainer.iteration != 0 or (should_stop is not None and should_stop())
        validated = False
        if not interrupted and data.validation is not None and (trainer.epoch % every == 0 or trainer.finished):
            metrics.update(trainer.evaluate(data.validation))
            if validate_volumes is not None:
                metrics.update(trainer.validate_volumes(validate_volumes))
            validated = True
            trainer.observe_validation(metrics)
            if is_better(metrics, best):
                best, stale = metrics, 0
            else:
                stale += 1
            trainer.plateaued = bool(patience and stale >= patience)  # saved with this epoch's checkpoint
        seconds = time.perf_counter() - started
        samples = (trainer.step - first_step) * trainer.train_cfg.optim.labeled_batch_size  # stopped/resumed epochs too
        metrics["samples_per_s"] = samples / seconds if seconds > 0 else math.nan
        on_epoch_end(EpochResult(trainer.epoch, metrics, validated, interrupted, seconds))
        if interrupted:
            return
