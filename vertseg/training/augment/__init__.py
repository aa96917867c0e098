"""Weak (geometric) and strong (photometric) augmentations of section 2.5, batched torch ops."""

from vertseg.training.augment.strong import labeled_photometric, strong_augment
from vertseg.training.augment.weak import WeakParams, apply_weak, sample_weak

__all__ = ["WeakParams", "apply_weak", "labeled_photometric", "sample_weak", "strong_augment"]
