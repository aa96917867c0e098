"""The one exception a reader raises for a bad case, so preprocessing can record it and carry on with the rest."""

from __future__ import annotations

from pathlib import Path


class CaseError(Exception):
    """A case that cannot be used: names the offending file and what is wrong with it."""

    def __init__(self, file: Path | str | None, problem: str) -> None:
        self.file = Path(file) if file is not None else None
        self.problem = problem
        super().__init__(f"{self.file}: {problem}" if self.file is not None else problem)

    def __reduce__(self):  # picklable across Ray workers with both fields intact
        return (type(self), (self.file, self.problem))
