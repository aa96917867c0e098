"""Implicit solids on coordinate arrays (..., 3). Each returns an approximate signed distance in mm (negative
inside), so one evaluation yields both the solid (<= 0) and its cancellous core (<= -cortex thickness)."""

from __future__ import annotations

import numpy as np


def _ellipse_sdf(u: np.ndarray, v: np.ndarray, a: float, b: float, power: float = 2.0) -> np.ndarray:
    r = (np.abs(u) / a) ** power + (np.abs(v) / b) ** power
    return (r ** (1.0 / power) - 1.0) * min(a, b)


def superellipse_cylinder(
    p: np.ndarray, a: float, b: float, half_h: np.ndarray | float, power: float = 2.5
) -> np.ndarray:
    """Cylinder along w with a superelliptic (u, v) cross-section; `half_h` may vary per point."""
    return np.maximum(_ellipse_sdf(p[..., 0], p[..., 1], a, b, power), np.abs(p[..., 2]) - half_h)


def ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    radii = np.asarray(radii, dtype=np.float64)
    q = (p - np.asarray(centre, dtype=p.dtype)) / radii.astype(p.dtype)
    return (np.sqrt(np.einsum("...i,...i->...", q, q)) - 1.0) * float(radii.min())


def elliptic_annulus(
    p: np.ndarray, centre_v: float, inner: tuple[float, float], thickness: float, half_h: float
) -> np.ndarray:
    """A ring around the w axis through (0, centre_v): between the inner ellipse and one `thickness` larger."""
    u, v = p[..., 0], p[..., 1] - centre_v
    outside_inner = -_ellipse_sdf(u, v, *inner)
    inside_outer = _ellipse_sdf(u, v, inner[0] + thickness, inner[1] + thickness)
    return np.maximum(np.maximum(outside_inner, inside_outer), np.abs(p[..., 2]) - half_h)


def capsule(p: np.ndarray, start, end, radius: float) -> np.ndarray:
    """Distance to the segment start-end minus `radius`."""
    start = np.asarray(start, dtype=p.dtype)
    axis = np.asarray(end, dtype=p.dtype) - start
    q = p - start
    length2 = max(float(axis @ axis), 1e-12)
    t = np.clip((q @ axis) / length2, 0.0, 1.0)
    d2 = np.einsum("...i,...i->...", q, q) - t * (2.0 * (q @ axis) - t * length2)
    return np.sqrt(np.maximum(d2, 0.0)) - radius
