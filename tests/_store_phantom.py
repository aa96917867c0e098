"""Tiny NIfTI spine phantoms (stacked ellipsoid 'vertebrae') in any orientation/spacing, plus broken variants.

Written with nibabel so the store tests do not depend on the full phantom generator; ground truth (centroids in
world RAS mm, per-label voxel volumes) comes back with each case.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from vertseg.data.readers import write_centroids_json

_RAS_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
RADII_MM = np.array([22.0, 17.0, 12.0])  # x (left-right), y (ant-post), z (cranio-caudal)


def affine_for(codes: str, spacing: tuple[float, float, float], shape: tuple[int, int, int], tilt_deg: float = 0.0) -> np.ndarray:
    """RAS affine whose index axes point to `codes`, centred on the world origin, optionally tilted about S."""
    linear = np.zeros((3, 3))
    for column, (code, step) in enumerate(zip(codes, spacing)):
        axis, sign = _RAS_AXIS[code]
        linear[axis, column] = sign * step
    a = np.deg2rad(tilt_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    linear = rotation @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.asarray(shape) - 1) / 2)
    return affine


def write_case(folder: Path, name: str, codes: str = "RAS", spacing=(1.0, 1.0, 1.0), tilt_deg: float = 0.0,
               levels=(20, 21, 22, 23, 24), extent_mm=(60.0, 44.0, 160.0), seed: int = 0, image_dtype=np.int16) -> dict:
    """Write `name.nii.gz`, `name_seg.nii.gz`, `name_ctd.json`; return ground truth (RAS centroids, volumes in ml)."""
    folder.mkdir(parents=True, exist_ok=True)
    extent_by_axis = dict(zip("RAS", extent_mm))
    shape = tuple(int(round(extent_by_axis[{"R": "R", "L": "R", "A": "A", "P": "A", "S": "S", "I": "S"}[c]] / s))
                  for c, s in zip(codes, spacing))
    affine = affine_for(codes, spacing, shape, tilt_deg)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    n_levels = len(levels)
    centres = {label: np.array([0.0, 0.0, (n_levels - 1) / 2 * 28.0 - 28.0 * k]) for k, label in enumerate(levels)}
    labels = np.zeros(len(world), np.uint8)
    for label, centre in centres.items():
        inside = (((world - centre) / RADII_MM) ** 2).sum(axis=1) <= 1.0
        labels[inside] = label
    labels = labels.reshape(shape)
    rng = np.random.default_rng(seed)
    image = np.where(labels > 0, 700.0, 40.0) + rng.normal(0, 20, shape)
    nib.save(nib.Nifti1Image(image.astype(image_dtype), affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{name}_seg.nii.gz")
    inverse = np.linalg.inv(affine)
    voxel = {label: tuple(inverse[:3, :3] @ c + inverse[:3, 3]) for label, c in centres.items()}
    write_centroids_json(folder / f"{name}_ctd.json", voxel, tuple(nib.aff2axcodes(affine)))
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volumes = {label: float((labels == label).sum() * voxel_ml) for label in levels}
    return {"centroids_ras": centres, "volume_ml": volumes, "affine": affine, "shape": shape}
