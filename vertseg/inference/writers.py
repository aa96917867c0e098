"""Prediction files on the ORIGINAL image grid: labelmap NIfTI, VerSe centroid JSON, per-vertebra JSON/CSV.

A NIfTI input keeps its own header and affine byte for byte (nibabel); any other input (DICOM) gets a NIfTI
with the SimpleITK geometry of the series. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from vertseg.data.readers.centroids import write_centroids_json
from vertseg.data.readers.files import is_nifti
from vertseg.data.readers.geometry import affine_lps, axcodes
from vertseg.io import atomic_path, atomic_write_json, atomic_write_text
from vertseg.labels import VERSE_NAMES, region_of

VERTEBRA_FIELDS = (
    "label", "name", "region", "voxels", "volume_ml", "confidence",
    "centroid_x", "centroid_y", "centroid_z", "centroid_lps_x", "centroid_lps_y", "centroid_lps_z",
)


@dataclass(frozen=True)
class Vertebra:
    """One predicted vertebra; the centroid is a continuous voxel index (i, j, k) of the original image."""

    label: int
    voxels: int
    volume_ml: float
    confidence: float
    centroid_ijk: tuple[float, float, float]
    centroid_lps: tuple[float, float, float]

    def row(self) -> dict:
        return {
            "label": self.label,
            "name": VERSE_NAMES[self.label],
            "region": region_of(self.label) or "",
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 3),
            "confidence": None if np.isnan(self.confidence) else round(self.confidence, 4),
            **{f"centroid_{a}": round(v, 2) for a, v in zip("xyz", self.centroid_ijk)},
            **{f"centroid_lps_{a}": round(v, 2) for a, v in zip("xyz", self.centroid_lps)},
        }


def vertebrae_on_grid(
    labelmap_zyx: np.ndarray, image: sitk.Image, confidence: dict[int, float], centroids_lps: dict[int, np.ndarray]
) -> list[Vertebra]:
    """Volume of every label of an original-grid labelmap (no per-voxel loop) with its predicted body centroid
    (`centroids_lps`, LPS mm; the label's centre of mass where none is given)."""
    flat = labelmap_zyx.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=256)
    present = [int(k) for k in np.flatnonzero(counts) if k > 0]
    if not present:
        return []
    nonzero = np.flatnonzero(flat)
    ids = flat[nonzero]
    zyx = np.unravel_index(nonzero, labelmap_zyx.shape)
    means = [np.bincount(ids, weights=c.astype(np.float64), minlength=256) / np.maximum(counts, 1) for c in zyx]
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    affine = affine_lps(image)
    out = []
    for label in present:
        if label in centroids_lps:
            lps = np.asarray(centroids_lps[label], dtype=np.float64)
            ijk = np.linalg.solve(affine[:3, :3], lps - affine[:3, 3])
        else:
            ijk = np.array([means[2][label], means[1][label], means[0][label]])
            lps = affine[:3, :3] @ ijk + affine[:3, 3]
        out.append(Vertebra(label, int(counts[label]), counts[label] * voxel_ml, float(confidence.get(label, np.nan)),
                            tuple(float(v) for v in ijk), tuple(float(v) for v in lps)))
    return out


def write_labelmap(path: Path, labelmap_zyx: np.ndarray, image: sitk.Image, source: Path | None) -> None:
    """uint8 VerSe labelmap with the input's geometry: the NIfTI header itself when the input is a NIfTI file."""
    labelmap_zyx = np.ascontiguousarray(labelmap_zyx, dtype=np.uint8)
    if tuple(labelmap_zyx.shape[::-1]) != tuple(image.GetSize()):
        raise ValueError(f"labelmap shape {labelmap_zyx.shape} does not match the image size {image.GetSize()} (x, y, z)")
    with atomic_path(path) as tmp:
        if source is not None and source.is_file() and is_nifti(source):
            original = nib.load(str(source))
            header = original.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            out = nib.Nifti1Image(labelmap_zyx.transpose(2, 1, 0), original.affine, header)
            out.set_qform(original.get_qform(), int(original.header["qform_code"]))
            out.set_sform(original.get_sform(), int(original.header["sform_code"]))
            nib.save(out, str(tmp))
        else:
            label_image = sitk.GetImageFromArray(labelmap_zyx)
            label_image.CopyInformation(image)
            sitk.WriteImage(label_image, str(tmp), useCompression=True)


def write_centroids(path: Path, vertebrae: list[Vertebra], image: sitk.Image) -> None:
    """VerSe centroid JSON in voxel coordinates of the original image, with its own axis codes as `direction`."""
    write_centroids_json(path, {v.label: v.centroid_ijk for v in vertebrae}, axcodes(image))


def write_vertebra_tables(json_path: Path, csv_path: Path, vertebrae: list[Vertebra], extra: dict) -> None:
    rows = [v.row() for v in vertebrae]
    atomic_write_json(json_path, {**extra, "vertebrae": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=VERTEBRA_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())
