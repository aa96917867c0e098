"""Cross Pseudo Supervision (Chen et al. 2021) with two dual-branch students initialised differently.

Each student is supervised on labeled data and trained on the other's hard pseudo-labels (binary mask and
identification argmax) of the unlabeled weak view; inference uses the first student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.methods.base import Method, StepContext, Views, split_output, supervised_loss


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

    def loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        labeled = views.labeled
        use_unlabeled = views.weak is not None and ctx.consistency_weight > 0
        x = torch.cat([labeled["image"], views.weak]) if use_unlabeled else labeled["image"]
        n_l = labeled["image"].shape[0]
        outputs, _ = student(x)
        sizes = [n_l, x.shape[0] - n_l] if use_unlabeled else [n_l]
        parts = [split_output(o, sizes) for o in outputs]
        sup = sum(supervised_loss(p[0], labeled, ctx.config, ctx.logs, prefix=f"s{i}_") for i, p in enumerate(parts))
        if not use_unlabeled:
            return sup
        a_seg, a_id = _cross(parts[0][1], parts[1][1])
        b_seg, b_id = _cross(parts[1][1], parts[0][1])
        cons_seg, cons_cls = a_seg + b_seg, a_id + b_id
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()))
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)
