"""A per-case bar over the sliding windows, shown inside the batch's Rich progress display on a terminal only.

A 512^3 CT on a laptop CPU spends tens of seconds in the sliding window; the bar says the case is moving. It is
removed when the case ends (the per-batch bar over cases stays), and does nothing when the console is a pipe or a
log file, where a line per case is all that should be written.
"""

from __future__ import annotations

from typing import Any


class CaseWindows:
    """`update(done, total)` is a `WindowProgress` callback; `finish()` removes the bar of the case that ended."""

    def __init__(self, progress: Any, description: str = "  windows") -> None:
        self.progress = progress
        self.description = description
        self.enabled = bool(progress.console.is_terminal)
        self._task: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._task is None:
            self._task = self.progress.add_task(self.description, total=total)
        self.progress.update(self._task, completed=done, total=total)

    def finish(self) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None
