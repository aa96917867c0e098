"""Case ids name folders and files (`STORE.zarr/cases/<id>/`, `<out>/<id>/<id>_seg.nii.gz`), and they come from
file names and manifests that anyone can write: a scan called `...nii.gz` has the id `..`, a manifest may say
`../cases/x`. Every id is checked here, where it is made or read, before it names anything on disk."""

from __future__ import annotations

from pathlib import Path


class CaseIdError(ValueError):
    """A case id that cannot name a folder safely; the message says where the id came from."""


def case_id_problem(case_id: object) -> str | None:
    """None for an id usable as one path component, else what is wrong with it."""
    if not isinstance(case_id, str):
        return f"is a {type(case_id).__name__}, not a string"
    if not case_id.strip():
        return "is empty"
    if "/" in case_id or "\\" in case_id:
        return "contains a path separator"
    if case_id.startswith("."):
        return "starts with a dot ('..' climbs out of the output folder, '.x' is hidden)"
    if any(ord(c) < 32 or ord(c) == 127 for c in case_id):
        return "contains control characters"
    return None


def check_case_id(case_id: object, origin: Path | str | None = None) -> str:
    """The id unchanged when it is safe; CaseIdError naming `origin` (the file or manifest it came from) if not."""
    problem = case_id_problem(case_id)
    if problem is None:
        return case_id  # type: ignore[return-value]
    where = f"{origin}: " if origin is not None else ""
    raise CaseIdError(f"{where}case id {case_id!r} {problem}; rename the file or folder it comes from")
