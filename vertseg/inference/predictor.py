"""One loaded network applied to whole store-frame volumes: localise the spine, then sliding-window inference.

Built once and reused for every case of a batch (or once per Ray actor). With `inference.window_downsample` > 1
the network sees the box block-averaged onto a coarser grid and its probabilities are interpolated back
(trilinear), so post-processing and every output keep the store grid: thresholding a smooth probability keeps
boundaries finer than upsampling coarse labels would.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vertseg.config import VertsegConfig
from vertseg.inference.column import block_mean, find_column
from vertseg.inference.localisation import (
    NO_SPINE,
    SpineBox,
    align_box,
    downsample_factor,
    expand_box,
    foreground_box,
    foreground_mask,
    full_box,
    grown_box,
    scale_box,
)
from vertseg.inference.sliding_window import ID_STRIDE, WindowPrediction, WindowProgress, sliding_window_predict
from vertseg.model.precision import native_bf16
from vertseg.postprocess.components import min_voxels


class Predictor:
    """A network in eval mode plus the inference settings: `localise` then `predict_spine` for each volume."""

    def __init__(self, model: nn.Module, config: VertsegConfig, device: torch.device | str = "cpu",
                 on_progress: WindowProgress | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.spacing = float(config.data.spacing_mm)
        self.on_progress = on_progress  # called after each forward pass of the fine sliding window
        self.patch_size = tuple(config.data.patch_size)
        self.with_id = bool(config.model.identification_branch)
        self.amp = config.inference.amp and native_bf16(self.device)  # window logits are read as float32 either way

    @property
    def weights(self) -> dict[str, str] | None:
        """Which weights the network holds, as outputs record them (`WeightsSource.parameters`: the checkpoint or
        ONNX file name and its sha256 prefix); None for a network built in memory (tests, training)."""
        source = getattr(self.model, "weights_source", None)
        return None if source is None else source.parameters

    def net(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(batch)
        return out.seg[0], out.identification

    def _foreground_only(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(batch)[0], None

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
        column = find_column(hu, self.spacing, factor, cfg.bone_threshold_hu)
        if column is None:
            return full_box(image.shape, NO_SPINE)
        box = expand_box(*column.bounds(), margin, image.shape, "bone")
        return align_box(replace(box, column=column), image.shape)

    def predict_spine(self, image: np.ndarray, box: SpineBox) -> tuple[SpineBox, WindowPrediction]:
        """`predict_box`, rerun on a grown box while the foreground touches an inner face (`grown_box`): a localiser
        that cut off a vertebra would otherwise cost that vertebra and, through the level sequence, its neighbours."""
        cfg = self.config.inference
        if box.no_spine:  # nothing to look at: labels nothing, and the case record says why
            return box, WindowPrediction(np.zeros(image.shape, np.float32), None, 0)
        window = self.predict_box(image, box)
        fragment = min_voxels(cfg.min_fragment_ml, (self.spacing,) * 3)
        for _ in range(cfg.box_growth_rounds):
            mask = foreground_mask(window.fg_prob, cfg.seg_threshold, fragment)
            bigger = grown_box(box, mask, cfg.localisation_margin_mm / self.spacing, image.shape)
            if bigger is None:
                break
            box, window = bigger, self.predict_box(image, bigger)
        return box, window

    def predict_box(self, image: np.ndarray, box: SpineBox) -> WindowPrediction:
        """Sliding-window outputs on `box` of a store-frame volume normalised to [0, 1], on the store grid."""
        cfg = self.config.inference
        net = self.net if self.with_id else self._foreground_only
        roi = np.ascontiguousarray(image[box.slices])
        factor = cfg.window_downsample
        window = sliding_window_predict(
            block_mean(roi, factor) if factor > 1 else roi, net, self.patch_size,
            overlap=cfg.overlap, batch_size=cfg.window_batch_size, sigma_scale=cfg.gaussian_sigma_scale,
            mirror_axes=tuple(cfg.mirror_axes) if cfg.mirror_tta else (),
            id_dtype=torch.float16 if cfg.id_accumulator_dtype == "float16" else torch.float32,
            device=self.device, on_progress=self.on_progress,
        )
        window = upsample_prediction(window, roi.shape, factor) if factor > 1 else window
        if box.column is not None:  # foreground off the spine column is not a vertebra (ribs, pelvis, heart, ...)
            window.fg_prob *= box.column.mask(box.start, box.stop, cfg.column_margin_mm / self.spacing)
        return window


def upsample_prediction(coarse: WindowPrediction, shape: tuple[int, ...], factor: int) -> WindowPrediction:
    """Trilinear interpolation of a prediction made on `block_mean(volume, factor)` back onto the volume's grid.

    A coarse voxel's centre lies at fine index factor * i + (factor - 1) / 2, which is what `align_corners=False`
    assumes; the same holds on the 1/4 identification grid, whose voxels span 4 * factor fine voxels.
    """
    fg = _interpolate(coarse.fg_prob, factor)[tuple(slice(0, s) for s in shape)]
    id_prob = None
    if coarse.id_prob is not None:
        low = tuple(-(-s // ID_STRIDE) for s in shape)
        id_prob = _interpolate(coarse.id_prob, factor)[(slice(None), *(slice(0, s) for s in low))]
        id_prob = id_prob.astype(coarse.id_prob.dtype)
    return WindowPrediction(np.ascontiguousarray(fg), None if id_prob is None else np.ascontiguousarray(id_prob),
                            coarse.windows)


def _interpolate(volume: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) or (C, Z, Y, X) float array, every spatial axis `factor` times longer (float32 arithmetic)."""
    tensor = torch.from_numpy(np.asarray(volume, dtype=np.float32))
    batch = tensor[None, None] if tensor.dim() == 3 else tensor[None]
    out = F.interpolate(batch, scale_factor=factor, mode="trilinear", align_corners=False)
    return (out[0, 0] if tensor.dim() == 3 else out[0]).numpy()
