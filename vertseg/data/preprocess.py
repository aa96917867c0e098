"""One case from source files to a store group: validate, reorient + resample, derive centroids, boxes and counts.

`prepare_case` is the pure part (a loaded `Case` in, arrays and the case record out); `preprocess_case` adds the
source hash, the skip-if-unchanged check and the atomic write, and never raises for a bad case: it returns
a result record that names the file and the problem. `vertseg.data.parallel` fans it out on Ray.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from vertseg.data.config import DataConfig
from vertseg.data.errors import CaseError
from vertseg.data.geometry import HU_BACKGROUND, CaseGeometry, apply_affine, case_geometry, resample_to_grid, world_to_index
from vertseg.data.store import read_case_attrs, settings_hash, shard_problems, write_case
from vertseg.data.types import Case, CaseSource
from vertseg.labels import MAX_VERSE_LABEL, PROTOCOLS, apply_policy

PoolChoice = Literal["auto", "labeled", "unlabeled"]
BONE_HU = 250.0  # unlabeled cases: foreground sampling points are bone voxels above this HU
FG_PER_LABEL = 512  # foreground voxels kept per label for oversampling (nnU-Net keeps a similar sample)
FG_BONE = 4096
_INT16 = np.iinfo(np.int16)


@dataclass
class PreparedCase:
    image_hu: np.ndarray
    labels: np.ndarray | None
    foreground: np.ndarray
    attrs: dict[str, Any]


def source_files(source: CaseSource) -> list[Path]:
    """Every file whose bytes define the case (a DICOM folder contributes all its files)."""
    files: list[Path] = []
    for path in (source.image, source.mask, source.centroids):
        if path is None:
            continue
        path = Path(path)
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def source_hash(source: CaseSource, config: DataConfig, pool: str) -> str:
    """Content hash of the source files plus everything that changes the stored result."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{settings_hash(config)}|{pool}|{source.label_format}|{source.split}|{source.patient_id}".encode())
    for path in source_files(source):
        digest.update(path.name.encode())
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        except OSError as error:
            raise CaseError(path, f"cannot be read: {error.strerror or error}") from None
    return digest.hexdigest()


def resolve_pool(source: CaseSource, choice: PoolChoice) -> str:
    if choice == "labeled" and not source.labeled:
        raise CaseError(source.image, "--pool labeled but the case has no label mask")
    if choice == "auto":
        return "labeled" if source.labeled else "unlabeled"
    return choice


def _check_image(case: Case) -> np.ndarray:
    if case.image is None:
        raise CaseError(case.source.mask, "no CT image for this mask; preprocessing needs the scan")
    array = sitk.GetArrayViewFromImage(case.image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise CaseError(case.source.image, f"{bad} voxels are NaN or infinite")
    return array


def _check_mask(case: Case) -> None:
    from vertseg.data.readers.geometry import same_grid

    mismatch = same_grid(case.image, case.mask)
    if mismatch is not None:
        raise CaseError(case.source.mask, f"mask grid does not match the image {case.source.image}: {mismatch}")
    values = np.unique(sitk.GetArrayViewFromImage(case.mask))
    bad = values[(values < 0) | (values > MAX_VERSE_LABEL) | (values != np.round(values))]
    if bad.size:
        raise CaseError(case.source.mask, f"label values outside the VerSe table 0..{MAX_VERSE_LABEL}: {bad[:10].tolist()}")
    if values.max(initial=0) == 0:
        raise CaseError(case.source.mask, "mask is empty (no labeled voxel)")


def _labelled_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 3) z, y, x in C order, label of each) of every labelled voxel: the one pass over the mask that
    the centres, counts, box and foreground samples below share."""
    coords = np.nonzero(labels)
    return np.stack(coords, axis=1), labels[coords]


def _centres_of_mass(coords: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """Per-label centre of mass in voxel (z, y, x)."""
    counts = np.bincount(values, minlength=256)
    present = np.flatnonzero(counts[1:]) + 1
    sums = np.stack([np.bincount(values, weights=coords[:, axis].astype(np.float64), minlength=256) for axis in range(3)],
                    axis=1)
    return {int(label): sums[label] / counts[label] for label in present}


def _foreground_samples(labelled: tuple[np.ndarray, np.ndarray] | None, image_hu: np.ndarray, seed: int) -> np.ndarray:
    """A fixed-size random sample of foreground voxels per label (bone voxels for unlabeled cases)."""
    rng = np.random.default_rng(seed)
    if labelled is None:
        coords = np.argwhere(image_hu >= BONE_HU)
        keep = rng.choice(len(coords), size=min(FG_BONE, len(coords)), replace=False) if len(coords) else []
        return np.column_stack([np.zeros(len(keep), np.int64), coords[keep]]) if len(keep) else np.zeros((0, 4), np.int64)
    coords, values = labelled
    rows = []
    for label in np.unique(values):
        members = np.flatnonzero(values == label)
        picked = np.sort(rng.choice(members, size=min(FG_PER_LABEL, len(members)), replace=False))
        rows.append(np.column_stack([np.full(len(picked), label), coords[picked]]))
    return np.concatenate(rows).astype(np.int64)


def _centroid_records(points_zyx: dict[int, np.ndarray], geometry: CaseGeometry) -> dict[str, Any]:
    affine = geometry.canonical.affine_lps()
    return {
        str(label): {"voxel_zyx": [float(v) for v in zyx], "lps": [float(v) for v in apply_affine(affine, zyx[None])[0]]}
        for label, zyx in sorted(points_zyx.items())
    }


def prepare_case(case: Case, config: DataConfig, pool: str) -> PreparedCase:
    """Validate a loaded case and move it onto the store grid; raises CaseError naming the file and problem."""
    source = case.source
    _check_image(case)
    use_mask = pool == "labeled"
    if use_mask:
        if case.mask is None:
            raise CaseError(source.image, "labeled pool but no mask was loaded")
        _check_mask(case)
    geometry = case_geometry(case.image, config.spacing_mm)
    ct = sitk.Cast(case.image, sitk.sitkFloat32)
    hu = resample_to_grid(ct, geometry.canonical, "linear", HU_BACKGROUND)
    image_hu = np.clip(np.rint(hu, out=hu), _INT16.min, _INT16.max, out=hu).astype(np.int16)
    labels = None
    if use_mask:
        mask = sitk.Cast(case.mask, sitk.sitkUInt8)
        labels = resample_to_grid(mask, geometry.canonical, "nearest", 0)
        labels = apply_policy(labels, PROTOCOLS[config.protocol], config.transitional_policy)
        if not labels.any():
            raise CaseError(source.mask, f"no vertebra of protocol {config.protocol} is left after resampling")
    seed = int.from_bytes(hashlib.sha256(source.case_id.encode()).digest()[:4], "little")
    labelled = _labelled_voxels(labels) if labels is not None else None
    foreground = _foreground_samples(labelled, image_hu, seed)
    body = {
        int(label): world_to_index(geometry.canonical, np.asarray(point, float))[0]
        for label, point in case.centroids_lps.items()
    }
    mask_com, spine_box, label_counts = {}, None, np.zeros(256, np.int64)
    if labelled is not None:
        coords, values = labelled
        mask_com = _centres_of_mass(coords, values)
        spine_box = [coords.min(axis=0).tolist(), (coords.max(axis=0) + 1).tolist()]
        label_counts = np.bincount(values, minlength=256)
        label_counts[0] = labels.size - len(values)
    voxel_ml = config.spacing_mm**3 / 1000.0
    attrs = {
        "case_id": source.case_id,
        "patient_id": source.patient_id,
        "dataset": source.dataset,
        "split": source.split,
        "pool": pool,
        "label_format": source.label_format,
        "source": {k: str(getattr(source, k)) if getattr(source, k) else None for k in ("image", "mask", "centroids")},
        "shape_zyx": list(image_hu.shape),
        "spacing_mm": config.spacing_mm,
        "orientation": {"original": geometry.original.axcodes(), "store": geometry.canonical.axcodes()},
        "geometry": geometry.to_dict(),
        "labels_present": [int(v) for v in np.flatnonzero(label_counts[1:]) + 1],
        "label_counts": {str(v): int(label_counts[v]) for v in np.flatnonzero(label_counts)},
        "label_volume_ml": {str(v): float(label_counts[v] * voxel_ml) for v in np.flatnonzero(label_counts[1:]) + 1},
        "centroids": {"body": _centroid_records(body, geometry), "mask": _centroid_records(mask_com, geometry)},
        "spine_box_zyx": spine_box,
        "hu_range": [int(image_hu.min()), int(image_hu.max())],
    }
    return PreparedCase(image_hu, labels, foreground, attrs)


def limit_threads(threads: int) -> None:
    """Cap this process's SimpleITK and blosc threads: a preprocessing worker holds one CPU, and two workers that
    each start a thread per core share the cores instead of adding them up."""
    from numcodecs import blosc

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    blosc.set_nthreads(threads)


def preprocess_case(
    source: CaseSource, config: DataConfig, root: Path | str, pool_choice: PoolChoice = "auto", overwrite: bool = False
) -> dict[str, Any]:
    """Hash, skip if unchanged, load, prepare and write one case. Returns a result record; never raises CaseError."""
    from vertseg.data.readers import load_case

    started = time.perf_counter()
    result: dict[str, Any] = {"case_id": source.case_id, "status": "written", "file": None, "problem": None}
    try:
        pool = resolve_pool(source, pool_choice)
        digest = source_hash(source, config, pool)
        existing = read_case_attrs(Path(root), source.case_id)
        intact = existing is not None and not shard_problems(Path(root), source.case_id, existing)
        if not overwrite and intact and existing.get("source_hash") == digest:
            result["status"] = "skipped"
        else:
            stages = result["stage_seconds"] = {}
            clock = time.perf_counter()
            case = load_case(source)
            stages["read"], clock = time.perf_counter() - clock, time.perf_counter()
            prepared = prepare_case(case, config, pool)
            prepared.attrs["source_hash"] = digest
            stages["resample_and_check"], clock = time.perf_counter() - clock, time.perf_counter()
            write_case(Path(root), source.case_id, config, prepared.image_hu, prepared.labels, prepared.foreground, prepared.attrs)
            stages["write"] = time.perf_counter() - clock
    except CaseError as error:
        result.update(status="failed", file=str(error.file) if error.file else None, problem=error.problem)
    except Exception as error:  # noqa: BLE001 - one unreadable case must not stop a 1,000-case run
        result.update(status="failed", file=str(source.image), problem=f"{type(error).__name__}: {error}")
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
