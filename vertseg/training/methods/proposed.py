"""The paper's method (section 2.4): L_sup + lambda(t) lambda_cons (L_cons^seg + L_cons^cls), EMA teacher on weak views."""

from __future__ import annotations

import torch
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.methods.base import Method, StepContext, Views, joint_forward, pseudo_label_losses, pseudo_targets


class Proposed(Method):
    name = "proposed"
    uses_teacher = True
    uses_unlabeled = True

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        sup, parts, _ = joint_forward(student, views.labeled, [views.strong], ctx)
        unl_out = parts[0][1]
        with torch.no_grad():
            target = teacher(views.weak)
        cons_seg, cons_cls, pass_seg, pass_cls = pseudo_label_losses(unl_out, pseudo_targets(target, ctx, views.hidden), ctx)
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()),
                        pass_seg=pass_seg, pass_cls=pass_cls)
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)
