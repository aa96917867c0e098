"""CTSpine1K: volumes `<name>.nii.gz` with labels `<name>_seg.nii.gz` (any sub-folders, e.g. `rawdata/volumes/
COLONOG/...` and `rawdata/labels/COLONOG/...`); the split comes from the official `data_split.txt`."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from vertseg.data.readers.files import is_nifti, nifti_stem, walk_files
from vertseg.data.types import CaseSource

_SECTIONS = {"trainset": "training", "test_public": "test", "test_private": "test"}


def parse_split_file(text: str) -> dict[str, str]:
    """Official split file -> {volume stem: split}. Sections `trainset:`, `test_public:`, `test_private:`."""
    splits: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.endswith(":"):
            name = line[:-1].strip().lower()
            if name not in _SECTIONS:
                raise ValueError(f"unknown CTSpine1K split section {line!r}")
            section = _SECTIONS[name]
            continue
        if section is None:
            raise ValueError(f"CTSpine1K split file: {line!r} comes before any section header")
        splits[nifti_stem(Path(line))] = section
    return splits


@lru_cache(maxsize=1)
def official_splits() -> dict[str, str]:
    text = resources.files("vertseg.resources").joinpath("ctspine1k_data_split.txt").read_text()
    return parse_split_file(text)


def _label_stems(stem: str) -> tuple[str, ...]:
    """Label names used for one volume: `X_seg`, and for COVID volumes `...-0073_ct` also `...-0073_seg`."""
    alternatives = [f"{stem}_seg"]
    if stem.endswith("_ct"):
        alternatives.append(stem[:-3] + "_seg")
    return tuple(alternatives)


def looks_like_ctspine1k(root: Path, files: list[Path]) -> bool:
    if "ctspine1k" in root.name.lower():
        return True
    known = official_splits()
    return any(is_nifti(f) and nifti_stem(f) in known for f in files)


def discover_ctspine1k(root: Path, dataset: str | None = None, split_file: Path | None = None) -> list[CaseSource]:
    splits = parse_split_file(split_file.read_text()) if split_file else official_splits()
    niftis = [f for f in (walk_files(root) if root.is_dir() else [root]) if is_nifti(f)]
    by_stem: dict[str, Path] = {}
    for path in niftis:
        stem = nifti_stem(path)
        if stem in by_stem:
            raise ValueError(f"{path}: CTSpine1K volume {stem} also found at {by_stem[stem]}")
        by_stem[stem] = path
    label_stems = {alt for stem in by_stem for alt in _label_stems(stem) if alt in by_stem}
    sources = []
    for stem, path in sorted(by_stem.items()):
        if stem in label_stems or stem.endswith("_seg"):
            continue
        mask = next((by_stem[alt] for alt in _label_stems(stem) if alt in by_stem), None)
        sources.append(
            CaseSource(
                case_id=stem,
                patient_id=stem,
                dataset=dataset or "ctspine1k",
                split=splits.get(stem, ""),
                image=path,
                mask=mask,
                label_format="ctspine1k",
            )
        )
    return sources
