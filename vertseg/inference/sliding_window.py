"""Sliding-window inference over a whole (cropped) volume with Gaussian importance weighting.

Windows overlap by `overlap`; each window's probabilities are weighted by a Gaussian centred on the window
(borders of a patch see less context, so they count less) and normalised by the summed weights. Memory stays
bounded: the foreground probability is accumulated at full resolution (one float32 volume plus its weights) but
the K+1 identification channels only at the network's 1/4 resolution, in float16 by default.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ID_STRIDE = 4  # the identification head predicts at 1/4 resolution (section 2.3)

# (B, 1, Z, Y, X) image batch -> (foreground logits (B, 1, Z, Y, X), identification logits (B, K+1, Z/4, Y/4, X/4) or None)
NetFn = Callable[[torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]
# (windows done, windows in all) after each forward pass: drives the per-case progress bar
WindowProgress = Callable[[int, int], None]


def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian centred on the patch, max 1, strictly positive (so every voxel gets some weight)."""
    weights = np.ones(patch_size, dtype=np.float64)
    for axis, size in enumerate(patch_size):
        coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
        profile = np.exp(-0.5 * (coords / (sigma_scale * size)) ** 2)
        shape = [1] * len(patch_size)
        shape[axis] = size
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float, align: int = ID_STRIDE) -> list[int]:
    """Start indices covering [0, size) with windows of `patch` overlapping by at least `overlap`.

    `size - patch` must be a multiple of `align` so every start lands on the 1/4-resolution grid.
    """
    if size < patch:
        raise ValueError(f"volume size {size} is smaller than the patch {patch}; pad first")
    if (size - patch) % align:
        raise ValueError(f"size {size} - patch {patch} is not a multiple of {align}")
    if size == patch:
        return [0]
    step = max(align, patch * (1.0 - overlap))
    count = int(np.ceil((size - patch) / step)) + 1
    # flooring keeps consecutive starts at most ceil(step / align) * align <= patch apart: no gaps
    return sorted({int(s // align) * align for s in np.linspace(0, size - patch, count)})


def padded_shape(shape: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """Smallest shape >= `shape` and >= the patch, with (size - patch) a multiple of the 1/4 grid."""
    out = []
    for size, patch in zip(shape, patch_size):
        size = max(size, patch)
        out.append(patch + int(np.ceil((size - patch) / ID_STRIDE)) * ID_STRIDE)
    return tuple(out)


def mirror_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every subset of the mirrored axes (the identity first): the TTA views."""
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@dataclass
class WindowPrediction:
    """Volume-level output: `fg_prob` (Z, Y, X) float32 and `id_prob` (K+1, Z/4, Y/4, X/4) or None."""

    fg_prob: np.ndarray
    id_prob: np.ndarray | None
    windows: int


def sliding_window_predict(
    image: np.ndarray,
    net: NetFn,
    patch_size: tuple[int, int, int],
    *,
    overlap: float = 0.5,
    batch_size: int = 2,
    sigma_scale: float = 0.125,
    mirror_axes: tuple[int, ...] = (),
    id_dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    on_progress: WindowProgress | None = None,
) -> WindowPrediction:
    """Predict a (Z, Y, X) float32 volume window by window; the input is padded with 0 (normalised air) as needed.

    The identification grid of the output covers the padded volume cropped to ceil(shape / 4).
    """
    if any(p % ID_STRIDE for p in patch_size):
        raise ValueError(f"patch size {patch_size} must be a multiple of {ID_STRIDE}")
    device = torch.device(device)
    shape = tuple(image.shape)
    padded = padded_shape(shape, patch_size)
    volume = torch.zeros((1, 1) + padded, dtype=torch.float32, device=device)
    volume[(0, 0) + tuple(slice(0, s) for s in shape)] = torch.as_tensor(image, dtype=torch.float32, device=device)

    importance = torch.as_tensor(gaussian_importance(patch_size, sigma_scale), device=device)
    importance_low = F.avg_pool3d(importance[None, None], ID_STRIDE)[0, 0]
    low_patch = tuple(p // ID_STRIDE for p in patch_size)
    low_padded = tuple(p // ID_STRIDE for p in padded)

    fg_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    id_sum: torch.Tensor | None = None
    id_weight = torch.zeros(low_padded, dtype=torch.float32, device=device)

    starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(padded, patch_size))))
    views = mirror_sets(tuple(mirror_axes))
    if on_progress is not None:
        on_progress(0, len(starts))
    for first in range(0, len(starts), batch_size):
        chunk = starts[first : first + batch_size]
        batch = torch.cat([volume[(..., *_window(start, patch_size))] for start in chunk])
        fg, ident = _predict_views(net, batch, views)
        for n, start in enumerate(chunk):
            region = _window(start, patch_size)
            fg_sum[region] += fg[n, 0] * importance
            weight_sum[region] += importance
            if ident is None:
                continue
            if id_sum is None:
                id_sum = torch.zeros((ident.shape[1],) + low_padded, dtype=id_dtype, device=device)
            low_region = _window(tuple(s // ID_STRIDE for s in start), low_patch)
            id_sum[(slice(None), *low_region)] += (ident[n] * importance_low).to(id_dtype)
            id_weight[low_region] += importance_low
        if on_progress is not None:
            on_progress(first + len(chunk), len(starts))

    fg_prob = (fg_sum / weight_sum)[tuple(slice(0, s) for s in shape)]
    id_prob = None
    if id_sum is not None:
        low_shape = tuple(-(-s // ID_STRIDE) for s in shape)
        id_sum /= id_weight.to(id_dtype)
        id_prob = id_sum[(slice(None), *(slice(0, s) for s in low_shape))].cpu().numpy()
    return WindowPrediction(fg_prob.cpu().numpy(), id_prob, len(starts) * len(views))


def _window(start: tuple[int, ...], size: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(s, s + n) for s, n in zip(start, size))


@torch.inference_mode()
def _predict_views(net: NetFn, batch: torch.Tensor, views: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Average foreground sigmoid and identification softmax over the mirrored views (flipped back)."""
    fg_total: torch.Tensor | None = None
    id_total: torch.Tensor | None = None
    for axes in views:
        dims = [a + 2 for a in axes]
        seg_logits, id_logits = net(batch.flip(dims) if dims else batch)
        fg = torch.sigmoid(seg_logits.float())
        fg = fg.flip(dims) if dims else fg
        fg_total = fg if fg_total is None else fg_total + fg
        if id_logits is not None:
            probs = torch.softmax(id_logits.float(), dim=1)
            probs = probs.flip(dims) if dims else probs
            id_total = probs if id_total is None else id_total + probs
    scale = 1.0 / len(views)
    return fg_total * scale, (id_total * scale if id_total is not None else None)
