"""Identification targets: Gaussian heatmaps at the identification resolution (section 2.4.2).

Centroids arrive in full-resolution patch voxel coordinates (z, y, x); the identification head predicts on a grid
downsampled by `factor` (4), whose voxel i covers full-resolution voxels [factor*i, factor*(i+1)), so its centre
is at factor*i + (factor-1)/2.
"""

from __future__ import annotations

import torch


def to_low_resolution(centroids: torch.Tensor, factor: int) -> torch.Tensor:
    """Full-resolution voxel coordinates -> coordinates on the 1/factor grid (voxel centres aligned)."""
    return (centroids - (factor - 1) / 2.0) / factor


def fill_missing_centroids(centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replace NaN centroids of vertebrae visible in `labels` (B, Z, Y, X) by their mask centres of mass.

    Dataset centroid files are preferred (vertebral-body centroids); mask centres are the fallback the issue allows.
    """
    batch, num_classes, _ = centroids.shape
    shape = labels.shape[1:]
    grids = torch.meshgrid(*[torch.arange(n, device=labels.device, dtype=torch.float64) for n in shape], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (N, 3)
    flat = labels.reshape(batch, -1)
    filled = centroids.clone()
    for b in range(batch):
        counts = torch.bincount(flat[b], minlength=num_classes + 1)[1 : num_classes + 1].double()
        sums = torch.stack(
            [torch.bincount(flat[b], weights=coords[:, a], minlength=num_classes + 1)[1 : num_classes + 1] for a in range(3)],
            dim=1,
        )
        centres = (sums / counts.clamp(min=1).unsqueeze(1)).to(centroids.dtype)
        missing = torch.isnan(centroids[b]).any(dim=1) & (counts > 0)
        filled[b][missing] = centres[missing]
    return filled


def render_heatmaps(centroids: torch.Tensor, shape: tuple[int, int, int], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian per present vertebra, normalised to sum 1 over the grid.

    centroids: (B, K, 3) coordinates on the grid of `shape`, NaN = absent. Returns heatmaps (B, K, *shape) and the
    (B, K) boolean `present` mask; absent vertebrae get an all-zero map. A centroid outside the grid still renders
    its visible tail (a vertebra cut by the patch border keeps a target), unless nothing of it is visible.
    """
    present = torch.isfinite(centroids).all(dim=-1)
    safe = torch.where(present.unsqueeze(-1), centroids, torch.zeros_like(centroids))
    axes = [torch.arange(n, device=centroids.device, dtype=centroids.dtype) for n in shape]
    log_terms = [
        -((axes[a].view(1, 1, -1) - safe[..., a : a + 1]) ** 2) / (2.0 * sigma**2) for a in range(3)
    ]  # (B, K, n_a) each: the Gaussian is separable
    log_h = log_terms[0][..., :, None, None] + log_terms[1][..., None, :, None] + log_terms[2][..., None, None, :]
    log_h = log_h - torch.logsumexp(log_h.flatten(2), dim=-1)[..., None, None, None]
    heat = log_h.exp()
    visible = present & (log_terms[0].max(-1).values + log_terms[1].max(-1).values + log_terms[2].max(-1).values > -18.0)
    heat = heat * visible[..., None, None, None]
    return heat, visible
