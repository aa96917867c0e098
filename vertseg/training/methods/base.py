"""The interface every training method implements, and the pieces they share (supervised loss, student bundle)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vertseg.model import SegIdOutput
from vertseg.training.config import TrainConfig
from vertseg.training.ema import EMATeacher
from vertseg.training.heatmaps import fill_missing_centroids, render_heatmaps, to_low_resolution
from vertseg.training.losses import (
    class_competition_loss,
    cls_consistency_loss,
    combine_identification,
    deep_supervision_loss,
    instance_dice_loss,
    kl_heatmap_loss,
    seg_consistency_loss,
    teacher_foreground,
)

ID_FACTOR = 4  # identification heatmaps at 1/4 resolution (section 2.3)


class StudentBundle(nn.Module):
    """The trained network(s) behind one `forward`, so DDP sees exactly one forward per step.

    `members` holds one network (two for CPS). `fp` = (start, stop) also decodes that slice of the batch from
    dropout-perturbed encoder features (UniMatch's feature perturbation stream).
    """

    def __init__(self, members: list[nn.Module], feature_dropout: float = 0.5) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.feature_dropout = feature_dropout

    def forward(self, x: torch.Tensor, fp: tuple[int, int] | None = None) -> tuple[list[SegIdOutput], SegIdOutput | None]:
        if fp is None:
            return [member(x) for member in self.members], None
        features = self.members[0].encode(x)
        outputs = [self.members[0].decode(features)]
        perturbed = [F.dropout3d(f[fp[0] : fp[1]], self.feature_dropout, training=True) for f in features]
        return outputs + [m(x) for m in self.members[1:]], self.members[0].decode(perturbed)


@dataclass
class StepContext:
    """Everything a method needs besides the networks and the batch, for one step."""

    config: TrainConfig
    epoch: int
    consistency_weight: float  # lambda(t) * lambda_cons (Eq. 1-2)
    tau_seg: float
    tau_cls: float
    class_weights: torch.Tensor
    generator: torch.Generator
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class Views:
    """Augmented inputs: labeled batch (image, mask, labels, centroids) and unlabeled weak/strong views."""

    labeled: dict[str, torch.Tensor]
    weak: torch.Tensor | None = None
    strong: torch.Tensor | None = None


def split_output(output: SegIdOutput, sizes: list[int]) -> list[SegIdOutput]:
    """Split a batched output into consecutive chunks of `sizes` samples."""
    seg = [s.split(sizes) for s in output.seg]
    ident = output.identification.split(sizes) if output.identification is not None else [None] * len(sizes)
    return [SegIdOutput(seg=[s[i] for s in seg], identification=ident[i]) for i in range(len(sizes))]


def supervised_loss(output: SegIdOutput, batch: dict[str, torch.Tensor], config: TrainConfig, logs: dict[str, float], prefix: str = "") -> torch.Tensor:
    """L_sup of Eq. 3: deep-supervised segmentation plus alpha_cls times the reweighted identification terms."""
    loss_cfg = config.loss
    seg = deep_supervision_loss(output.seg, batch["mask"], loss_cfg.scale_weights, loss_cfg.alpha_seg, loss_cfg.eps)
    logs[f"{prefix}loss_seg"] = float(seg.detach())
    if output.identification is None:
        return seg
    low_shape = tuple(output.identification.shape[2:])
    centroids = fill_missing_centroids(batch["centroids"], batch["labels"])
    heat, present = render_heatmaps(to_low_resolution(centroids, ID_FACTOR), low_shape, loss_cfg.heatmap_sigma)
    kl = kl_heatmap_loss(output.identification, heat, present)
    inst = instance_dice_loss(output.identification, batch["labels"], loss_cfg.eps)
    ident, w_kl, w_inst = combine_identification(kl, inst, loss_cfg.id_reweighting)
    logs.update({f"{prefix}loss_kl": float(kl.detach()), f"{prefix}loss_inst": float(inst.detach()), f"{prefix}w_kl": w_kl, f"{prefix}w_inst": w_inst})
    if loss_cfg.id_ce_weight > 0:
        ce = class_competition_loss(output.identification, batch["labels"], loss_cfg.id_ce_background_weight,
                                    loss_cfg.id_ce_balance)
        logs[f"{prefix}loss_id_ce"] = float(ce.detach())
        ident = ident + loss_cfg.id_ce_weight * ce
    return seg + loss_cfg.alpha_cls * ident


@dataclass(frozen=True)
class PseudoTargets:
    """A teacher's (or weak view's) detached outputs for Eq. 10-11, and the positions its identification
    pseudo-labels may teach (`loss.cls_pseudo_region`); built once per step, shared by every student view."""

    seg: torch.Tensor
    identification: torch.Tensor
    foreground: torch.Tensor | None


def pseudo_targets(teacher: SegIdOutput, ctx: StepContext) -> PseudoTargets:
    cfg = ctx.config.loss
    seg, identification = teacher.seg[0].detach(), teacher.identification.detach()
    foreground = (teacher_foreground(seg, tuple(identification.shape[2:]), cfg.seg_pseudo_threshold)
                  if cfg.cls_pseudo_region == "teacher_foreground" else None)
    return PseudoTargets(seg, identification, foreground)


def pseudo_label_losses(student: SegIdOutput, targets: PseudoTargets, ctx: StepContext
                        ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Eq. 10 and 11 of one student view against `targets`: (L_cons^seg, L_cons^cls, pass_seg, pass_cls)."""
    cfg = ctx.config.loss
    seg, pass_seg = seg_consistency_loss(student.seg[0], targets.seg, ctx.tau_seg, cfg.seg_pseudo_threshold)
    cls, pass_cls = cls_consistency_loss(student.identification, targets.identification, ctx.tau_cls, cfg.temperature,
                                         ctx.class_weights, targets.foreground)
    return seg, cls, pass_seg, pass_cls


def joint_forward(
    student: nn.Module, labeled: dict[str, torch.Tensor], extra: list[torch.Tensor], ctx: StepContext,
    fp: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[list[SegIdOutput]], SegIdOutput | None]:
    """One forward over the labeled batch followed by the `extra` batches (one DDP forward per step).

    Returns L_sup on the labeled part (summed over the bundle's members), each member's output split per batch,
    and the feature-perturbed output when `fp` is given.
    """
    outputs, fp_out = student(torch.cat([labeled["image"], *extra]), fp=fp)
    sizes = [labeled["image"].shape[0], *(e.shape[0] for e in extra)]
    parts = [split_output(output, sizes) for output in outputs]
    prefix = (lambda i: f"s{i}_") if len(parts) > 1 else (lambda i: "")
    sup = sum(supervised_loss(p[0], labeled, ctx.config, ctx.logs, prefix=prefix(i)) for i, p in enumerate(parts))
    return sup, parts, fp_out


class Method:
    """One training method of Table 3. Subclasses set the flags and implement `consistency_loss`.

    `students`: networks trained by SGD (2 for CPS); `uses_teacher`: keeps an EMA teacher; `uses_unlabeled`: draws
    unlabeled batches (only while the consistency weight is positive). While there are none, every method trains
    on L_sup alone (Eq. 3), which is also the warm-up of Eq. 2.
    """

    name: str = ""
    students: int = 1
    uses_teacher: bool = False
    uses_unlabeled: bool = False

    def loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        if not self.uses_unlabeled or views.weak is None or ctx.consistency_weight <= 0:
            return joint_forward(student, views.labeled, [], ctx)[0]
        return self.consistency_loss(student, teacher, views, ctx)

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        """L_sup + lambda(t) L_cons for a step with unlabeled views."""
        raise NotImplementedError(f"method {self.name!r} uses unlabeled data but defines no consistency loss")
