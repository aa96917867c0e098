"""Connected vertebra candidates: 3D components of the foreground, dust removal in millilitres, cranio-caudal order.

Works in the canonical store frame (axis 0 = z, index 0 most superior), so sorting by the z coordinate of a
centroid is the superior-to-inferior order the sequence decoders expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np


def voxel_volume_ml(spacing: tuple[float, float, float] | np.ndarray) -> float:
    """Volume of one voxel in millilitres (spacing in mm)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive millimetre values, got {spacing.tolist()}")
    return float(np.prod(spacing)) / 1000.0


def min_voxels(min_ml: float, spacing: tuple[float, float, float] | np.ndarray) -> int:
    """Smallest component kept, in voxels, for a threshold in ml (the same anatomy at any resolution)."""
    return int(np.ceil(min_ml / voxel_volume_ml(spacing) - 1e-9)) if min_ml > 0 else 0


def connected_components(mask: np.ndarray, spacing, min_fragment_ml: float, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the 3D components of a binary mask, dropping those below `min_fragment_ml`.

    Returns (labels, n) with labels 1..n numbered consecutively (uint32) and 0 = background.
    """
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.uint32), 0
    labels = cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=connectivity)
    threshold = min_voxels(min_fragment_ml, spacing)
    if threshold > 1:
        labels = cc3d.dust(labels, threshold=threshold, connectivity=connectivity, precomputed_ccl=True)
    labels, n = cc3d.connected_components(labels > 0, connectivity=connectivity, return_N=True)
    return labels.astype(np.uint32, copy=False), int(n)


def label_statistics(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Voxel counts (n,) and centroids (n, 3) in voxel coordinates of labels 1..n (no Python loop over voxels)."""
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    centroids = np.full((n, 3), np.nan)
    if n == 0:
        return counts, centroids
    nonzero = np.flatnonzero(flat)
    ids = flat[nonzero]
    coords = np.unravel_index(nonzero, labels.shape)
    for axis in range(3):
        sums = np.bincount(ids, weights=coords[axis].astype(np.float64), minlength=n + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            centroids[:, axis] = sums / counts
    return counts, centroids


@dataclass(frozen=True)
class Instances:
    """Vertebra candidates sorted cranio-caudally: `labels` holds 1..n where 1 is the most superior."""

    labels: np.ndarray
    counts: np.ndarray
    centroids: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])


def sort_cranio_caudal(labels: np.ndarray, n: int) -> Instances:
    """Renumber labels 1..n by the z (axis 0) coordinate of their centroids, superior first."""
    counts, centroids = label_statistics(labels, n)
    order = np.argsort(centroids[:, 0], kind="stable")
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[order + 1] = np.arange(1, n + 1, dtype=np.uint32)
    return Instances(labels=lut[labels], counts=counts[order], centroids=centroids[order])


def ordered_instances(mask: np.ndarray, spacing, min_fragment_ml: float) -> Instances:
    """Connected components of `mask` without small fragments, numbered superior to inferior."""
    labels, n = connected_components(mask, spacing, min_fragment_ml)
    return sort_cranio_caudal(labels, n)
