"""Write phantoms in the real on-disk layouts the readers understand, and the dataset-level plan (ids, splits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vertseg.data.readers.centroids import write_centroids_json
from vertseg.data.synth.scan import Phantom
from vertseg.io import atomic_path

LAYOUTS = ("verse20", "verse19", "verse-legacy", "ctspine1k", "nifti")
SPLIT_FOLDERS = {
    "verse20": {"training": "dataset-01training", "validation": "dataset-02validation", "test": "dataset-03test"},
    "verse19": {
        "training": "dataset-verse19training", "validation": "dataset-verse19validation", "test": "dataset-verse19test",
    },
    "verse-legacy": {"training": "verse19training", "validation": "verse19validation", "test": "verse19test"},
    "nifti": {"training": "Tr", "validation": "Va", "test": "Ts"},
}
CTSPINE1K_SOURCES = (("1.3.6.1.4.1.9328", "COLONOG"), ("HN_", "HNSCC-3DCT-RT"), ("liver_", "MSD-T10"),
                     ("volume-covid19", "COVID-19"))


@dataclass(frozen=True)
class PlannedCase:
    index: int  # seeds the case: default_rng([seed, index])
    case_id: str
    patient_id: str
    split: str
    labeled: bool


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, sform_only: bool = False) -> None:
    """Atomic NIfTI write; `sform_only` mimics real VerSe files (qform_code 0, geometry in the sform)."""
    import nibabel as nib

    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=2 if sform_only else 1)
    image.set_qform(affine, code=0 if sform_only else 1)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def _ctspine1k_folder(name: str) -> str:
    return next((folder for prefix, folder in CTSPINE1K_SOURCES if name.startswith(prefix)), "OTHER")


def write_case(out: Path, layout: str, case: PlannedCase, phantom: Phantom, rng: np.random.Generator) -> Path:
    """Write one phantom; returns the image path."""
    float_mask = rng.random() < 0.25  # real VerSe masks are sometimes float64 with only an sform
    if layout in ("verse20", "verse19"):
        root = out / SPLIT_FOLDERS[layout][case.split]
        subject = case.case_id.split("_")[0]
        image = root / "rawdata" / subject / f"{case.case_id}_ct.nii.gz"
        mask = root / "derivatives" / subject / f"{case.case_id}_seg-vert_msk.nii.gz"
        kind = "subreg" if layout == "verse20" else "vb"  # both centroid names occur in the releases
        ctd = root / "derivatives" / subject / f"{case.case_id}_seg-{kind}_ctd.json"
    elif layout == "verse-legacy":
        root = out / SPLIT_FOLDERS[layout][case.split]
        image, mask, ctd = (root / f"{case.case_id}.nii.gz", root / f"{case.case_id}_seg.nii.gz",
                            root / f"{case.case_id}_ctd.json")
    elif layout == "ctspine1k":
        folder = _ctspine1k_folder(case.case_id)
        image = out / "rawdata" / "volumes" / folder / f"{case.case_id}.nii.gz"
        mask, ctd = out / "rawdata" / "labels" / folder / f"{case.case_id}_seg.nii.gz", None
    elif layout == "nifti":
        suffix = SPLIT_FOLDERS[layout][case.split]
        image = out / f"images{suffix}" / f"{case.case_id}_0000.nii.gz"
        mask = out / f"labels{suffix}" / f"{case.case_id}.nii.gz"
        ctd = out / f"labels{suffix}" / f"{case.case_id}_ctd.json"
    else:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    save_nifti(image, phantom.hu, phantom.affine, sform_only=float_mask and layout.startswith("verse"))
    if case.labeled:
        # CTSpine1K annotates vertebrae cut by the field of view; VerSe-style sets do not.
        labels = phantom.labels if layout == "ctspine1k" else phantom.labels_without_partial()
        if float_mask and layout.startswith("verse"):
            save_nifti(mask, labels.astype(np.float64), phantom.affine, sform_only=True)
        else:
            save_nifti(mask, labels, phantom.affine)
        if ctd is not None:
            write_centroids_json(ctd, {k: tuple(v) for k, v in phantom.centroids_voxel.items()}, phantom.axcodes)
    return image


def plan_cases(
    layout: str, n_cases: int, seed: int, labeled_fraction: float, splits: dict[str, float], multi_scan_rate: float,
    first_id: int,
) -> list[PlannedCase]:
    """Ids, patients and splits: whole patients go to one split; only training scans may be unlabeled."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if n_cases < 1:
        raise ValueError("n_cases must be at least 1")
    if not 0.0 <= labeled_fraction <= 1.0:
        raise ValueError("labeled_fraction must lie in [0, 1]")
    rng = np.random.default_rng([seed, 0x5EED])
    multi = layout in ("verse20", "verse19") and multi_scan_rate > 0
    patients: list[int] = []  # number of scans per patient
    while sum(patients) < n_cases:
        two = multi and n_cases - sum(patients) >= 2 and rng.random() < multi_scan_rate
        patients.append(2 if two else 1)
    order = rng.permutation(len(patients))
    names = list(splits)
    weights = np.array([max(splits[s], 0.0) for s in names], dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("split fractions must sum to a positive number")
    bounds = np.cumsum(weights / weights.sum()) * len(patients)
    split_of = {int(p): names[min(int(np.searchsorted(bounds, rank, side="right")), len(names) - 1)]
                for rank, p in enumerate(order)}
    ctspine_names = _ctspine1k_names(seed) if layout == "ctspine1k" else None
    cases, index = [], 0
    for p, n_scans in enumerate(patients):
        split = split_of[p]
        if layout == "ctspine1k":
            split = "test" if split == "test" else "training"  # CTSpine1K ships no validation split
        for scan in range(n_scans):
            labeled = split != "training" or bool(rng.random() < labeled_fraction)
            case_id, patient = _names(layout, first_id + p, scan if n_scans > 1 else None, index, ctspine_names, split)
            cases.append(PlannedCase(index, case_id, patient, split, labeled))
            index += 1
    return cases


def _ctspine1k_names(seed: int) -> dict[str, list[str]]:
    """Official volume names per split, shuffled by seed, so the official split file applies to phantoms."""
    from vertseg.data.readers.ctspine1k import official_splits

    rng = np.random.default_rng([seed, 0xC75])
    by_split: dict[str, list[str]] = {"training": [], "test": []}
    for name, split in official_splits().items():
        by_split[split].append(name)
    return {split: [names[i] for i in rng.permutation(len(names))] for split, names in by_split.items()}


def _names(layout, patient_number, scan, index, ctspine_names, split) -> tuple[str, str]:
    if layout == "ctspine1k":
        name = ctspine_names[split].pop()
        return name, name
    if layout == "nifti":
        return f"case_{patient_number:03d}" + (f"_{scan}" if scan is not None else ""), f"case_{patient_number:03d}"
    if layout == "verse-legacy":
        return f"verse{patient_number:03d}", f"verse{patient_number:03d}"
    subject = f"sub-verse{patient_number:03d}"
    if scan is not None:
        return f"{subject}_split-verse{patient_number:03d}{'abcdefgh'[scan]}", subject.removeprefix("sub-")
    return subject, subject.removeprefix("sub-")
