"""Loss terms of Eq. 3-11 as pure functions of tensors."""

from vertseg.training.losses.consistency import (
    class_frequency_weights,
    cls_consistency_loss,
    probability_mse,
    seg_consistency_loss,
    teacher_foreground,
)
from vertseg.training.losses.identification import (
    class_competition_loss,
    combine_identification,
    instance_dice_loss,
    kl_heatmap_loss,
)
from vertseg.training.losses.segmentation import deep_supervision_loss, dice_bce

__all__ = [
    "class_competition_loss",
    "class_frequency_weights",
    "cls_consistency_loss",
    "combine_identification",
    "deep_supervision_loss",
    "dice_bce",
    "instance_dice_loss",
    "kl_heatmap_loss",
    "probability_mse",
    "seg_consistency_loss",
    "teacher_foreground",
]
