"""The voxel grid a phantom is rendered on: shape, RAS affine, and bounding boxes of world-space regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) voxel index (i, j, k) -> world RAS mm

    def box(self, local_min, local_max, centre: np.ndarray, frame: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering a box given in a local frame (columns u, v, w) around `centre`; None if outside."""
        lo, hi = np.asarray(local_min, dtype=np.float64), np.asarray(local_max, dtype=np.float64)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = centre + corners @ frame.T
        return self.world_box(world)

    def aabb(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices covering the world-space axis-aligned box [lo, hi]."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return self.world_box(corners)

    def world_box(self, world_points: np.ndarray) -> tuple[slice, slice, slice] | None:
        index = self.to_index(world_points)
        lo = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def to_index(self, world_points: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.affine)
        return np.asarray(world_points, dtype=np.float64) @ inverse[:3, :3].T + inverse[:3, 3]

    def slabs(self, voxels: int = 2_000_000):
        """(box, float32 world coordinates) of consecutive slabs along the last axis of about `voxels` voxels each:
        whole-volume painting with bounded memory on large grids."""
        step = max(1, voxels // max(self.shape[0] * self.shape[1], 1))
        for k0 in range(0, self.shape[2], step):
            box = (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(k0, min(k0 + step, self.shape[2])))
            yield box, self.world(box).astype(np.float32)

    def world(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """World RAS coordinates (nx, ny, nz, 3) of the voxels in `box`."""
        axes = [np.arange(s.start, s.stop, dtype=np.float64) for s in box]
        i, j, k = np.meshgrid(*axes, indexing="ij")
        m, t = self.affine[:3, :3], self.affine[:3, 3]
        return (
            i[..., None] * m[:, 0] + j[..., None] * m[:, 1] + k[..., None] * m[:, 2] + t
        )
