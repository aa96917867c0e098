"""Weak (geometric) augmentation, batched on the tensors' device: flips and an in-plane rotation (Table A2).

One sampled transform is applied consistently to image (linear), mask and labels (nearest) and centroids (exact
coordinate map); identification heatmaps are rendered afterwards from the moved centroids, so they follow too.

Cranio-caudal (Z) flip. Flipping z puts C1 at the bottom of the patch. We keep it (p = 0.25, as the paper) and let
the labels travel with their voxels: every vertebra keeps its anatomical class, so identification targets stay
anatomically right and the network must identify vertebrae from their own appearance (shape, size, ribs), not from
their position in the patch. We never renumber by position, which would teach a wrong anatomy. Inference runs in
the canonical frame (C1 superior) where the post-processing's cranio-caudal sequence prior holds; set
`train.augment.flip_z_p=0` to train without the flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vertseg.training.config import AugmentConfig


@dataclass
class WeakParams:
    """Per-sample transform: `flips` (B, 3) bool over (z, y, x), `angle` (B,) radians of the in-plane rotation."""

    flips: torch.Tensor
    angle: torch.Tensor


def sample_weak(batch: int, config: AugmentConfig, generator: torch.Generator, device: torch.device) -> WeakParams:
    u = torch.rand(batch, 4, generator=generator, device=device)
    probs = torch.tensor([config.flip_z_p, config.flip_xy_p, config.flip_xy_p], device=device)
    flips = u[:, :3] < probs
    angle = (u[:, 3] * 2.0 - 1.0) * math.radians(config.rotate_deg)
    return WeakParams(flips=flips, angle=angle)


def forward_matrix(params: WeakParams) -> torch.Tensor:
    """(B, 3, 3) map of centred voxel coordinates (z, y, x): output = R_yx(angle) @ Flip @ input."""
    sign = 1.0 - 2.0 * params.flips.double()
    flip = torch.diag_embed(sign)
    cos, sin = params.angle.double().cos(), params.angle.double().sin()
    rot = torch.zeros_like(flip)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return rot @ flip


def _rotation_theta(params: WeakParams, shape: tuple[int, int, int]) -> torch.Tensor:
    """affine_grid matrix (B, 3, 4) of the in-plane rotation alone: normalised output -> input coordinates, in
    grid_sample's (x, y, z) order. Flips are applied exactly with `torch.flip` before it."""
    no_flip = WeakParams(flips=torch.zeros_like(params.flips), angle=params.angle)
    inverse = forward_matrix(no_flip).transpose(1, 2)  # orthogonal
    half = torch.tensor(shape, dtype=torch.float64, device=inverse.device) / 2.0
    normalised = inverse * half.view(1, 1, 3) / half.view(1, 3, 1)  # D^-1 R^-1 D with D = diag(S/2)
    theta = torch.zeros(inverse.shape[0], 3, 4, dtype=torch.float64, device=inverse.device)
    theta[:, :, :3] = normalised.flip(1).flip(2)
    return theta


def _flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Per-sample flips of the last three axes of (B, ..., Z, Y, X)."""
    for axis in range(3):
        chosen = flips[:, axis].view(-1, *([1] * (x.dim() - 1)))
        x = torch.where(chosen, x.flip(x.dim() - 3 + axis), x)
    return x


def apply_weak(
    params: WeakParams,
    image: torch.Tensor,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    centroids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Transform image (B,1,Z,Y,X) and optionally mask (B,1,...), labels (B,Z,Y,X), centroids (B,K,3) consistently."""
    shape = tuple(image.shape[2:])
    theta = _rotation_theta(params, shape).to(image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    rotate = lambda x, mode: F.grid_sample(_flip(x, params.flips), grid, mode=mode, padding_mode="zeros", align_corners=False)  # noqa: E731
    out = {"image": rotate(image, "bilinear")}
    if mask is not None:
        out["mask"] = rotate(mask.float(), "nearest").to(mask.dtype)
    if labels is not None:
        out["labels"] = rotate(labels.unsqueeze(1).float(), "nearest").squeeze(1).round().to(labels.dtype)
    if centroids is not None:
        centre = (torch.tensor(shape, dtype=torch.float64, device=centroids.device) - 1.0) / 2.0
        rel = centroids.double() - centre
        moved_c = torch.einsum("bij,bkj->bki", forward_matrix(params).to(rel.device), rel) + centre
        out["centroids"] = moved_c.to(centroids.dtype)
    return out
