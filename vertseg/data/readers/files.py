"""File-name helpers shared by the layout readers."""

from __future__ import annotations

from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # single-file volumes SimpleITK reads (NRRD, MetaImage)


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def is_itk_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ITK_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """File name without .nii / .nii.gz (or a NRRD / MetaImage suffix)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def walk_files(root: Path) -> list[Path]:
    """All regular files below root, sorted, skipping hidden files and folders (temp files of atomic writes)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 file: 'DICM' at byte 128."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
