"""Voxel <-> physical geometry of SimpleITK images, and nibabel-style axis codes for them."""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_lps(image) -> np.ndarray:
    """4x4 map from continuous index (i, j, k) (ITK order = NIfTI array order) to physical LPS mm."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return affine


def affine_ras(image) -> np.ndarray:
    """The same map into RAS mm: the NIfTI/nibabel affine of the image."""
    return LPS_TO_RAS @ affine_lps(image)


def axcodes(image) -> tuple[str, str, str]:
    """Nibabel axis codes of the image (each code names where its index increases)."""
    import nibabel as nib

    return tuple(nib.aff2axcodes(affine_ras(image)))


def voxel_to_lps(points_ijk: np.ndarray, image) -> np.ndarray:
    """Continuous voxel indices (N, 3) -> physical LPS mm (N, 3)."""
    affine = affine_lps(image)
    return np.asarray(points_ijk, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def lps_to_voxel(points_lps: np.ndarray, image) -> np.ndarray:
    """Physical LPS mm (N, 3) -> continuous voxel indices (N, 3)."""
    affine = affine_lps(image)
    return (np.asarray(points_lps, dtype=np.float64) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def same_grid(a, b, *, atol_mm: float = 1e-3, rtol: float = 1e-4) -> str | None:
    """None when two images share one voxel grid, else a sentence saying how they differ."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"shape {tuple(a.GetSize())} != {tuple(b.GetSize())}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=rtol, atol=0):
        return f"spacing {tuple(np.round(a.GetSpacing(), 4))} != {tuple(np.round(b.GetSpacing(), 4))}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=rtol):
        return "direction cosines differ"
    tolerance = atol_mm + rtol * max(1.0, float(np.max(np.abs(a.GetOrigin()))))
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance):
        return f"origin {tuple(np.round(a.GetOrigin(), 3))} != {tuple(np.round(b.GetOrigin(), 3))}"
    return None
