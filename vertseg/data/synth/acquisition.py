"""Image formation of the clinical-CT phantoms: trabecular texture, the scanner's blur and slice profile, noise.

Drawn per case over the range of clinical protocols: a sharp or soft reconstruction kernel, slices from thin to
5 mm (the slice profile blurs along the thick axis), and low- to high-dose noise with the fine-grained correlation
of filtered back-projection.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vertseg.data.synth.grid import Grid
from vertseg.data.synth.tissues import Tissues

HU_RANGE = (-1024, 3071)


def _correlated_noise(shape: tuple[int, ...], sigma_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed by `sigma_vox` (per axis)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def acquire(hu: np.ndarray, core: np.ndarray, grid: Grid, tissues: Tissues, rng: np.random.Generator) -> np.ndarray:
    """int16 HU as a scanner would reconstruct the rendered volume."""
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    if core.any():
        lo = np.argwhere(core).min(axis=0)
        hi = np.argwhere(core).max(axis=0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        texture = _correlated_noise(hu[box].shape, np.maximum(0.8 / spacing, 0.4), rng)
        hu[box] += np.where(core[box], texture * tissues.texture_hu, 0.0).astype(np.float32)
    kernel_mm = rng.uniform(0.35, 0.85)  # in-plane point-spread (sharp bone kernel .. soft tissue kernel)
    sigma_vox = np.maximum(kernel_mm, 0.42 * spacing) / spacing  # slice profile dominates on thick axes
    hu = ndimage.gaussian_filter(hu, sigma_vox, mode="nearest")
    noise_hu = rng.uniform(6.0, 45.0)
    hu += _correlated_noise(hu.shape, np.full(3, rng.uniform(0.5, 0.9)), rng) * noise_hu
    hu += rng.normal(0.0, 8.0)  # calibration offset between scanners
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)
