"""Dataset readers: find cases on disk (`discover_cases`), load one (`load_case`), guard pools (`check_pool_overlap`).

Layouts are detected per path: VerSe 2019/2020 (subject-based or old challenge naming), CTSpine1K, TotalSegmentator's
release (`<case>/ct.nii.gz` + `segmentations/`), a generic NIfTI folder, DICOM series folders, or single image files
(NIfTI, NRRD, MetaImage). `dataset` forces a layout when it names one (`verse19`, `verse20`, `verse`, `ctspine1k`,
`totalseg`, `nifti`, `dicom`) and otherwise just names the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vertseg.data.errors import CaseError
from vertseg.data.readers.centroids import read_centroids_json, write_centroids_json
from vertseg.data.readers.ctspine1k import discover_ctspine1k, looks_like_ctspine1k
from vertseg.data.readers.files import is_dicom, is_itk_volume, is_nifti, walk_files
from vertseg.data.readers.generic import discover_dicom, discover_nifti_folder, discover_single_nifti
from vertseg.data.readers.load import load_case, mask_centres_lps
from vertseg.data.readers.overlap import OverlapError, OverlapReport, check_pool_overlap
from vertseg.data.readers.splits import split_by_patient
from vertseg.data.readers.totalseg import discover_totalseg, totalseg_case_folders
from vertseg.data.readers.verse import discover_verse, looks_like_verse
from vertseg.data.types import Case, CaseSource
from vertseg.labels import LABEL_FORMAT_CHOICES

LAYOUTS = ("verse", "ctspine1k", "totalseg", "nifti", "dicom", "single")
_FORCED = {"verse": "verse", "verse19": "verse", "verse20": "verse", "ctspine1k": "ctspine1k", "nifti": "nifti",
           "dicom": "dicom", "totalseg": "totalseg"}

__all__ = [
    "Case", "CaseError", "CaseSource", "OverlapError", "OverlapReport", "check_pool_overlap", "detect_layout",
    "discover_cases", "load_case", "mask_centres_lps", "read_centroids_json", "split_by_patient",
    "write_centroids_json",
]


def detect_layout(path: Path) -> str:
    """Which reader understands `path` (one of LAYOUTS); ValueError when none does."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_file():
        if is_nifti(path) or is_itk_volume(path):
            return "single"
        if is_dicom(path):
            return "dicom"
        raise ValueError(f"{path}: not a NIfTI, NRRD, MetaImage or DICOM file")
    files = walk_files(path)
    if looks_like_verse(path, files):
        return "verse"
    if looks_like_ctspine1k(path, files):
        return "ctspine1k"
    if totalseg_case_folders(files):
        return "totalseg"
    if any(is_nifti(f) for f in files):
        return "nifti"
    if any(is_dicom(f) for f in files[:2000]):
        return "dicom"
    raise ValueError(f"{path}: no NIfTI or DICOM files found")


def discover_cases(
    paths: Sequence[Path | str], dataset: str | None = None, label_format: str | None = None,
    allow_irregular: bool = False,
) -> list[CaseSource]:
    """All cases under `paths`, in a stable order. Reads file names (and DICOM headers) only.

    `allow_irregular` marks DICOM series to be resampled, not refused, when their slice positions are uneven.
    """
    if label_format is not None and label_format not in LABEL_FORMAT_CHOICES:
        raise ValueError(f"unknown label format {label_format!r} (known: {', '.join(LABEL_FORMAT_CHOICES)})")
    sources: list[CaseSource] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        layout = _FORCED.get((dataset or "").lower()) or detect_layout(path)
        if layout == "single" and not path.is_file():
            raise ValueError(f"{path}: expected a single NIfTI file")
        name = dataset if dataset and dataset.lower() not in ("nifti", "dicom", "verse") else None
        if layout == "verse":
            found = discover_verse(path, name)
        elif layout == "ctspine1k":
            found = discover_ctspine1k(path, name)
        elif layout == "totalseg":
            found = discover_totalseg(path, name)
        elif layout == "dicom":
            found = discover_dicom(path, name)
        elif layout == "single" or path.is_file():
            found = discover_single_nifti(path, name)
        else:
            found = discover_nifti_folder(path, name, label_format or "verse")
        if label_format is not None:
            found = [replace(s, label_format=label_format) if s.mask is not None else s for s in found]
        if allow_irregular:
            found = [replace(s, allow_irregular=True) for s in found]
        if not found:
            raise ValueError(f"{path}: no cases found for layout {layout!r}")
        sources.extend(found)
    return sources
