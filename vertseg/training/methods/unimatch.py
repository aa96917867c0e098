"""UniMatch (Yang et al. 2023) adapted to the dual-branch model: the student's own weak-view predictions are the
pseudo-labels for two strong views (image perturbation) and for a feature-perturbed decode of the weak view
(dropout on the encoder features); weights 0.25 / 0.25 / 0.5 as in the original. Confidence masks use the same
tau_seg / tau_cls schedules and class weights as `proposed`.
"""

from __future__ import annotations

import torch
from torch import nn

from vertseg.training.augment import strong_augment
from vertseg.training.ema import EMATeacher
from vertseg.training.methods.base import Method, StepContext, Views, joint_forward, pseudo_label_losses, pseudo_targets


class UniMatch(Method):
    name = "unimatch"
    uses_unlabeled = True

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        n_l, n_u = views.labeled["image"].shape[0], views.weak.shape[0]
        strong2 = strong_augment(views.weak, ctx.config.augment, ctx.generator)
        sup, parts, fp_out = joint_forward(student, views.labeled, [views.weak, views.strong, strong2], ctx, fp=(n_l, n_l + n_u))
        _, weak_out, s1_out, s2_out = parts[0]
        targets = pseudo_targets(weak_out, ctx, views.hidden)
        terms = {}
        for name, out, weight in (("s1", s1_out, 0.25), ("s2", s2_out, 0.25), ("fp", fp_out, 0.5)):
            seg, cls, pass_seg, pass_cls = pseudo_label_losses(out, targets, ctx)
            terms[name] = (weight * seg, weight * cls)
            if name == "s1":
                ctx.logs.update(pass_seg=pass_seg, pass_cls=pass_cls)
        cons_seg = sum(t[0] for t in terms.values())
        cons_cls = sum(t[1] for t in terms.values())
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()))
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)
