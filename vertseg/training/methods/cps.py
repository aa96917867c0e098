"""Cross Pseudo Supervision (Chen et al. 2021) with two dual-branch students initialised differently.

Each student is supervised on labeled data and trained on the other's hard pseudo-labels (binary mask and
identification argmax) of the unlabeled weak view; inference uses the first student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.methods.base import Method, StepContext, Views, joint_forward, log_pseudo_diagnostics


def _cross(student_out, other_out) -> tuple[torch.Tensor, torch.Tensor]:
    pseudo_seg = (other_out.seg[0].detach() > 0).float()
    pseudo_id = other_out.identification.detach().argmax(1)
    seg = F.binary_cross_entropy_with_logits(student_out.seg[0].float(), pseudo_seg)
    ident = F.cross_entropy(student_out.identification.float(), pseudo_id)
    return seg, ident


class CPS(Method):
    name = "cps"
    students = 2
    uses_unlabeled = True

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        sup, parts, _ = joint_forward(student, views.labeled, [views.weak], ctx)
        a_seg, a_id = _cross(parts[0][1], parts[1][1])
        b_seg, b_id = _cross(parts[1][1], parts[0][1])
        cons_seg, cons_cls = a_seg + b_seg, a_id + b_id
        classes = parts[1][1].identification.detach().argmax(1)  # what student 1 is taught
        log_pseudo_diagnostics(classes, classes > 0, None, views.hidden, ctx)
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()))
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)
