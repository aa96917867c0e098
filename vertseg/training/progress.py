"""Training progress between the one line per epoch: a step line at a bounded rate, and a Rich bar on a terminal.

An epoch can take many minutes (250 steps of a paper-sized run on a laptop), so `StepReporter` picks the steps to
report: the first one, then every `train.log_every_steps` steps or `PROGRESS_SECONDS` of wall time, whichever comes
first. At those steps training writes a step line to its log and the step's metrics to MLflow. On an interactive
terminal the transient bar of `EpochProgress` shows the same and sits below the epoch lines; in logs (Slurm files,
Ray workers, pipes) the bar is off and the step lines are written instead.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PROGRESS_SECONDS = 20.0  # the longest wait for a step line (and step metrics) while steps are slow


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StepReporter:
    """Which steps to report, and their line: epoch, step k/total of the epoch, loss, steps/s since the last report
    (the first: since the reporter was made) and the time left in the epoch at that rate."""

    def __init__(self, epochs: int, steps_per_epoch: int, every: int, step: int = 0,
                 seconds: float = PROGRESS_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.epochs, self.steps, self.every, self.seconds, self.clock = epochs, steps_per_epoch, every, seconds, clock
        self._time, self._step, self._reported = clock(), step, False

    def report(self, epoch: int, iteration: int, step: int, logs: dict[str, float]) -> str | None:
        """After a step (`epoch` completed epochs, `iteration` steps done in the running one, `step` in all): its
        line when the step is due, else None."""
        now = self.clock()
        if self._reported and step % self.every and now - self._time < self.seconds:
            return None
        rate = (step - self._step) / (now - self._time) if now > self._time else math.nan
        self._time, self._step, self._reported = now, step, True
        left = (self.steps - iteration) / rate if rate > 0 else math.nan
        return (f"epoch {min(epoch + 1, self.epochs)}/{self.epochs} step {iteration}/{self.steps} | "
                f"loss {logs.get('loss', math.nan):.4f} | {rate:.2f} steps/s | epoch ETA {_duration(left)}")


class EpochProgress:
    """Steps of the running epoch with the current loss; `enabled=None` means "stdout is a terminal"."""

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        self.enabled = stream.isatty() if enabled is None else enabled
        self.epochs, self.steps = epochs, steps_per_epoch
        self._progress: Any = None
        self._task: Any = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"), console=Console(file=stream, force_terminal=True), transient=True,
            )

    def __enter__(self) -> "EpochProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def step(self, epoch: int, iteration: int, logs: dict[str, float]) -> None:
        """After a step: `epoch` = completed epochs, `iteration` = steps done in the running one (1-based)."""
        if self._progress is None:
            return
        description = f"epoch {min(epoch + 1, self.epochs)}/{self.epochs}"
        loss = f"loss {logs['loss']:.4f}" if "loss" in logs else ""
        if self._task is None:
            self._task = self._progress.add_task(description, total=self.steps, loss=loss)
        self._progress.update(self._task, completed=iteration, description=description, loss=loss)

    def __exit__(self, *_: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
