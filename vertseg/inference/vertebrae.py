"""One predicted vertebra on the original image grid (label, volume, confidence, centroid) and its table row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from vertseg.data.readers.geometry import affine_lps
from vertseg.labels import VERSE_NAMES, region_of

VERTEBRA_FIELDS = (
    "label", "map_value", "name", "region", "voxels", "volume_ml", "confidence",
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
