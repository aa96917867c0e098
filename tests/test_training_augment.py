"""Weak augmentation keeps image, mask, labels and centroids aligned; strong augmentation never touches masks."""

from __future__ import annotations

import math

import pytest
import torch

from vertseg.training.augment import apply_weak, labeled_photometric, sample_weak, strong_augment
from vertseg.training.augment.strong import clahe_slicewise, gaussian_blur, median_filter3
from vertseg.training.augment.weak import WeakParams
from vertseg.training.config import AugmentConfig
from vertseg.training.heatmaps import fill_missing_centroids


def blocks(batch: int = 2, shape=(16, 24, 24)):
    """Two labeled boxes off-centre, image = bright where labeled, exact centroids."""
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    labels[:, 2:6, 4:10, 13:19] = 1
    labels[:, 9:14, 12:20, 5:9] = 2
    mask = (labels > 0).float().unsqueeze(1)
    image = mask * 0.8 + 0.1
    centroids = fill_missing_centroids(torch.full((batch, 2, 3), float("nan")), labels)
    return image, mask, labels, centroids


def test_flip_only_is_exact_on_every_tensor():
    image, mask, labels, centroids = blocks(1)
    params = WeakParams(flips=torch.tensor([[True, False, True]]), angle=torch.zeros(1))
    out = apply_weak(params, image, mask, labels, centroids)
    assert torch.allclose(out["image"], image.flip(2).flip(4), atol=1e-6)
    assert torch.equal(out["labels"], labels.flip(1).flip(3))
    expected = fill_missing_centroids(torch.full((1, 2, 3), float("nan")), out["labels"])
    assert torch.allclose(out["centroids"], expected, atol=1e-5)
    # the cranio-caudal flip keeps identities on their voxels: class 1 is now the lower box
    assert out["centroids"][0, 0, 0] > out["centroids"][0, 1, 0]


def test_rotation_keeps_image_mask_labels_and_centroids_aligned():
    image, mask, labels, centroids = blocks(4)
    config = AugmentConfig(rotate_deg=22.5)
    gen = torch.Generator().manual_seed(3)
    params = sample_weak(4, config, gen, torch.device("cpu"))
    params.angle = torch.tensor([math.radians(a) for a in (22.5, -22.5, 10.0, -5.0)])
    out = apply_weak(params, image, mask, labels, centroids)
    assert out["labels"].dtype == labels.dtype and set(out["labels"].unique().tolist()) <= {0, 1, 2}
    assert torch.equal(out["mask"], (out["labels"] > 0).float().unsqueeze(1))  # nearest on both: same geometry
    overlap = ((out["image"] > 0.5) == (out["mask"] > 0.5)).float().mean()
    assert overlap > 0.97  # linear image vs nearest mask differ only on boundary voxels
    recomputed = fill_missing_centroids(torch.full((4, 2, 3), float("nan")), out["labels"])
    assert (out["centroids"] - recomputed).abs().max() < 0.6  # voxel-level agreement of the coordinate map


def test_weak_sampling_follows_table_probabilities():
    gen = torch.Generator().manual_seed(0)
    params = sample_weak(20000, AugmentConfig(flip_z_p=0.25), gen, torch.device("cpu"))  # Table A2's Z rate
    rates = params.flips.float().mean(0)
    assert rates[0] == pytest.approx(0.25, abs=0.02) and rates[1:].sub(0.5).abs().max() < 0.02
    assert not sample_weak(2000, AugmentConfig(), gen, torch.device("cpu")).flips[:, 0].any()  # default: no Z flip
    assert params.angle.abs().max() <= math.radians(22.5)


def test_strong_augmentation_is_photometric_deterministic_and_in_range():
    image, mask, labels, _ = blocks(4)
    mask_before, labels_before = mask.clone(), labels.clone()
    config = AugmentConfig()
    a = strong_augment(image, config, torch.Generator().manual_seed(7))
    b = strong_augment(image, config, torch.Generator().manual_seed(7))
    c = strong_augment(image, config, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == image.shape and a.min() >= 0 and a.max() <= 1
    lab = labeled_photometric(image, config, torch.Generator().manual_seed(1))
    assert lab.shape == image.shape
    assert torch.equal(mask, mask_before) and torch.equal(labels, labels_before)  # bit-identical masks


def test_trainer_views_leave_masks_bit_identical_to_weak_geometry():
    from vertseg.config import build_config
    from vertseg.training.trainer import Trainer

    config = build_config({}, ["model.base_width=2", "train.method=proposed", "train.schedule.e_cons=0"])
    trainer = Trainer(config)
    trainer.epoch = 10  # consistency on: unlabeled weak/strong views are built
    image, mask, labels, centroids = blocks(2, (16, 8, 8))
    batch = {"image": image, "mask": mask, "labels": labels, "centroids": centroids}
    state = trainer.generator.get_state()
    views = trainer.make_views(batch, image, trainer._context())
    trainer.generator.set_state(state)
    params = sample_weak(2, config.train.augment, trainer.generator, trainer.device)
    geometry_only = apply_weak(params, image, mask, labels, centroids)
    assert torch.equal(views.labeled["mask"], geometry_only["mask"])
    assert torch.equal(views.labeled["labels"], geometry_only["labels"])
    assert views.strong.shape == views.weak.shape == image.shape


def test_filters_by_hand():
    x = torch.zeros(1, 1, 9, 9, 9)
    x[0, 0, 4, 4, 4] = 1.0  # an isolated spike: the median removes it, the blur spreads it preserving the sum
    assert median_filter3(x).abs().max() == 0
    blurred = gaussian_blur(x, torch.tensor([1.0]))
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred[0, 0, 4, 4, 4] < 1.0
    ramp = torch.linspace(0.4, 0.6, 32).view(1, 1, 1, 1, 32).expand(1, 1, 2, 32, 32).contiguous()
    eq = clahe_slicewise(ramp, 0.03)
    assert eq.min() >= 0 and eq.max() <= 1
    assert (eq.max() - eq.min()) > (ramp.max() - ramp.min())  # a low-contrast slice gains contrast


TABLE_A2 = {  # the documented ranges (Table A2; mild scaling from section 2.5), checked against the default config
    "mild_scale": (0.95, 1.05), "scale_range": (0.8, 1.2), "shift_range": (-0.1, 0.1), "gamma_range": (0.7, 1.5),
    "gaussian_noise_sigma": (0.0, 0.025), "speckle_sigma": (0.0, 0.05),
}
STRONG_PROBABILITIES = ("scale_shift_p", "gamma_p", "clahe_p", "unsharp_p", "gaussian_noise_p", "speckle_p",
                        "salt_pepper_p", "poisson_p", "blur_p", "median_p")


def only(operation: str, **settings) -> AugmentConfig:
    """Table A2 with every strong operation off except `operation` (always applied)."""
    return AugmentConfig(**{p: float(p == operation) for p in STRONG_PROBABILITIES}, **settings)


def two_level_images(n: int) -> torch.Tensor:
    """n samples of (1, 2, 4, 4) with intensities 0.3 (left half) and 0.6 (right half), far from the clip at 0 and 1."""
    x = torch.full((n, 1, 2, 4, 4), 0.3)
    x[..., 2:] = 0.6
    return x


def assert_spans(values: torch.Tensor, bounds: tuple[float, float], name: str) -> None:
    """Every value within `bounds`, and the samples reach both ends (a narrower range would not)."""
    low, high = bounds
    margin = 0.1 * (high - low)
    assert values.min() >= low - 1e-5 and values.max() <= high + 1e-5, (name, values.min(), values.max())
    assert values.min() < low + margin and values.max() > high - margin, (name, values.min(), values.max())


def test_labeled_photometric_mild_scaling_stays_within_its_range():
    """Section 2.5: volumes not sent through the strong pipeline get a mild scaling in [0.95, 1.05]."""
    config = AugmentConfig(labeled_strong_p=0.0, labeled_mild_p=1.0)
    x = two_level_images(200)
    y = labeled_photometric(x, config, torch.Generator().manual_seed(0))
    factor = y / x
    per_sample = factor.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-6)  # one factor per volume
    assert_spans(per_sample[:, 0], TABLE_A2["mild_scale"], "mild scale")
    assert (per_sample[:, 0] != 1).all()


def test_labeled_photometric_strong_path_scales_and_shifts_within_table_a2():
    config = only("scale_shift_p", labeled_strong_p=1.0)
    x = two_level_images(200)
    y = labeled_photometric(x, config, torch.Generator().manual_seed(1))
    low, high = y[:, 0, 0, 0, 0], y[:, 0, 0, 0, 3]  # the images of 0.3 and 0.6
    alpha = (high - low) / 0.3
    beta = low - 0.3 * alpha
    assert torch.allclose(y, alpha.view(-1, 1, 1, 1, 1) * x + beta.view(-1, 1, 1, 1, 1), atol=1e-6)
    assert_spans(alpha, TABLE_A2["scale_range"], "alpha")
    assert_spans(beta, TABLE_A2["shift_range"], "beta")


def test_strong_gamma_within_table_a2():
    config = only("gamma_p")
    x = two_level_images(200)
    y = strong_augment(x, config, torch.Generator().manual_seed(2))
    gamma = y.log() / x.log()
    per_sample = gamma.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-4)
    assert_spans(per_sample[:, 0], TABLE_A2["gamma_range"], "gamma")


def test_strong_noise_magnitudes_within_table_a2():
    """Additive Gaussian noise: per-volume standard deviation up to 0.025; speckle: relative deviation up to 0.05."""
    x = torch.full((100, 1, 8, 16, 16), 0.5)
    for operation, bounds, relative in (("gaussian_noise_p", TABLE_A2["gaussian_noise_sigma"], False),
                                        ("speckle_p", TABLE_A2["speckle_sigma"], True)):
        y = strong_augment(x, only(operation), torch.Generator().manual_seed(3))
        spread = ((y - x) / (x if relative else 1.0)).flatten(1).std(1)
        assert spread.max() < bounds[1] * 1.1 and spread.max() > bounds[1] * 0.85, (operation, spread.max())
        assert spread.min() < bounds[1] * 0.15, (operation, spread.min())


def test_labeled_photometric_with_table_defaults_changes_three_volumes_in_four():
    """p = 0.5 strong pipeline, else p = 0.5 mild scaling: about 75 % of labeled volumes change, never the layout."""
    image, *_ = blocks(400, (4, 8, 8))
    config = AugmentConfig()
    out = labeled_photometric(image, config, torch.Generator().manual_seed(4))
    changed = (out != image).flatten(1).any(1).float().mean()
    assert 0.68 < changed < 0.82, changed
    assert out.min() >= 0 and out.max() <= 1
