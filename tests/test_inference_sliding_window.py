"""Sliding-window inference: Gaussian importance, window placement, exact reassembly on known functions, TTA."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vertseg.inference.sliding_window import (
    ID_STRIDE,
    gaussian_importance,
    mirror_sets,
    padded_shape,
    sliding_window_predict,
    window_starts,
)

PATCH = (16, 12, 8)


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def pointwise_net(batch: torch.Tensor):
    """Foreground probability = the input voxel value; identification probabilities = (1 - m, m) of the 4x4x4 mean m."""
    p = batch.clamp(0.01, 0.99)
    low = F.avg_pool3d(p, ID_STRIDE)
    return logit(p), torch.log(torch.cat([1 - low, low], dim=1))


def test_gaussian_importance_is_centred_symmetric_and_positive():
    g = gaussian_importance((16, 12, 8), sigma_scale=0.125)
    assert g.shape == (16, 12, 8) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    for axis in range(3):
        np.testing.assert_allclose(g, np.flip(g, axis=axis), rtol=1e-6)
    # separable Gaussian with sigma = patch / 8: one step of 2 voxels from the centre along z (sigma 2) costs exp(-1/2)
    profile = g[:, 5, 3] / g[:, 5, 3].max()
    centre = (16 - 1) / 2
    expected = np.exp(-0.5 * ((np.arange(16) - centre) / 2.0) ** 2)
    np.testing.assert_allclose(profile, np.maximum(expected / expected.max(), profile.min()), rtol=1e-5)


@pytest.mark.parametrize("size,patch,overlap", [(40, 16, 0.5), (16, 16, 0.5), (100, 32, 0.25), (68, 32, 0.0), (36, 8, 0.75)])
def test_window_starts_cover_and_overlap(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(s % ID_STRIDE == 0 for s in starts)
    gaps = np.diff(starts)
    assert np.all(gaps <= patch) and np.all(gaps > 0)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered.all()


def test_padded_shape_fits_patch_and_quarter_grid():
    assert padded_shape((40, 5, 30), (16, 12, 8)) == (40, 12, 32)
    for size, patch, padded in zip((40, 5, 30), (16, 12, 8), padded_shape((40, 5, 30), (16, 12, 8))):
        assert padded >= max(size, patch) and (padded - patch) % ID_STRIDE == 0


def test_reassembly_is_exact_for_a_pointwise_network():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.05, 0.95, size=(37, 29, 21)).astype(np.float32)
    out = sliding_window_predict(image, pointwise_net, PATCH, overlap=0.5, batch_size=3, id_dtype=torch.float32)
    np.testing.assert_allclose(out.fg_prob, image, atol=1e-5)
    # the 1/4 grid covers ceil(shape / 4); where a 4x4x4 block lies fully inside the image it is its mean
    assert out.id_prob.shape == (2, 10, 8, 6)
    inner = image[:36, :28, :20].reshape(9, 4, 7, 4, 5, 4).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out.id_prob[1, :9, :7, :5], inner, atol=1e-5)
    np.testing.assert_allclose(out.id_prob.sum(axis=0), 1.0, atol=1e-5)


def test_weights_follow_the_gaussian_for_window_dependent_outputs():
    """A network answering a different constant per window: each voxel is the importance-weighted mean."""
    shape = (24, 12, 8)
    patch = (16, 12, 8)
    seen: list[float] = []

    def constant_per_window(batch):
        values = batch[:, :, 0, 0, 0]  # the first voxel of each window identifies it (image = z index)
        seen.extend(values.flatten().tolist())
        p = (0.1 + values / 100).view(-1, 1, 1, 1, 1).expand(batch.shape).clone()
        return logit(p), None

    image = np.broadcast_to(np.arange(24, dtype=np.float32)[:, None, None], shape).copy()
    out = sliding_window_predict(image, constant_per_window, patch, overlap=0.5, batch_size=1)
    starts = window_starts(24, 16, 0.5)
    assert starts == [0, 8] and sorted(seen) == [0.0, 8.0]
    g = gaussian_importance(patch)
    num = np.zeros(shape)
    den = np.zeros(shape)
    for s in starts:
        num[s : s + 16] += g * (0.1 + s / 100)
        den[s : s + 16] += g
    np.testing.assert_allclose(out.fg_prob, num / den, rtol=1e-5)
    assert out.id_prob is None and out.windows == 2


def test_mirror_tta_is_exact_for_an_equivariant_network_and_averages_views():
    rng = np.random.default_rng(1)
    image = rng.uniform(0.05, 0.95, size=(20, 16, 12)).astype(np.float32)
    assert mirror_sets((0, 2)) == [(), (0,), (2,), (0, 2)]
    out = sliding_window_predict(image, pointwise_net, PATCH, overlap=0.5, mirror_axes=(0, 1, 2), id_dtype=torch.float32)
    np.testing.assert_allclose(out.fg_prob, image, atol=1e-5)
    assert out.windows == len(list(itertools.product(window_starts(20, 16, .5), window_starts(16, 12, .5),
                                                     window_starts(12, 8, .5)))) * 8

    def x_ramp_net(batch):  # not flip-equivariant: answers the window-local x position
        ramp = torch.linspace(0.2, 0.8, batch.shape[-1]).expand(batch.shape)
        return logit(ramp), None

    flat = np.zeros((16, 12, 8), np.float32)
    plain = sliding_window_predict(flat, x_ramp_net, PATCH, overlap=0.5).fg_prob
    mirrored = sliding_window_predict(flat, x_ramp_net, PATCH, overlap=0.5, mirror_axes=(2,)).fg_prob
    np.testing.assert_allclose(plain[0, 0], np.linspace(0.2, 0.8, 8), atol=1e-6)
    np.testing.assert_allclose(mirrored, 0.5, atol=1e-6)  # the view and its mirror average to the middle


def test_float16_identification_accumulator_stays_close_to_float32():
    rng = np.random.default_rng(2)
    image = rng.uniform(0.05, 0.95, size=(32, 24, 16)).astype(np.float32)
    half = sliding_window_predict(image, pointwise_net, PATCH, overlap=0.5, id_dtype=torch.float16)
    full = sliding_window_predict(image, pointwise_net, PATCH, overlap=0.5, id_dtype=torch.float32)
    assert half.id_prob.dtype == np.float16
    np.testing.assert_allclose(half.id_prob.astype(np.float32), full.id_prob, atol=3e-3)


def test_bad_patch_sizes_are_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        sliding_window_predict(np.zeros((8, 8, 8), np.float32), pointwise_net, (6, 8, 8))
    with pytest.raises(ValueError, match="pad first"):
        window_starts(10, 16, 0.5)


def test_progress_reports_every_forward_pass_up_to_the_window_count():
    image = np.random.default_rng(3).uniform(0.05, 0.95, size=(40, 20, 12)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    out = sliding_window_predict(image, pointwise_net, PATCH, overlap=0.5, batch_size=2, on_progress=lambda *a: calls.append(a))
    total = len(list(itertools.product(window_starts(40, 16, .5), window_starts(20, 12, .5), window_starts(12, 8, .5))))
    assert total > 4 and out.windows == total
    done = [d for d, _ in calls]
    assert calls[0] == (0, total) and calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert done == [0] + [min(n, total) for n in range(2, total + 2, 2)]  # one call per batch of 2 windows
