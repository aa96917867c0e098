"""Label-free spine localisation: the box the fine sliding window covers.

Two detectors, both on a coarse copy of the store-frame volume (axes z, y, x = I, P, R):

- `network`: the segmentation head run by non-overlapping windows at `localisation_spacing_mm`; the box of
  the foreground components that survive dust removal.
- `bone` (default): the spine column found from bone alone (`column.find_column`: per 30 mm slab the big,
  midline, posterior bone region, chained along the scan), which also bounds what may be called a vertebra; no
  column means no spine in the scan.

Neither reads a label; every box gets `localisation_margin_mm` of margin and is clipped to the volume. Either can
miss bone (a steep, anterior upper cervical spine), so after the fine pass `grown_box` moves every inner face the
fine foreground still touches outward by the margin, and the box is predicted again (`inference.box_growth_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cc3d
import numpy as np

from vertseg.inference.column import SpineColumn

NO_SPINE = "none (no spine found)"


@dataclass(frozen=True)
class SpineBox:
    """Half-open voxel box (start, stop) in (z, y, x) of the store frame and how it was found."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    method: str
    column: SpineColumn | None = None  # bone localisation: the column that bounds where vertebrae may be

    @property
    def no_spine(self) -> bool:
        return self.method == NO_SPINE

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
    return replace(box, start=tuple(start), stop=tuple(stop))


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
    return align_box(replace(box, start=tuple(start), stop=tuple(stop), method=method), shape)


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


def foreground_mask(fg_prob: np.ndarray, threshold: float, min_voxels: int) -> np.ndarray:
    """The thresholded foreground without components smaller than `min_voxels` (what post-processing keeps)."""
    mask = fg_prob > threshold
    if min_voxels > 1 and mask.any():
        mask = cc3d.dust(mask, threshold=min_voxels, connectivity=26) > 0
    return mask


def foreground_box(fg_prob: np.ndarray, threshold: float, min_voxels: int) -> tuple[np.ndarray, np.ndarray] | None:
    return mask_bounds(foreground_mask(fg_prob, threshold, min_voxels))
