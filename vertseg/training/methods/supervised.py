"""Fully supervised methods: `seg_only` (segmentation branch only, Fig. 2 baseline) and `fsl` (dual branch, +ID)."""

from __future__ import annotations

from vertseg.training.methods.base import Method


class Supervised(Method):
    """L_sup only (Eq. 3). For `seg_only` the model config has no identification branch, so L_sup = L_seg."""

    def __init__(self, name: str) -> None:
        self.name = name
