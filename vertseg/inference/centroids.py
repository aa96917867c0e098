"""Predicted vertebral-body centroids for the VerSe centroid file.

The identification heatmaps are trained on vertebral-BODY centroids (section 2.4.2), while the centre of mass of
a labelled vertebra lies in the posterior elements' direction; so each label's centroid is the centre of mass of
the label's voxels weighted by its own class map there, counting only the part above half that map's maximum (the
peak region: the peak of a sharp heatmap, the middle of a flat one). Weighting voxels rather than averaging the
centres of the coarse map's cells keeps sub-cell precision: a cell of the 1/4 grid is 12 mm at 3 mm spacing. Without identification maps (segmentation-only
model) the centre of mass of the label is used.
"""

from __future__ import annotations

import numpy as np

from vertseg.labels import Protocol


def label_centres(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Centre of mass (z, y, x voxels) of every non-zero label, without a loop over voxels."""
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=256)
    nonzero = np.flatnonzero(flat)
    coords = np.unravel_index(nonzero, labels.shape)
    sums = [np.bincount(flat[nonzero], weights=c.astype(np.float64), minlength=256) for c in coords]
    return {int(k): np.array([s[k] / counts[k] for s in sums]) for k in np.flatnonzero(counts) if k > 0}


def body_centroids(labels: np.ndarray, class_maps: np.ndarray | None, protocol: Protocol) -> dict[int, np.ndarray]:
    """VerSe label -> centroid (z, y, x) in voxels of `labels`; `class_maps` is (K+1, z, y, x) on a coarser grid."""
    centres = label_centres(labels)
    if class_maps is None or not centres:
        return centres
    scale = np.asarray(labels.shape, float) / np.asarray(class_maps.shape[1:], float)
    flat = np.flatnonzero(labels)
    voxel_labels = labels.ravel()[flat]
    coords = np.stack(np.unravel_index(flat, labels.shape), axis=1).astype(np.float64)
    low = np.minimum(np.floor((coords + 0.5) / scale).astype(np.int64), np.asarray(class_maps.shape[1:]) - 1)
    low_flat = np.ravel_multi_index(tuple(low.T), class_maps.shape[1:])
    lut = protocol.class_lut()
    out = {}
    for label, centre in centres.items():
        inside = voxel_labels == label
        values = class_maps[int(lut[label])].reshape(-1)[low_flat[inside]].astype(np.float64)
        weights = np.clip(values - 0.5 * values.max(), 0, None)
        out[label] = centre if weights.sum() <= 0 else coords[inside].T @ weights / weights.sum()
    return out
