"""Strong (photometric / noise) augmentation of Table A2, batched on the device and driven by one torch.Generator.

Only image intensities change; masks and labels are never touched (they are not even passed in). Each operation is
applied to a random subset of the batch with its table probability and a per-sample magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vertseg.training.config import AugmentConfig


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 3D Gaussian blur of (n, 1, Z, Y, X) with one sigma per sample (grouped convolution)."""
    n = x.shape[0]
    radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2.0 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    y = x.reshape(1, n, *x.shape[2:])
    for axis in range(3):
        shape = [n, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), kernel.view(shape), groups=n)
    return y.reshape_as(x)


def median_filter3(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 median filter of (n, 1, Z, Y, X) with replicated borders."""
    padded = F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate")
    patches = padded.unfold(2, 3, 1).unfold(3, 3, 1).unfold(4, 3, 1)
    return patches.reshape(*x.shape, 27).median(dim=-1).values


def clahe_slicewise(x: torch.Tensor, clip_limit: float, tiles: int = 8, nbins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of every axial (y, x) slice of (n, 1, Z, Y, X) in [0, 1].

    skimage conventions: `tiles` x `tiles` contextual regions, normalised clip limit (clip = clip_limit * tile pixels,
    at least 1), excess redistributed uniformly, bilinear interpolation between neighbouring tile mappings.
    """
    n, _, depth, height, width = x.shape
    slices = x.reshape(n * depth, 1, height, width)
    ty, tx = math.ceil(height / tiles), math.ceil(width / tiles)
    ny, nx = math.ceil(height / ty), math.ceil(width / tx)
    padded = F.pad(slices, (0, nx * tx - width, 0, ny * ty - height), mode="replicate")[:, 0]
    bins = (torch.nan_to_num(padded).clamp(0, 1) * (nbins - 1)).round().long()
    count = slices.shape[0]
    tile_bins = bins.view(count, ny, ty, nx, tx).permute(0, 1, 3, 2, 4).reshape(count, ny, nx, ty * tx)
    hist = torch.zeros(count, ny, nx, nbins, device=x.device, dtype=x.dtype)
    hist.scatter_add_(-1, tile_bins, torch.ones_like(tile_bins, dtype=x.dtype))
    clip = max(clip_limit * ty * tx, 1.0)
    excess = (hist - clip).clamp(min=0).sum(-1, keepdim=True)
    hist = hist.clamp(max=clip) + excess / nbins
    cdf = hist.cumsum(-1)
    cdf = cdf / cdf[..., -1:]

    def axis_weights(size: int, tile: int, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        centre = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / tile - 0.5
        low = centre.floor().clamp(0, n_tiles - 1)
        weight = (centre - low).clamp(0, 1)
        return low.long(), (low.long() + 1).clamp(max=n_tiles - 1), weight

    y0, y1, wy = axis_weights(height, ty, ny)
    x0, x1, wx = axis_weights(width, tx, nx)
    image_bins = bins[:, :height, :width]
    index = torch.arange(count, device=x.device).view(-1, 1, 1)

    def lookup(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return cdf[index, yi.view(1, -1, 1), xi.view(1, 1, -1), image_bins]

    wy, wx = wy.view(1, -1, 1), wx.view(1, 1, -1)
    out = (1 - wy) * ((1 - wx) * lookup(y0, x0) + wx * lookup(y0, x1)) + wy * ((1 - wx) * lookup(y1, x0) + wx * lookup(y1, x1))
    return out.reshape_as(x)


Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _ops(config: AugmentConfig) -> list[tuple[float, Op]]:
    """(probability, operation) in Table A2 order; each op maps a subset (n, 1, Z, Y, X) to a new tensor."""

    def scale_shift(x, g):
        a = _uniform(g, x.shape[0], config.scale_range, x)
        b = _uniform(g, x.shape[0], config.shift_range, x)
        return x * _per_sample(a) + _per_sample(b)

    def gamma(x, g):
        return x.clamp(0, 1) ** _per_sample(_uniform(g, x.shape[0], config.gamma_range, x))

    def unsharp(x, g):
        amount = _uniform(g, x.shape[0], config.unsharp_amount, x)
        blurred = gaussian_blur(x, torch.full_like(amount, config.unsharp_sigma))
        return x + _per_sample(amount) * (x - blurred)

    def gaussian_noise(x, g):
        sigma = _uniform(g, x.shape[0], config.gaussian_noise_sigma, x)
        return x + _per_sample(sigma) * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)

    def speckle(x, g):
        sigma = _uniform(g, x.shape[0], config.speckle_sigma, x)
        return x + x * _per_sample(sigma) * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)

    def salt_pepper(x, g):
        amount = _per_sample(_uniform(g, x.shape[0], config.salt_pepper_amount, x))
        u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
        x = torch.where(u < amount / 2, torch.ones_like(x), x)
        return torch.where(u > 1 - amount / 2, torch.zeros_like(x), x)

    def poisson(x, g):
        return torch.poisson(x.clamp(min=0) * config.poisson_peak, generator=g) / config.poisson_peak

    def blur(x, g):
        return gaussian_blur(x, _uniform(g, x.shape[0], config.blur_sigma, x))

    return [
        (config.scale_shift_p, scale_shift),
        (config.gamma_p, gamma),
        (config.clahe_p, lambda x, g: clahe_slicewise(x, config.clahe_clip)),
        (config.unsharp_p, unsharp),
        (config.gaussian_noise_p, gaussian_noise),
        (config.speckle_p, speckle),
        (config.salt_pepper_p, salt_pepper),
        (config.poisson_p, poisson),
        (config.blur_p, blur),
        (config.median_p, lambda x, g: median_filter3(x)),
    ]


def _apply_subset(x: torch.Tensor, chosen: torch.Tensor, op: Op, generator: torch.Generator) -> torch.Tensor:
    index = chosen.nonzero().flatten()
    if index.numel() == 0:
        return x
    x = x.clone()
    x[index] = op(x[index], generator).to(x.dtype)
    return x


def strong_augment(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The full strong pipeline on (B, 1, Z, Y, X) intensities in [0, 1]; the result is clipped to [0, 1]."""
    x = image
    for probability, op in _ops(config):
        chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < probability
        x = _apply_subset(x, chosen, op, generator).clamp(0, 1)
    return x


def labeled_photometric(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Section 2.5 for labeled volumes: strong pipeline with p = 0.5, otherwise mild scaling with p = 0.5."""
    u = torch.rand(image.shape[0], 2, generator=generator, device=image.device)
    strong = u[:, 0] < config.labeled_strong_p
    mild = ~strong & (u[:, 1] < config.labeled_mild_p)
    x = _apply_subset(image, strong, lambda s, g: strong_augment(s, config, g), generator)
    mild_op = lambda s, g: s * _per_sample(_uniform(g, s.shape[0], config.mild_scale, s))  # noqa: E731
    return _apply_subset(x, mild, mild_op, generator).clamp(0, 1)
