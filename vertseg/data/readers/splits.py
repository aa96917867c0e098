"""Split names from folder names, and patient-grouped splits for folders that do not name one."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from vertseg.data.types import CaseSource

SPLITS = ("training", "validation", "test", "unlabeled")
_NNUNET = {"imagestr": "training", "labelstr": "training", "imagests": "test", "labelsts": "test",
           "imagesva": "validation", "labelsva": "validation"}
_PATTERNS = (
    ("unlabeled", re.compile(r"unlabel+ed")),
    ("test", re.compile(r"test")),
    ("validation", re.compile(r"(valid|(^|[^a-z])val($|[^a-z]))")),
    ("training", re.compile(r"train")),
)


def split_of_part(part: str) -> str:
    """The split a single folder name denotes ('' when none): `dataset-01training`, `verse19test`, `imagesTs`..."""
    lowered = part.lower()
    if lowered in _NNUNET:
        return _NNUNET[lowered]
    for split, pattern in _PATTERNS:
        if pattern.search(lowered):
            return split
    return ""


def split_from_path(path: Path, root: Path) -> str:
    """Split named by the deepest folder between `root` (included) and `path` that names one."""
    try:
        parts = (root.name,) + Path(path).relative_to(root).parts[:-1]
    except ValueError:
        parts = Path(path).parts[:-1]
    for part in reversed(parts):
        split = split_of_part(part)
        if split:
            return split
    return ""


def split_by_patient(
    sources: Sequence[CaseSource], fractions: dict[str, float], seed: int = 0
) -> list[CaseSource]:
    """Give sources without a split one by hashing their patient id, so all scans of a patient land together.

    Deterministic for a seed and independent of the order and number of other cases (a hash, not a shuffle).
    """
    from dataclasses import replace

    total = sum(fractions.values())
    if total <= 0:
        raise ValueError("split fractions must sum to a positive number")
    bounds, acc = [], 0.0
    for name, fraction in fractions.items():
        acc += fraction / total
        bounds.append((acc, name))
    out = []
    for source in sources:
        if source.split:
            out.append(source)
            continue
        digest = hashlib.sha256(f"{seed}:{source.patient_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append(replace(source, split=next(name for bound, name in bounds if u < bound or bound == bounds[-1][0])))
    return out
