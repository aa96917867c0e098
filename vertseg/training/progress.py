"""A transient Rich progress bar over the steps of the current epoch, on an interactive terminal only.

Logs (Slurm files, Ray workers, pipes) are not terminals: there the bar is off and the one line per epoch is all
that is written. On a terminal the bar sits below those lines and disappears when training ends.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


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
