"""Per-vertebra statistics (`vertseg predict --statistics`, and every `vertseg.predict` result).

Volume (ml, original grid), mean and median HU of the vertebral BODY and of the WHOLE vertebra, body centroid (RAS
mm), confidence, and whether the vertebra touches the image border (a partial vertebra: its volume and HU are not
the whole bone's).

Body region, chosen for opportunistic bone-density screening, which reads the trabecular centre of the body: the
voxels of the vertebra's label within a sphere around its predicted vertebral-BODY centroid (the identification
heatmap's peak region, `inference.centroids`), of radius 0.4 x the radius of a sphere with the vertebra's volume
(about 10 mm for L1, 5 mm for C3), so it stays inside the body and away from the posterior elements. HU are read
on the 1 mm store frame the network saw (the input's HU, trilinearly resampled), the same frame for every input.

Whole vertebra: every voxel of the vertebra's label in the written labelmap, HU of the input on its own grid (as
TotalSegmentator's statistics and a viewer's segment statistics read them, so they can be checked from the files).
A Zarr store case keeps no original pixels: its whole-vertebra HU are null.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from vertseg.inference.centroids import label_centres
from vertseg.inference.vertebrae import Vertebra
from vertseg.labels import VERSE_NAMES

BODY_RADIUS_FRACTION = 0.4
STATISTICS_FIELDS = (
    "label", "map_value", "name", "volume_ml", "hu_mean_body", "hu_median_body", "body_voxels",
    "hu_mean_vertebra", "hu_median_vertebra",
    "centroid_ras_x", "centroid_ras_y", "centroid_ras_z", "confidence", "touches_border",
)
VERTEBRA_REGION = "every voxel of the vertebra's label in the written labelmap, HU of the input on its own grid"


def border_labels(labels: np.ndarray) -> set[int]:
    """Labels present on any face of the volume."""
    faces = [np.take(labels, index, axis=axis) for axis in range(labels.ndim) for index in (0, -1)]
    return {int(v) for face in faces for v in np.unique(face) if v}


def body_radius_mm(volume_ml: float) -> float:
    """Radius of the body sphere: a fixed fraction of the radius of a ball with the vertebra's volume."""
    return BODY_RADIUS_FRACTION * (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


def body_hu(labels: np.ndarray, hu: np.ndarray, label: int, centre_zyx: np.ndarray, radius_vox: float,
            box: tuple[slice, ...]) -> np.ndarray:
    """HU of the voxels of `label` within `radius_vox` of `centre_zyx`, searched inside the label's bounding box."""
    crop = labels[box] == label
    grid = np.ogrid[tuple(slice(s.start, s.stop) for s in box)]
    distance2 = sum((axis - c) ** 2 for axis, c in zip(grid, centre_zyx))
    inside = crop & (distance2 <= radius_vox**2)
    return hu[box][inside]


def whole_vertebra_hu(labels: np.ndarray, hu: np.ndarray) -> dict[int, tuple[float, float]]:
    """Label -> (mean, median) HU over all its voxels: one pass over the labelled voxels, no loop over them."""
    inside = labels != 0
    ids, values = labels[inside], np.asarray(hu)[inside].astype(np.float64)
    present = np.unique(ids)
    if not present.size:  # no vertebra (scipy refuses an empty index)
        return {}
    means, medians = ndimage.mean(values, ids, present), ndimage.median(values, ids, present)
    return {int(label): (float(mean), float(median)) for label, mean, median in zip(present, means, medians)}


def _whole_vertebra_row(hu: tuple[float, float] | None) -> dict:
    mean, median = (None, None) if hu is None else (round(hu[0], 1), round(hu[1], 1))
    return {"hu_mean_vertebra": mean, "hu_median_vertebra": median}


def vertebra_statistics(
    vertebrae: list[Vertebra],
    original_labels: np.ndarray,
    store_labels: np.ndarray,
    store_hu: np.ndarray,
    store_centroids_zyx: dict[int, np.ndarray],
    store_spacing_mm: float,
    original_hu: np.ndarray | None,
) -> list[dict]:
    """One row per vertebra (fields STATISTICS_FIELDS); body HU are None when the body region is empty, whole-vertebra
    HU when `original_hu` (the input's HU on the grid of `original_labels`) is None."""
    on_border = border_labels(original_labels)
    whole = whole_vertebra_hu(original_labels, original_hu) if original_hu is not None else {}
    boxes = ndimage.find_objects(store_labels.astype(np.int32))
    centres = label_centres(store_labels)
    rows = []
    for vertebra in vertebrae:
        label = vertebra.label
        values = np.empty(0, dtype=np.float32)
        box = boxes[label - 1] if label - 1 < len(boxes) else None
        if box is not None:
            centre = np.asarray(store_centroids_zyx.get(label, centres.get(label)), dtype=np.float64)
            values = body_hu(store_labels, store_hu, label, centre, body_radius_mm(vertebra.volume_ml) / store_spacing_mm,
                             box)
        x, y, z = vertebra.centroid_lps
        rows.append({
            "label": label,
            "name": VERSE_NAMES[label],
            "volume_ml": round(vertebra.volume_ml, 3),
            "hu_mean_body": round(float(values.mean()), 1) if values.size else None,
            "hu_median_body": round(float(np.median(values)), 1) if values.size else None,
            "body_voxels": int(values.size),
            **_whole_vertebra_row(whole.get(label)),
            "centroid_ras_x": round(-x, 2),
            "centroid_ras_y": round(-y, 2),
            "centroid_ras_z": round(z, 2),
            "confidence": None if np.isnan(vertebra.confidence) else round(vertebra.confidence, 4),
            "touches_border": label in on_border,
        })
    return rows
