"""The spine column: where the vertebrae run through a scan, found from bone alone (no labels, no network).

Real CT is full of bone and bone-bright tissue that is not spine: ribs, sternum, scapulae, the pelvis, femora,
contrast in the aorta and heart, calcified plaques, the table. The column is what is left when one asks, slab by
slab (30 mm), for the bone region that is big, near the body's left-right midline, in its posterior half, and
continuous with the region chosen in the neighbouring slabs (a Viterbi path over the slabs' candidate regions, so a
lordotic lumbar spine or a kyphotic thorax is followed). Osteoporotic bodies whose interior reads below the bone
threshold still count: a coarse voxel is bone when a quarter of its fine voxels are (the cortical ring).

The column places the fine sliding window (its box) and bounds what may be called a vertebra: foreground further
than a margin from it is not spine (`Predictor.predict_box`). No column means no spine in the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

BODY_HU = -300.0  # inside the patient (the largest such component; the table is apart from it)
SLAB_MM = 30.0
BLOCK_BONE_SHARE = 0.25  # a coarse voxel is bone when this share of its fine voxels is above the bone threshold
SLAB_BONE_SHARE = 0.35  # a slab pixel belongs to a candidate when it is bone in this share of the slab's slices
CORE_SHARE = 0.6  # a candidate's centre: its pixels bone in this share of the slices (bodies, not obliquely crossing ribs)
HALF_WIDTH_MM = 40.0  # a candidate reaches at most this far left and right of its centre (ribs joined to it are cut),
FRONT_MM, BACK_MM = 40.0, 80.0  # this far in front of it (aorta, heart) and behind it (spinous processes) ...
CANAL_FRONT_MM, CANAL_BACK_MM = 55.0, 65.0  # ... or, centred on its canal, this far (the body lies in front)
FULL_AREA_MM2 = 1500.0  # a candidate's reward grows with its cross-section up to this (a lumbar vertebra's)
LATERAL_MM = 30.0  # a candidate this far from the body's midline loses one unit of score
POSTERIOR_SHARE = 0.45  # the spine lies behind this share of the body's anterior-posterior extent
STEP_MM = 25.0  # moving this far between neighbouring slabs costs one unit
CANAL_MM2, CANAL_MAX_MM2 = 50.0, 900.0  # a hole this big inside a candidate is a spinal canal ...
CANAL_BONUS = 0.5  # ... and earns it this much; a column this long without a canal anywhere is no spine
CANAL_SEEN_MM = 90.0  # (a contrast-filled aorta or heart: solid; every real spine scan measured shows one)
MIN_SCORE = 0.2  # candidates scoring less are not considered
MIN_PATH_SCORE = 0.5  # a weaker best path means: no spine in this scan (a 16 mm column over 60 mm scores 0.8)


@dataclass(frozen=True)
class SpineColumn:
    """Per chosen slab: its z range and the candidate's in-plane box, in voxels of the (fine) store frame."""

    z0: np.ndarray  # (n,) first slice of each slab
    z1: np.ndarray  # (n,) one past its last slice
    lo: np.ndarray  # (n, 2) (y, x) lower corner
    hi: np.ndarray  # (n, 2) (y, x) upper corner, exclusive
    score: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Half-open (z, y, x) box around every slab of the column."""
        return (np.array([self.z0.min(), *self.lo.min(axis=0)]), np.array([self.z1.max(), *self.hi.max(axis=0)]))

    def mask(self, start: tuple[int, ...], stop: tuple[int, ...], margin_vox: float) -> np.ndarray:
        """Voxels of the box [start, stop) within `margin_vox` of the column: each slice takes the rectangle of the
        nearest slab (slices beyond the column's ends take the end slabs'), grown by the margin to the sides and
        the back but only a third of it to the front, where the aorta and the heart lie close to the bodies."""
        shape = tuple(b - a for a, b in zip(start, stop))
        z = np.arange(start[0], stop[0]) + 0.5
        centres = 0.5 * (self.z0 + self.z1)
        nearest = np.argmin(np.abs(z[:, None] - centres[None, :]), axis=1)
        grow_lo = np.array([margin_vox / 3.0, margin_vox])  # store y grows towards the back: lo[0] is the front
        lo = self.lo[nearest] - grow_lo - np.asarray(start[1:])  # (Z, 2) in box coordinates
        hi = self.hi[nearest] + margin_vox - np.asarray(start[1:])
        y = np.arange(shape[1])[None, :]
        x = np.arange(shape[2])[None, :]
        in_y = (y >= lo[:, :1]) & (y < hi[:, :1])  # (Z, Y)
        in_x = (x >= lo[:, 1:]) & (x < hi[:, 1:])  # (Z, X)
        return in_y[:, :, None] & in_x[:, None, :]


@dataclass(frozen=True)
class _Candidate:
    slab: int
    centre: np.ndarray  # (y, x) coarse voxels
    lo: np.ndarray
    hi: np.ndarray
    score: float
    canal: bool  # encloses a bone-free hole (the spinal canal; contrast-filled vessels and the heart are solid)


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping factor^3 blocks (the edge is padded by replication)."""
    if factor == 1:
        return volume.astype(np.float32, copy=False)
    pad = [(0, (-s) % factor) for s in volume.shape]
    padded = np.pad(volume.astype(np.float32, copy=False), pad, mode="edge")
    z, y, x = (s // factor for s in padded.shape)
    return padded.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5))


def coarse_bone(hu: np.ndarray, factor: int, threshold_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """(bone, body) on the grid `factor` times coarser: bone = a quarter of the block's voxels above threshold."""
    share = block_mean((hu > threshold_hu).astype(np.float32), factor)
    body = cc3d.largest_k(block_mean(hu, factor) > BODY_HU, k=1, connectivity=6) > 0
    return (share >= BLOCK_BONE_SHARE) & body, body


def _candidates(bone: np.ndarray, body: np.ndarray, index: int, spacing_mm: float) -> list[_Candidate]:
    """Scored bone regions of one slab (coarse arrays of that slab only)."""
    inside = body.any(axis=0)
    if not inside.any() or not bone.any():
        return []
    ys, xs = np.nonzero(inside)
    midline, front, back = xs.mean(), ys.min(), ys.max()
    share = bone.mean(axis=0)
    regions, n = cc3d.connected_components(share >= SLAB_BONE_SHARE, connectivity=8, return_N=True)
    out = []
    for region in range(1, n + 1):
        inside_region = regions == region
        canal = _canal(inside_region, spacing_mm)
        if canal is not None:  # the canal places the vertebra: body in front of it, arch and spinous process behind
            cy, cx = canal
            front_mm, back_mm = CANAL_FRONT_MM, CANAL_BACK_MM
        else:  # ribs cross a slab obliquely: the region's core (bone in most slices) is the candidate's centre
            core = np.nonzero(inside_region & (share >= CORE_SHARE))
            yy, xx = core if core[0].size else np.nonzero(inside_region)
            cy, cx = yy.mean(), xx.mean()
            front_mm, back_mm = FRONT_MM, BACK_MM
        lo = np.floor([cy - front_mm / spacing_mm, cx - HALF_WIDTH_MM / spacing_mm]).astype(int).clip(0)
        hi = np.ceil([cy + back_mm / spacing_mm, cx + HALF_WIDTH_MM / spacing_mm]).astype(int)
        near = inside_region[lo[0]:hi[0], lo[1]:hi[1]]  # a skull's ring around the brain is mostly far from it
        if not near.any():
            continue
        rows, cols = np.nonzero(near)
        lo, hi = lo + [rows.min(), cols.min()], lo + [rows.max() + 1, cols.max() + 1]
        area = rows.size * spacing_mm**2
        lateral = abs(cx - midline) * spacing_mm
        depth = (cy - front) / max(back - front, 1)  # 0 = front of the body, 1 = its back
        score = (min(area, FULL_AREA_MM2) / (FULL_AREA_MM2 / 3) - (lateral / LATERAL_MM) ** 2
                 - (max(0.0, POSTERIOR_SHARE - depth) / 0.15) ** 2 + (CANAL_BONUS if canal is not None else 0.0))
        if score > MIN_SCORE:
            out.append(_Candidate(index, np.array([cy, cx]), lo, hi, float(score), canal is not None))
    return out


def _canal(region: np.ndarray, spacing_mm: float) -> tuple[float, float] | None:
    """Centre (y, x) of the largest canal-sized hole a bone region encloses, or None (contrast-filled vessels and
    the heart are solid; a hole the size of a lung is the rib cage's, not a canal)."""
    holes, n = cc3d.connected_components(ndimage.binary_fill_holes(region) & ~region, connectivity=4, return_N=True)
    if n == 0:
        return None
    areas = np.bincount(holes.ravel())[1:] * spacing_mm**2
    fits = np.flatnonzero((areas >= CANAL_MM2) & (areas <= CANAL_MAX_MM2))
    if fits.size == 0:
        return None
    yy, xx = np.nonzero(holes == fits[np.argmax(areas[fits])] + 1)
    return float(yy.mean()), float(xx.mean())


def _best_path(slabs: list[list[_Candidate]], spacing_mm: float) -> tuple[list[_Candidate], float]:
    """The chain of candidates (at most one per slab; slabs may be skipped) with the highest total score minus
    the cost of moving between neighbouring slabs."""
    best_none, none_path = 0.0, []  # best path that chose nothing in the current slab
    previous: list[tuple[float, list[_Candidate]]] = []
    previous_candidates: list[_Candidate] = []
    for candidates in slabs:
        current = []
        for c in candidates:
            options = [(best_none, none_path)]
            for (value, path), p in zip(previous, previous_candidates):
                step = np.linalg.norm(c.centre - p.centre) * spacing_mm
                options.append((value - (step / STEP_MM) ** 2, path))
            value, path = max(options, key=lambda o: o[0])
            current.append((value + c.score, path + [c]))
        best_none, none_path = max([(best_none, none_path), *previous], key=lambda o: o[0])
        previous, previous_candidates = current, candidates
    value, path = max([(best_none, none_path), *previous], key=lambda o: o[0])
    return path, value


def find_column(hu: np.ndarray, spacing_mm: float, factor: int, threshold_hu: float) -> SpineColumn | None:
    """The spine column of a store-frame HU volume (z, y, x) at `spacing_mm`, searched on a grid `factor` times
    coarser; None when no path scores MIN_PATH_SCORE (no spine in the scan)."""
    bone, body = coarse_bone(hu, factor, threshold_hu)
    coarse_mm = spacing_mm * factor
    slab = max(1, int(round(SLAB_MM / coarse_mm)))
    starts = list(range(0, bone.shape[0], slab))
    slabs = [_candidates(bone[s:s + slab], body[s:s + slab], i, coarse_mm) for i, s in enumerate(starts)]
    path, score = _best_path(slabs, coarse_mm)
    length_mm = (path[-1].slab - path[0].slab + 1) * slab * coarse_mm if path else 0.0
    if not path or score < MIN_PATH_SCORE or (length_mm >= CANAL_SEEN_MM and not any(c.canal for c in path)):
        return None
    z0 = np.array([starts[c.slab] * factor for c in path])
    z1 = np.minimum(np.array([(starts[c.slab] + slab) * factor for c in path]), hu.shape[0])
    lo = np.array([c.lo * factor for c in path])
    hi = np.minimum(np.array([c.hi * factor for c in path]), np.asarray(hu.shape[1:]))
    return SpineColumn(z0, z1, lo, hi, score)
