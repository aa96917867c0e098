"""Leakage guard across pools: the same patient or scan in two pools (VerSe'20 re-uses VerSe'19 scans).

Sources are linked when they share a patient key, a scan key (VerSe ids, incl. `split-verseNNN` entities) or,
optionally, an image fingerprint. Inside a linked group only the highest-priority pool survives
(test > validation > labeled > unlabeled), so a test patient never reaches training; repeated copies of one scan
in the surviving pool are reduced to one (labeled preferred).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vertseg.data.types import CaseSource

POOL_PRIORITY = ("test", "validation", "labeled", "unlabeled")
VERSE_FAMILY = ("verse", "verse19", "verse20")


class OverlapError(ValueError):
    """Raised by `check_pool_overlap(..., policy="refuse")` when pools share a patient or scan."""

    def __init__(self, report: "OverlapReport") -> None:
        self.report = report
        super().__init__(report.summary())


@dataclass
class OverlapReport:
    kept: list[CaseSource]
    dropped: list[tuple[CaseSource, str]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # one line per group spanning several pools

    @property
    def clean(self) -> bool:
        return not self.dropped and not self.conflicts

    def summary(self) -> str:
        if self.clean:
            return f"no overlap among {len(self.kept)} cases"
        lines = [f"{len(self.conflicts)} patient/scan groups span several pools; dropped {len(self.dropped)} cases:"]
        lines += [f"  {c}" for c in self.conflicts]
        lines += [f"  - {s.dataset}/{s.case_id} ({pool_of(s)}): {why}" for s, why in self.dropped]
        return "\n".join(lines)


def pool_of(source: CaseSource) -> str:
    if source.split in ("test", "validation"):
        return source.split
    return "labeled" if source.labeled and source.split != "unlabeled" else "unlabeled"


def _namespace(source: CaseSource) -> str:
    name = source.dataset.lower()
    return "verse" if name in VERSE_FAMILY or name.startswith("verse") else source.dataset


def patient_key(source: CaseSource) -> str:
    return f"{_namespace(source)}:patient:{source.patient_id.lower().removeprefix('sub-')}"


def scan_keys(source: CaseSource) -> set[str]:
    """The case id without `sub-`, plus the original VerSe'19 id of a `split-verseNNN` entity."""
    space = _namespace(source)
    case = source.case_id.lower().removeprefix("sub-")
    keys = {f"{space}:scan:{case}"}
    for part in case.split("_"):
        if part.startswith("split-"):
            keys.add(f"{space}:scan:{part.removeprefix('split-')}")
    return keys


def fingerprint(path: Path | None) -> str | None:
    """Cheap content identity: size plus the first MiB and last 64 KiB (files) or names and sizes (DICOM folders)."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for member in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f"{member.name}:{member.stat().st_size};".encode())
        return "dir:" + digest.hexdigest()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > (1 << 20):
            handle.seek(max(size - (1 << 16), 1 << 20))
            digest.update(handle.read())
    return "file:" + digest.hexdigest()


def check_pool_overlap(
    sources: Sequence[CaseSource], policy: str = "dedupe", use_fingerprints: bool = False
) -> OverlapReport:
    """Find patients/scans shared by pools; `dedupe` keeps the safe subset, `refuse` raises OverlapError."""
    if policy not in ("dedupe", "refuse"):
        raise ValueError(f"policy must be 'dedupe' or 'refuse', not {policy!r}")
    sources = list(sources)
    parent = list(range(len(sources)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    scan_ids: list[set[str]] = []
    for i, source in enumerate(sources):
        keys = scan_keys(source)
        if use_fingerprints:
            keys |= {k for k in (fingerprint(source.image),) if k}
        scan_ids.append(keys)
        for key in keys | {patient_key(source)}:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(sources)):
        groups[find(i)].append(i)

    report = OverlapReport(kept=[])
    keep: set[int] = set()
    for members in groups.values():
        pools = {pool_of(sources[i]) for i in members}
        best = min(pools, key=POOL_PRIORITY.index)
        if len(pools) > 1:
            names = ", ".join(f"{sources[i].dataset}/{sources[i].case_id} ({pool_of(sources[i])})" for i in members)
            report.conflicts.append(f"patient {sources[members[0]].patient_id}: {names}")
        survivors = []
        for i in members:
            if pool_of(sources[i]) != best:
                report.dropped.append((sources[i], f"same patient/scan is in the {best} pool"))
                continue
            twin = next((j for j in survivors if scan_ids[i] & scan_ids[j]), None)
            if twin is None:
                survivors.append(i)
            elif sources[i].labeled and not sources[twin].labeled:
                survivors[survivors.index(twin)] = i
                report.dropped.append((sources[twin], f"duplicate of {sources[i].dataset}/{sources[i].case_id}"))
            else:
                report.dropped.append((sources[i], f"duplicate of {sources[twin].dataset}/{sources[twin].case_id}"))
        keep.update(survivors)
    report.kept = [s for i, s in enumerate(sources) if i in keep]
    if policy == "refuse" and report.conflicts:
        raise OverlapError(report)
    return report
