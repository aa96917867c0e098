"""What `vertseg predict` runs on: NIfTI / NRRD / MetaImage files, DICOM series folders or `.zip` archives of them,
dataset folders, or the cases of a Zarr store.

A job is cheap to build and picklable (Ray ships it to workers); `load_job` reads the scan and puts it on the
store frame, the same frame the network was trained on.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vertseg.data.case_ids import check_case_id
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
    renamed_from: str | None = None  # another input already had this name: the case was given a suffix

    def __post_init__(self) -> None:
        check_case_id(self.case_id, self.origin)

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

    @property
    def original_hu(self) -> np.ndarray | None:
        """The input's HU on its own grid (z, y, x; a view, no copy); None for a store case, which keeps only the
        resampled store frame."""
        return None if self.job.store is not None else sitk.GetArrayViewFromImage(self.reference)


def is_store(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


def unpack_zip(archive: Path, unpack_dir: Path) -> Path:
    """Extract a `.zip` (e.g. a DICOM series exported from a PACS) into a fresh folder `unpack_dir/<stem>`. The stem
    is checked as a case id first (`...zip` has stem `..`, which named the output folder itself) and every member
    before anything is written; a folder left by an earlier run is replaced, never merged into."""
    check_case_id(archive.stem, archive)
    target = Path(unpack_dir) / archive.stem
    try:
        with zipfile.ZipFile(archive) as bundle:
            root = target.resolve()
            if not root.is_relative_to(Path(unpack_dir).resolve()):
                raise ValueError(f"{archive}: would unpack outside {unpack_dir}")
            for member in bundle.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise ValueError(f"{archive}: member {member!r} would be written outside {target}")
            if target.exists():
                shutil.rmtree(target)
            bundle.extractall(target)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive}: not a readable zip archive ({error})") from None
    return target


def collect_jobs(inputs: list[Path], split: str | None = None, unpack_dir: Path | None = None,
                 allow_irregular: bool = False) -> list[PredictJob]:
    """Every case under `inputs` (a store contributes its cases, optionally one split). Case ids are made unique.

    A `.zip` input is extracted to `unpack_dir/<zip stem>` first; its case is named after the zip (`<stem>_<case>`
    when it holds several).
    `allow_irregular`: DICOM series with uneven slice positions are resampled instead of refused."""
    jobs: list[PredictJob] = []
    for path in inputs:
        path = Path(path)
        if is_zip(path):
            if unpack_dir is None:
                raise ValueError(f"{path}: a zip input needs a folder to unpack into")
            found = [s for s in discover_cases([unpack_zip(path, unpack_dir)], allow_irregular=allow_irregular) if s.image]
            jobs += [PredictJob(path.stem if len(found) == 1 else f"{path.stem}_{s.case_id}", source=s) for s in found]
            continue
        if is_store(path):
            store = VertStore(path)
            jobs += [PredictJob(case_id, store=path) for case_id in store.cases(split)]
            continue
        sources = discover_cases([path], allow_irregular=allow_irregular)
        jobs += [PredictJob(s.case_id, source=s) for s in sources if s.image is not None]
    seen: dict[str, int] = {}
    unique = []
    for job in jobs:
        count = seen.get(job.case_id, 0)
        seen[job.case_id] = count + 1
        unique.append(job if count == 0 else PredictJob(f"{job.case_id}_{count + 1}", job.source, job.store,
                                                        renamed_from=job.case_id))
    return unique


OTHER_IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # read as single-file inputs, not inside folders


def unread_images(inputs: list[Path]) -> list[Path]:
    """NRRD / MetaImage files inside folder inputs: folders are searched for NIfTI and DICOM only, so these would be
    skipped without a word; the CLI names them."""
    found = []
    for path in map(Path, inputs):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(OTHER_IMAGE_SUFFIXES))
    return found


def scan_from_image(job: PredictJob, image: sitk.Image, spacing_mm: float, hu_window: tuple[float, float],
                    nifti: Path | None = None) -> LoadedScan:
    """A SimpleITK CT image (HU) resampled (trilinear, section 2.2) onto the store frame at `spacing_mm`."""
    geometry = case_geometry(image, spacing_mm)
    hu = resample_to_grid(sitk.Cast(image, sitk.sitkFloat32), geometry.canonical, "linear", HU_BACKGROUND)
    return LoadedScan(job, hu, normalize_hu(hu, hu_window), geometry, image, nifti)


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
    image = read_image(job.source.image, job.source.series_uid, job.source.allow_irregular)
    path = Path(job.source.image)
    nifti = path if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")) else None
    return scan_from_image(job, image, spacing_mm, hu_window, nifti)
