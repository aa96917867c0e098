"""Inference and post-processing settings (paper section 2.6)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vertseg.config_base import ConfigModel
from vertseg.postprocess.assign import PostprocessSettings

_POSTPROCESS = PostprocessSettings()  # post-processing defaults live there once; the fields below mirror them

LabelResampling = Literal["label_linear", "nearest"]  # how a labelmap goes back to the input's grid


class InferenceConfig(ConfigModel):
    seg_threshold: float = Field(_POSTPROCESS.seg_threshold, gt=0, lt=1)  # section 2.6: foreground at probability 0.5
    overlap: float = Field(0.4, ge=0, lt=1)  # between neighbouring windows; nnU-Net's 0.5 scored the same, 1/3 more windows
    window_batch_size: int = Field(2, ge=1)  # windows per forward pass
    amp: bool = False  # bf16 autocast where the device computes bf16 natively: ~2x faster windows, logits within ~0.03 of float32 (`--fast`)
    window_downsample: int = Field(1, ge=1)  # windows on the box block-averaged by this (2: 8x fewer voxels; coarse-trained nets)
    mirror_tta: bool = False  # average the mirrored views (`vertseg predict --tta`)
    mirror_axes: tuple[int, ...] = (2,)  # store axes (z, y, x) flipped by TTA; x = left-right, the anatomical mirror
    gaussian_sigma_scale: float = Field(0.125, gt=0)  # importance sigma = scale * patch size (nnU-Net's 1/8)
    id_accumulator_dtype: Literal["float16", "float32"] = "float16"  # 1/4-resolution per-class accumulator
    min_fragment_ml: float = Field(_POSTPROCESS.min_fragment_ml, ge=0)
    decoder: Literal["dp", "paper"] = _POSTPROCESS.decoder
    allow_l6: bool = _POSTPROCESS.allow_l6  # the chain may end with L6 (VerSe 25): a spine with one is not shifted by a level (docs/postprocessing.md)
    allow_t13: bool = _POSTPROCESS.allow_t13  # the chain may pass through T13 (VerSe 28): same, for a 13th thoracic vertebra
    min_vertebra_ml: float = Field(_POSTPROCESS.min_vertebra_ml, ge=0)  # a touching-vertebrae component is split only into pieces this big
    peak_threshold: float = Field(_POSTPROCESS.peak_threshold, ge=0, le=1)  # seeds=peaks: a class whose map never reaches this gives no seed
    seeds: Literal["cores", "sequence", "peaks"] = _POSTPROCESS.seeds  # split seeds: mask cores + level sequence model, the model alone, or class peaks (section 2.6)
    core_dynamic_mm: float = Field(_POSTPROCESS.core_dynamic_mm, gt=0)  # seeds=cores: a core rises this far above the depth where it joins another
    core_floor_mm: float = Field(_POSTPROCESS.core_floor_mm, ge=0)  # seeds=cores: the mask is eroded no shallower than this
    seed_regions: bool = _POSTPROCESS.seed_regions  # also seed each level's inner slices where it wins the class map (sure maps only, below)
    seed_region_confidence: float = Field(_POSTPROCESS.seed_region_confidence, ge=0, le=1)  # seed_regions: the level's cells hold a median class share this high
    interpolated_regions: bool = _POSTPROCESS.interpolated_regions  # seed_regions: read from the class maps interpolated at each voxel (a region stops at the boundary inside a cell; a small level whose cells straddle two levels still gets one)
    level_axis: Literal["centre-line", "axial"] = _POSTPROCESS.level_axis  # the level sequence walks slices across the spine's centre line, or axial slices
    none_state: bool = _POSTPROCESS.none_state  # background channel may call the sequence's ends "not a vertebra" (sacrum, fragments); see docs/postprocessing.md
    max_none_share: float = Field(_POSTPROCESS.max_none_share, ge=0, le=1)  # none_state: if "not a vertebra" takes more of the bone (a network unsure on unfamiliar scans), decode without it
    fragment_prior: float = Field(_POSTPROCESS.fragment_prior, ge=0, lt=1)  # none_state: cost of "not a vertebra" between two levels (0: only at the ends)
    split_merged: bool = _POSTPROCESS.split_merged  # split components holding several centroids along nearest-centroid regions
    split_metric: Literal["geodesic", "euclidean"] = _POSTPROCESS.split_metric  # nearest centroid through the mask, or straight line
    gap_aware: bool = _POSTPROCESS.gap_aware  # dp may skip a level where the centroid step is ~2x its neighbours (missed vertebra)
    split_aware: bool = _POSTPROCESS.split_aware  # dp may give a piece cut off a vertebra (short step or small volume) that vertebra's level
    # label_linear: +2.3 / +3.0 Acc_ID on trained 3 mm models, one vertebra fewer on the one-hot oracle (thin ones lose
    # to background where both are interpolated), so not the default (docs/benchmarks.md)
    label_resampling: LabelResampling = "nearest"  # labelmap onto the input's grid: nearest or each label's mask linearly
    # bone: ~1 s, where the network's coarse pass costs ~40 s on 2 cores (docs/inference.md)
    localisation: Literal["network", "bone", "none"] = "bone"  # label-free spine box for the fine pass
    localisation_spacing_mm: float = Field(2.0, gt=0)  # coarse network pass; vertebrae stay >= ~20 voxels tall
    localisation_margin_mm: float = Field(25.0, ge=0)  # added on every side of the spine box
    box_growth_rounds: int = Field(2, ge=0)  # fine-pass foreground touching an inner face of the box grows it and reruns
    bone_threshold_hu: float = 200.0  # bone localisation: cortical bone is above ~200 HU (osteoporotic interiors are not)
    column_margin_mm: float = Field(35.0, ge=0)  # bone localisation: foreground further than this from the spine column is dropped

    @model_validator(mode="after")
    def _mirror_axes_exist(self) -> "InferenceConfig":
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"inference.mirror_axes {list(self.mirror_axes)} must be distinct store axes among 0, 1, 2")
        return self


# `vertseg predict --fast`: windows overlapping by a quarter (18 instead of 48 on a 512x512x300 CT), the
# seconds-cheap bone localisation (named, so --fast stays fast whatever the default) and bf16 windows where native. Running the windows on a 2x
# coarser grid (`window_downsample=2`, TotalSegmentator's idea) is faster still but cost 26 binary-Dice points with
# a checkpoint trained at the finer spacing (docs/inference.md), so it is left to checkpoints validated for it.
FAST_OVERRIDES = ("inference.overlap=0.25", "inference.localisation=bone", "inference.amp=true")
