"""The interface every training method implements, and the pieces they share (supervised loss, student bundle)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vertseg.model import SegIdOutput
from vertseg.postprocess.assign import PostprocessSettings
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
from vertseg.training.pseudo_labels import (
    ClassBalance,
    argmax_pseudo_labels,
    class_map_entropy,
    hidden_classes,
    pseudo_label_accuracy,
    sequence_pseudo_labels,
    teacher_probabilities,
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
    cls_enabled: bool = True  # the readiness gate (`train.ssl.ready_acc_id`) is open
    balance: ClassBalance | None = None  # running class shares (`train.ssl.class_thresholds` / `distribution_alignment`)
    postprocess: PostprocessSettings | None = None  # decodes `sequence` pseudo-labels
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # of the training patches
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class Views:
    """Augmented inputs: labeled batch (image, mask, labels, centroids) and unlabeled weak/strong views.
    `hidden`: the weak view's labels where the unlabelled scan has them (-1 elsewhere), for diagnostics only."""

    labeled: dict[str, torch.Tensor]
    weak: torch.Tensor | None = None
    strong: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


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
    """A teacher's (or weak view's) detached outputs for Eq. 10-11: segmentation logits, identification
    pseudo-classes and the positions they teach (`keep`: confident, vertebra, inside the teacher's foreground when
    `loss.cls_pseudo_region` says so, and only once the readiness gate is open); built once per step, shared by
    every student view."""

    seg: torch.Tensor
    classes: torch.Tensor
    keep: torch.Tensor


def pseudo_targets(teacher: SegIdOutput, ctx: StepContext, hidden: torch.Tensor | None = None) -> PseudoTargets:
    """Eq. 11-12 with the `train.ssl` switches; logs the class-map spread and, with `hidden` labels, the
    pseudo-labels' accuracy (diagnostics only)."""
    cfg, ssl = ctx.config.loss, ctx.config.ssl
    seg, identification = teacher.seg[0].detach(), teacher.identification.detach()
    shape = tuple(identification.shape[2:])
    foreground = (teacher_foreground(seg, shape, cfg.seg_pseudo_threshold)
                  if cfg.cls_pseudo_region == "teacher_foreground" else None)
    probs = teacher_probabilities(identification, cfg.temperature)
    thresholds = torch.full((probs.shape[1],), ctx.tau_cls, device=probs.device)
    if ctx.balance is not None:
        ctx.balance.update(probs, foreground)
        if ssl.distribution_alignment:
            probs = ctx.balance.align(probs)
        if ssl.class_thresholds == "adaptive":
            thresholds = ctx.balance.thresholds(ctx.tau_cls).to(probs.device)
    if ssl.pseudo_labels == "sequence" and ctx.cls_enabled:
        pseudo = sequence_pseudo_labels(seg, probs, ctx.spacing_mm, ctx.postprocess)
    else:
        pseudo = argmax_pseudo_labels(probs)
    keep = (pseudo.confidence > thresholds[pseudo.classes]) & (pseudo.classes > 0)
    if foreground is not None:
        keep &= foreground
    if not ctx.cls_enabled:
        keep = torch.zeros_like(keep)
    log_pseudo_diagnostics(pseudo.classes, keep, foreground, hidden, ctx)
    return PseudoTargets(seg, pseudo.classes, keep)


def log_pseudo_diagnostics(classes: torch.Tensor, keep: torch.Tensor, region: torch.Tensor | None,
                           hidden: torch.Tensor | None, ctx: StepContext) -> None:
    """Class-map spread over the vertebra positions and, given the hidden labels, pseudo-label accuracy/cover."""
    num_classes = ctx.class_weights.numel()
    spread = class_map_entropy(classes, region if region is not None else classes > 0, num_classes)
    ctx.logs["cls_gate"] = 1.0 if ctx.cls_enabled else 0.0
    if math.isfinite(spread[0]):
        ctx.logs.update(class_entropy=spread[0], class_top2=spread[1])
    if hidden is not None:
        ctx.logs.update(pseudo_label_accuracy(classes, keep, hidden_classes(hidden, tuple(classes.shape[1:]), num_classes)))


def pseudo_label_losses(student: SegIdOutput, targets: PseudoTargets, ctx: StepContext
                        ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Eq. 10 and 11 of one student view against `targets`: (L_cons^seg, L_cons^cls, pass_seg, pass_cls)."""
    cfg = ctx.config.loss
    seg, pass_seg = seg_consistency_loss(student.seg[0], targets.seg, ctx.tau_seg, cfg.seg_pseudo_threshold)
    cls = cls_consistency_loss(student.identification, targets.classes, targets.keep, ctx.class_weights)
    return seg, cls, pass_seg, float(targets.keep.float().mean())


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
