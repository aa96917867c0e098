"""One loaded network applied to whole store-frame volumes: localise the spine, then sliding-window inference.

Built once and reused for every case of a batch (or once per Ray actor).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vertseg.config import VertsegConfig
from vertseg.inference.localisation import (
    SpineBox,
    align_box,
    block_mean,
    bone_box,
    downsample_factor,
    expand_box,
    foreground_box,
    full_box,
    scale_box,
)
from vertseg.inference.sliding_window import WindowPrediction, sliding_window_predict
from vertseg.postprocess.components import min_voxels


class Predictor:
    """A network in eval mode plus the inference settings: `localise` then `predict_box` for each volume."""

    def __init__(self, model: nn.Module, config: VertsegConfig, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.spacing = float(config.data.spacing_mm)
        self.patch_size = tuple(config.data.patch_size)
        self.with_id = bool(config.model.identification_branch)

    def net(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(batch)
        return out.seg[0], out.identification

    def _foreground_only(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.model(batch).seg[0], None

    def localise(self, image: np.ndarray, hu: np.ndarray) -> SpineBox:
        """The spine box (store voxels) from the network's coarse pass, the bone heuristic, or the whole volume."""
        cfg = self.config.inference
        if cfg.localisation == "none":
            return full_box(image.shape)
        factor = downsample_factor(self.spacing, cfg.localisation_spacing_mm)
        coarse_spacing = self.spacing * factor
        margin = cfg.localisation_margin_mm / self.spacing
        if cfg.localisation == "network":
            coarse = block_mean(image, factor)
            fg = sliding_window_predict(
                coarse, self._foreground_only, self.patch_size, overlap=0.0,
                batch_size=cfg.window_batch_size, device=self.device,
            ).fg_prob
            found = foreground_box(fg, cfg.seg_threshold, min_voxels(cfg.min_fragment_ml, (coarse_spacing,) * 3))
            if found is not None:
                start, stop = scale_box(*found, fg.shape, np.array(fg.shape) * factor)
                return align_box(expand_box(start, stop, margin, image.shape, "network"), image.shape)
        found = bone_box(block_mean(hu, factor), coarse_spacing, cfg.bone_threshold_hu)
        if found is None:
            return full_box(image.shape, "none (no spine found)")
        coarse_shape = tuple(-(-s // factor) for s in image.shape)
        start, stop = scale_box(*found, coarse_shape, np.array(coarse_shape) * factor)
        return align_box(expand_box(start, stop, margin, image.shape, "bone"), image.shape)

    def predict_box(self, image: np.ndarray, box: SpineBox) -> WindowPrediction:
        """Sliding-window outputs on `box` of a store-frame volume normalised to [0, 1]."""
        cfg = self.config.inference
        net = self.net if self.with_id else self._foreground_only
        return sliding_window_predict(
            np.ascontiguousarray(image[box.slices]), net, self.patch_size,
            overlap=cfg.overlap, batch_size=cfg.window_batch_size, sigma_scale=cfg.gaussian_sigma_scale,
            mirror_axes=tuple(cfg.mirror_axes) if cfg.mirror_tta else (),
            id_dtype=torch.float16 if cfg.id_accumulator_dtype == "float16" else torch.float32,
            device=self.device,
        )
