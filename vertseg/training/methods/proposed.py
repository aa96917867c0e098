"""The paper's method (section 2.4): L_sup + lambda(t) lambda_cons (L_cons^seg + L_cons^cls), EMA teacher on weak views."""

from __future__ import annotations

import torch
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.losses import cls_consistency_loss, seg_consistency_loss
from vertseg.training.methods.base import Method, StepContext, Views, joint_forward


class Proposed(Method):
    name = "proposed"
    uses_teacher = True
    uses_unlabeled = True

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        sup, parts, _ = joint_forward(student, views.labeled, [views.strong], ctx)
        unl_out = parts[0][1]
        with torch.no_grad():
            target = teacher(views.weak)
        cons_seg, pass_seg = seg_consistency_loss(unl_out.seg[0], target.seg[0], ctx.tau_seg, ctx.config.loss.seg_pseudo_threshold)
        cons_cls, pass_cls = cls_consistency_loss(
            unl_out.identification, target.identification, ctx.tau_cls, ctx.config.loss.temperature, ctx.class_weights
        )
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()),
                        pass_seg=pass_seg, pass_cls=pass_cls)
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)
