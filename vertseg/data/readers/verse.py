"""VerSe 2019/2020: the subject-based release and the older challenge naming.

Subject-based: `dataset-*/rawdata/sub-X/sub-X[_dir-ax][_split-verseNNN]_ct.nii.gz`, masks and centroids under
`derivatives/sub-X/` as `<scan>_seg-vert_msk.nii.gz` and `<scan>_seg-subreg_ctd.json` (or `_seg-vb_ctd.json`).
Old naming: `verse004.nii.gz`, `verse004_seg.nii.gz`, `verse004_ctd.json`. The scan key is everything before the
suffix, files are matched on it anywhere below the root, so flat folders and mask-only samples work too.
"""

from __future__ import annotations

import re
from pathlib import Path

from vertseg.data.readers.files import nifti_stem, walk_files
from vertseg.data.readers.splits import split_from_path
from vertseg.data.types import CaseSource

_SUBJECT_IMAGE = re.compile(r"^(?P<scan>sub-[^_]+(?:_[a-z]+-[^_]+)*)_ct$")
_SUBJECT_MASK = re.compile(r"^(?P<scan>sub-[^_]+(?:_[a-z]+-[^_]+)*?)_seg-vert_msk$")
_SUBJECT_CTD = re.compile(r"^(?P<scan>sub-[^_]+(?:_[a-z]+-[^_]+)*?)_seg-(?:subreg|vb)_ctd\.json$")
_OLD_IMAGE = re.compile(r"^(?P<scan>verse\d+[a-z]?)$", re.IGNORECASE)
_OLD_MASK = re.compile(r"^(?P<scan>verse\d+[a-z]?)_seg$", re.IGNORECASE)
_OLD_CTD = re.compile(r"^(?P<scan>verse\d+[a-z]?)_ctd\.json$", re.IGNORECASE)


def entities(scan: str) -> dict[str, str]:
    """BIDS-like entities of a subject-based scan key: {'sub': 'gl003', 'dir': 'ax', 'split': 'verse290'}."""
    return dict(part.split("-", 1) for part in scan.split("_") if "-" in part)


def looks_like_verse(root: Path, files: list[Path]) -> bool:
    names = [nifti_stem(f) if not f.name.endswith(".json") else f.name for f in files]
    return any(
        p.match(n) for n in names for p in (_SUBJECT_IMAGE, _SUBJECT_MASK, _SUBJECT_CTD, _OLD_IMAGE, _OLD_MASK)
    )


def dataset_name(root: Path, path: Path) -> str:
    """'verse19' / 'verse20' from folder names (`dataset-verse19training`, `dataset-01training` is 2020)."""
    text = "/".join((root.name,) + path.relative_to(root).parts).lower() if path != root else root.name.lower()
    if "verse19" in text or "verse2019" in text:
        return "verse19"
    if "verse20" in text or "verse2020" in text or re.search(r"dataset-0\d", text):
        return "verse20"
    return "verse"


def _group_of(path: Path) -> Path:
    """The release folder a file belongs to: above `sub-*` and `rawdata`/`derivatives`, else its own folder."""
    folder = path.parent
    if folder.name.startswith("sub-"):
        folder = folder.parent
    if folder.name in ("rawdata", "derivatives"):
        folder = folder.parent
    return folder


def discover_verse(root: Path, dataset: str | None = None) -> list[CaseSource]:
    """Cases keyed by (release folder, scan key), so one root may hold VerSe'19 and '20 with shared ids."""
    files = walk_files(root) if root.is_dir() else [root]
    tables: dict[str, dict[tuple[Path, str], Path]] = {"image": {}, "mask": {}, "ctd": {}}
    patterns = (
        (_SUBJECT_IMAGE, "image"), (_SUBJECT_MASK, "mask"), (_SUBJECT_CTD, "ctd"),
        (_OLD_IMAGE, "image"), (_OLD_MASK, "mask"), (_OLD_CTD, "ctd"),
    )
    for path in files:
        is_json = path.name.endswith(".json")
        stem = path.name if is_json else nifti_stem(path)
        for pattern, kind in patterns:
            match = pattern.match(stem)
            if match and is_json == (kind == "ctd"):
                key = (_group_of(path), match["scan"])
                if key in tables[kind]:
                    raise ValueError(f"{path}: scan {key[1]} also found at {tables[kind][key]}")
                tables[kind][key] = path
                break
    images, masks, ctds = tables["image"], tables["mask"], tables["ctd"]
    sources = []
    for key in sorted(set(images) | set(masks)):
        anchor = images.get(key) or masks[key]
        scan = key[1]
        in_folder = root.is_dir()
        sources.append(
            CaseSource(
                case_id=scan,
                patient_id=entities(scan).get("sub", scan).lower(),
                dataset=dataset or (dataset_name(root, anchor.parent) if in_folder else "verse"),
                split=split_from_path(anchor, root) if in_folder else "",
                image=images.get(key),
                mask=masks.get(key),
                centroids=ctds.get(key),
                label_format="verse",
            )
        )
    return sources
