"""What `vertseg predict` runs on: NIfTI files, DICOM series folders, dataset folders, or the cases of a Zarr store.

A job is cheap to build and picklable (Ray ships it to workers); `load_job` reads the scan and puts it on the
store frame, the same frame the network was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vertseg.data.geometry import HU_BACKGROUND, CaseGeometry, case_geometry, resample_to_grid
from vertseg.data.readers import discover_cases
from vertseg.data.readers.load import read_image
from vertseg.data.store import MANIFEST, VertStore, normalize_hu
from vertseg.data.types import CaseSource


@dataclass(frozen=True)
class PredictJob:
    """One scan to predict: `source` (an image on disk) or `store` + `case_id` (a preprocessed case)."""

    case_id: str
    source: CaseSource | None = None
    store: Path | None = None

    @property
    def origin(self) -> str:
        return str(self.source.image) if self.source is not None else f"{self.store}#{self.case_id}"


@dataclass
class LoadedScan:
    """A scan on the store frame: HU and [0, 1] arrays (z, y, x), its geometry, and the original image grid."""

    job: PredictJob
    hu: np.ndarray
    image: np.ndarray
    geometry: CaseGeometry
    reference: sitk.Image  # carries the original grid (and for file inputs, the original pixels)
    nifti_source: Path | None


def is_store(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def collect_jobs(inputs: list[Path], split: str | None = None) -> list[PredictJob]:
    """Every case under `inputs` (a store contributes its cases, optionally one split). Case ids are made unique."""
    jobs: list[PredictJob] = []
    for path in inputs:
        path = Path(path)
        if is_store(path):
            store = VertStore(path)
            jobs += [PredictJob(case_id, store=path) for case_id in store.cases(split)]
            continue
        jobs += [PredictJob(s.case_id, source=s) for s in discover_cases([path]) if s.image is not None]
    seen: dict[str, int] = {}
    unique = []
    for job in jobs:
        count = seen.get(job.case_id, 0)
        seen[job.case_id] = count + 1
        unique.append(job if count == 0 else PredictJob(f"{job.case_id}_{count + 1}", job.source, job.store))
    return unique


def load_job(job: PredictJob, spacing_mm: float, hu_window: tuple[float, float]) -> LoadedScan:
    """Read a job's scan and resample it (trilinear, section 2.2) onto the store frame at `spacing_mm`."""
    if job.store is not None:
        store = VertStore(job.store, hu_window)
        stored_spacing = float(store.settings["spacing_mm"])
        if abs(stored_spacing - spacing_mm) > 1e-6:
            raise ValueError(f"store {job.store} is at {stored_spacing} mm but the model expects {spacing_mm} mm")
        geometry = store.geometry(job.case_id)
        hu = store.read_hu(job.case_id).astype(np.float32)
        return LoadedScan(job, hu, normalize_hu(hu, hu_window), geometry, geometry.original.reference_image(), None)
    image = read_image(job.source.image, job.source.series_uid)
    geometry = case_geometry(image, spacing_mm)
    hu = resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), geometry.canonical, "linear", HU_BACKGROUND)
    path = Path(job.source.image)
    nifti = path if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")) else None
    return LoadedScan(job, hu, normalize_hu(hu, hu_window), geometry, image, nifti)
