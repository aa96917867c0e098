"""Label-free spine localisation: the box the fine sliding window covers.

Two detectors, both on a coarse copy of the store-frame volume (axes z, y, x = I, P, R):

- `network`: the segmentation head run by non-overlapping windows at `localisation_spacing_mm`; the box of
  the foreground components that survive dust removal.
- `bone`: a CT heuristic used when the network finds nothing (e.g. untrained weights). Inside the body (the
  largest component above -300 HU, which drops the table) bone is thresholded; the spine is the largest
  near-midline region that is bone in most slices of the scan (ribs, sternum and pelvis are oblique, short or
  lateral), extended by the bone columns of each 32 mm slab that touch it, so a curved spine stays inside.

Neither reads a label; every box gets `localisation_margin_mm` of margin and is clipped to the volume. Either can
miss bone (the bone heuristic's columns drop a steep, anterior upper cervical spine), so after the fine pass
`grown_box` moves every inner face the fine foreground still touches outward by the margin, and the box is predicted
again (`inference.box_growth_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

BODY_HU = -300.0
SLAB_MM = 32.0
COLUMN_FRACTION = 0.5  # a spine pixel is bone in at least half the slices of its slab
MIDLINE_TOLERANCE_MM = 40.0
NEIGHBOUR_MM = 10.0  # slab columns within this distance of the whole-scan column belong to the spine


@dataclass(frozen=True)
class SpineBox:
    """Half-open voxel box (start, stop) in (z, y, x) of the store frame and how it was found."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    method: str

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {"start_zyx": list(self.start), "stop_zyx": list(self.stop), "method": self.method}


def full_box(shape: tuple[int, ...], method: str = "none") -> SpineBox:
    return SpineBox((0, 0, 0), tuple(int(s) for s in shape), method)  # type: ignore[arg-type]


def expand_box(start, stop, margin_vox: float, shape: tuple[int, ...], method: str) -> SpineBox:
    """Grow a box by a margin on every side and clip it to the volume."""
    margin = int(np.ceil(margin_vox))
    lo = tuple(int(max(0, a - margin)) for a in start)
    hi = tuple(int(min(n, b + margin)) for b, n in zip(stop, shape))
    return SpineBox(lo, hi, method)  # type: ignore[arg-type]


def align_box(box: SpineBox, shape: tuple[int, ...], multiple: int = 4) -> SpineBox:
    """Grow a box to a multiple of the 1/4 identification grid where the volume allows it."""
    start, stop = list(box.start), list(box.stop)
    for axis, limit in enumerate(shape):
        extra = (-(stop[axis] - start[axis])) % multiple
        grow_up = min(extra, limit - stop[axis])
        stop[axis] += grow_up
        start[axis] = max(0, start[axis] - (extra - grow_up))
    return SpineBox(tuple(start), tuple(stop), box.method)  # type: ignore[arg-type]


def grown_box(box: SpineBox, foreground: np.ndarray, margin_vox: float, shape: tuple[int, ...]) -> SpineBox | None:
    """`box` with each face that `foreground` (a mask on the box) touches and that is not the volume's edge moved
    outward by the margin; None when no such face is touched, so the fine pass saw all of the spine."""
    margin = int(np.ceil(margin_vox))
    start, stop = list(box.start), list(box.stop)
    for axis in range(foreground.ndim):
        first = np.take(foreground, 0, axis=axis).any()
        last = np.take(foreground, -1, axis=axis).any()
        if first and start[axis] > 0:
            start[axis] = max(0, start[axis] - margin)
        if last and stop[axis] < shape[axis]:
            stop[axis] = min(shape[axis], stop[axis] + margin)
    if (tuple(start), tuple(stop)) == (box.start, box.stop):
        return None
    method = box.method if box.method.endswith("+grown") else f"{box.method}+grown"
    return align_box(SpineBox(tuple(start), tuple(stop), method), shape)  # type: ignore[arg-type]


def mask_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Half-open bounding box of the True voxels, or None."""
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(present[0])
        hi.append(present[-1] + 1)
    return np.array(lo), np.array(hi)


def scale_box(start: np.ndarray, stop: np.ndarray, coarse_shape, fine_shape) -> tuple[np.ndarray, np.ndarray]:
    """A coarse-grid box in fine-grid voxels (each coarse voxel covers fine / coarse fine voxels)."""
    ratio = np.asarray(fine_shape, float) / np.asarray(coarse_shape, float)
    return np.floor(start * ratio).astype(int), np.ceil(stop * ratio).astype(int)


def downsample_factor(spacing_mm: float, coarse_spacing_mm: float) -> int:
    return max(1, int(round(coarse_spacing_mm / spacing_mm)))


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor^3 blocks (the edge is padded by replication)."""
    if factor == 1:
        return volume.astype(np.float32, copy=False)
    pad = [(0, (-s) % factor) for s in volume.shape]
    padded = np.pad(volume.astype(np.float32, copy=False), pad, mode="edge")
    z, y, x = (s // factor for s in padded.shape)
    return padded.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5))


def foreground_mask(fg_prob: np.ndarray, threshold: float, min_voxels: int) -> np.ndarray:
    """The thresholded foreground without components smaller than `min_voxels` (what post-processing keeps)."""
    mask = fg_prob > threshold
    if min_voxels > 1 and mask.any():
        mask = cc3d.dust(mask, threshold=min_voxels, connectivity=26) > 0
    return mask


def foreground_box(fg_prob: np.ndarray, threshold: float, min_voxels: int) -> tuple[np.ndarray, np.ndarray] | None:
    return mask_bounds(foreground_mask(fg_prob, threshold, min_voxels))


def bone_box(hu: np.ndarray, spacing_mm: float, threshold_hu: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The spine box from a (coarse) HU volume in the store frame, without labels; None when no column is found.

    The column is first found over the whole scan (ribs, sternum and pelvis are bone in a minority of slices at
    any one place); per 32 mm slab, bone columns touching it are then added, which follows a curved spine.
    """
    body = cc3d.largest_k(hu > BODY_HU, k=1, connectivity=6) > 0
    if not body.any():
        return None
    bone = (hu > threshold_hu) & body
    present = np.flatnonzero(bone.any(axis=(1, 2)))
    if present.size == 0:
        return None
    bone = bone[present[0] : present[-1] + 1]
    body_x = np.flatnonzero(body.any(axis=(0, 1)))
    midline = (body_x[0] + body_x[-1]) / 2
    tolerance = MIDLINE_TOLERANCE_MM / spacing_mm
    core = _columns(bone.mean(axis=0), midline, tolerance, None)
    if core is None:
        return None
    reach = int(np.ceil(NEIGHBOUR_MM / spacing_mm))
    near = (np.maximum(core[0] - reach, 0), core[1] + reach)
    lo, hi = core[0].copy(), core[1].copy()
    slab = max(1, int(round(SLAB_MM / spacing_mm)))
    for first in range(0, bone.shape[0], slab):
        found = _columns(bone[first : first + slab].mean(axis=0), midline, tolerance, near)
        if found is not None:
            lo, hi = np.minimum(lo, found[0]), np.maximum(hi, found[1])
    return np.array([present[0], *lo]), np.array([present[-1] + 1, *hi])


def _columns(fraction: np.ndarray, midline: float, tolerance: float, near) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, x) box of bone columns in a map of per-pixel bone fractions.

    Without `near`: the largest near-midline region that is bone in most slices. With `near` ((y0, x0), (y1, x1)):
    every such region that overlaps that box.
    """
    regions, n = cc3d.connected_components(fraction >= COLUMN_FRACTION, connectivity=8, return_N=True)
    if n == 0:
        return None
    flat = regions.ravel()
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    xs = np.bincount(flat, weights=np.indices(regions.shape)[1].ravel(), minlength=n + 1)[1:] / np.maximum(sizes, 1)
    if near is None:
        sizes = np.where(np.abs(xs - midline) <= tolerance, sizes, 0)
        return None if sizes.max() == 0 else mask_bounds(regions == int(np.argmax(sizes)) + 1)
    window = regions[near[0][0] : near[1][0], near[0][1] : near[1][1]]
    touching = np.setdiff1d(np.unique(window), [0])
    return None if touching.size == 0 else mask_bounds(np.isin(regions, touching))
