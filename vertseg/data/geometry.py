"""Image grids, the canonical store frame and the resampling that moves arrays between grids.

The store frame is axis-aligned in world space with numpy axes (z, y, x) pointing to (I, P, R), so one
resample onto it both reorients and respaces a scan (oblique scans included). Everything needed to map a
prediction back onto the original scan grid is kept in `CaseGeometry`; these functions do no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

# ITK direction of the store grid: index x -> Right (-L), y -> Posterior (+P), z -> Inferior (-S), in LPS.
CANONICAL_DIRECTION = np.diag([-1.0, 1.0, -1.0])
HU_BACKGROUND = -1024.0  # air: the CT value outside the scanned field of view
_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


@dataclass(frozen=True)
class GridGeometry:
    """A voxel grid in ITK terms: `size_xyz`/`spacing_xyz` in ITK index order, origin in LPS mm, 3x3 direction."""

    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, columns are the index axes in LPS

    @classmethod
    def of_image(cls, image: sitk.Image) -> "GridGeometry":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "GridGeometry":
        return cls(
            tuple(int(v) for v in payload["size_xyz"]),
            tuple(float(v) for v in payload["spacing_xyz"]),
            tuple(float(v) for v in payload["origin_lps"]),
            tuple(float(v) for v in payload["direction"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size_xyz": list(self.size_xyz),
            "spacing_xyz": list(self.spacing_xyz),
            "origin_lps": list(self.origin_lps),
            "direction": list(self.direction),
        }

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size_xyz[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def affine_lps(self) -> np.ndarray:
        """4x4 map from numpy index (z, y, x) to LPS millimetres."""
        linear = self.direction_matrix @ np.diag(self.spacing_xyz)
        affine = np.eye(4)
        affine[:3, :3] = linear[:, ::-1]
        affine[:3, 3] = self.origin_lps
        return affine

    def affine_ras(self) -> np.ndarray:
        """4x4 map from numpy index (z, y, x) to RAS millimetres (the frame reports use)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def axcodes(self) -> str:
        """Orientation letters of the ITK index axes (x, y, z) in nibabel's "points towards" convention."""
        letters = []
        for column in self.direction_matrix.T:
            axis = int(np.argmax(np.abs(column)))
            letters.append(_LPS_LETTERS[axis][0 if column[axis] > 0 else 1])
        return "".join(letters)

    def is_oblique(self, tol: float = 1e-3) -> bool:
        return bool(np.any(np.abs(np.abs(self.direction_matrix).max(axis=0) - 1.0) > tol))

    def reference_image(self) -> sitk.Image:
        """An empty image on this grid, used as the resampling target."""
        image = sitk.Image([int(v) for v in self.size_xyz], sitk.sitkUInt8)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class CaseGeometry:
    """The original scan grid and the store grid of one case; enough to map arrays both ways exactly."""

    original: GridGeometry
    canonical: GridGeometry

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "CaseGeometry":
        return cls(GridGeometry.from_dict(payload["original"]), GridGeometry.from_dict(payload["canonical"]))

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original.to_dict(), "canonical": self.canonical.to_dict()}


def _corner_indices_zyx(shape_zyx: tuple[int, ...]) -> np.ndarray:
    edges = [(-0.5, n - 0.5) for n in shape_zyx]
    return np.array(np.meshgrid(*edges, indexing="ij")).reshape(3, -1).T


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to (N, 3) points."""
    points = np.asarray(points, dtype=float)
    return points @ affine[:3, :3].T + affine[:3, 3]


def canonical_grid(original: GridGeometry, spacing_mm: float) -> GridGeometry:
    """The store grid: canonical direction, isotropic `spacing_mm`, covering the original field of view, same centre."""
    corners = apply_affine(original.affine_lps(), _corner_indices_zyx(original.shape_zyx))
    along_axes = corners @ CANONICAL_DIRECTION  # coordinates along the canonical x, y, z axes
    low, high = along_axes.min(axis=0), along_axes.max(axis=0)
    size = np.maximum(1, np.ceil((high - low) / spacing_mm - 1e-3)).astype(int)
    first = (low + high) / 2 - (size - 1) / 2 * spacing_mm
    origin = CANONICAL_DIRECTION @ first
    return GridGeometry(
        tuple(int(v) for v in size),
        (float(spacing_mm),) * 3,
        tuple(float(v) for v in origin),
        tuple(float(v) for v in CANONICAL_DIRECTION.ravel()),
    )


def case_geometry(image: sitk.Image, spacing_mm: float) -> CaseGeometry:
    original = GridGeometry.of_image(image)
    return CaseGeometry(original, canonical_grid(original, spacing_mm))


# label_linear: each label's mask interpolated linearly, the largest wins (smooth label boundaries, no new labels)
Interpolation = Literal["linear", "nearest", "label_linear"]
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "label_linear": sitk.sitkLabelLinear}


def resample_to_grid(image: sitk.Image, grid: GridGeometry, interpolation: Interpolation, default: float) -> np.ndarray:
    """Resample a SimpleITK image onto `grid`; returns the (z, y, x) array, `default` outside the source."""
    resampled = sitk.Resample(
        image, grid.reference_image(), sitk.Transform(), _INTERPOLATORS[interpolation], float(default), image.GetPixelID()
    )
    return sitk.GetArrayFromImage(resampled)


def image_on_grid(array_zyx: np.ndarray, grid: GridGeometry) -> sitk.Image:
    if tuple(array_zyx.shape) != grid.shape_zyx:
        raise ValueError(f"array shape {array_zyx.shape} does not match grid shape {grid.shape_zyx}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(grid.spacing_xyz)
    image.SetOrigin(grid.origin_lps)
    image.SetDirection(grid.direction)
    return image


def to_original_grid(
    array_canonical: np.ndarray, case_meta: CaseGeometry, interpolation: Interpolation = "nearest", default: float = 0.0
) -> np.ndarray:
    """Map a store-frame array (labels: nearest or label_linear; probabilities/CT: linear) onto the original scan grid (z, y, x)."""
    source = image_on_grid(array_canonical, case_meta.canonical)
    return resample_to_grid(source, case_meta.original, interpolation, default)


def canonical_to_original_affine(case_meta: CaseGeometry) -> np.ndarray:
    """4x4 map from store index (z, y, x) to original-grid index (z, y, x)."""
    return np.linalg.inv(case_meta.original.affine_lps()) @ case_meta.canonical.affine_lps()


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    points = np.array(points, dtype=float)
    points[..., :2] *= -1
    return points


def world_to_index(grid: GridGeometry, points_lps: np.ndarray) -> np.ndarray:
    """Continuous (z, y, x) indices of LPS points on `grid`."""
    return apply_affine(np.linalg.inv(grid.affine_lps()), np.atleast_2d(points_lps))
