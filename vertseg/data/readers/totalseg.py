"""TotalSegmentator's dataset release: `<case>/ct.nii.gz` with `<case>/segmentations/<structure>.nii.gz`.

The mask of a case is its `segmentations` folder; `read_mask` combines the vertebra files by name.
"""

from __future__ import annotations

from pathlib import Path

from vertseg.data.readers.splits import split_from_path
from vertseg.data.types import CaseSource

STRUCTURES_FORMAT = "structures"  # label_format of a per-structure folder: the file names are the table


def totalseg_case_folders(files: list[Path]) -> list[Path]:
    """Folders holding `ct.nii.gz` beside a `segmentations/` folder."""
    return sorted({f.parent for f in files if f.name == "ct.nii.gz" and (f.parent / "segmentations").is_dir()})


def discover_totalseg(root: Path, dataset: str | None = None) -> list[CaseSource]:
    base = root if root.is_dir() else root.parent
    folders = totalseg_case_folders(sorted(base.rglob("ct.nii.gz")))
    return [
        CaseSource(
            case_id=folder.name if folder != base else base.name,
            patient_id=folder.name,
            dataset=dataset or "totalsegmentator",
            split=split_from_path(folder / "ct.nii.gz", base),
            image=folder / "ct.nii.gz",
            mask=folder / "segmentations",
            label_format=STRUCTURES_FORMAT,
        )
        for folder in folders
    ]
