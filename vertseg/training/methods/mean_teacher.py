"""Mean Teacher (Tarvainen & Valpola 2017) and UA-MT (Yu et al. 2019) adapted to the dual-branch model.

Both use the same EMA teacher, views and lambda(t) schedule as `proposed`; the consistency is an MSE between
probabilities (sigmoid for segmentation, softmax over K+1 classes for identification). UA-MT keeps only voxels
whose teacher uncertainty (entropy of the mean over T noisy passes) is below a threshold ramped from 0.75 to 1.0
of the maximum entropy ln(C) (C = 2 for segmentation, K+1 for identification: the multi-class extension).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vertseg.training.ema import EMATeacher
from vertseg.training.losses import probability_mse
from vertseg.training.methods.base import Method, StepContext, Views, joint_forward, log_pseudo_diagnostics
from vertseg.training.schedules import ramp


class MeanTeacher(Method):
    name = "mean_teacher"
    uses_teacher = True
    uses_unlabeled = True

    def consistency_loss(self, student: nn.Module, teacher: EMATeacher | None, views: Views, ctx: StepContext) -> torch.Tensor:
        sup, parts, _ = joint_forward(student, views.labeled, [views.strong], ctx)
        unl_out = parts[0][1]
        seg_mask, id_mask, seg_t, id_t = self.targets(teacher, views.weak, ctx)
        cons_seg = probability_mse(unl_out.seg[0], seg_t, "binary", seg_mask)
        cons_cls = probability_mse(unl_out.identification, id_t, "multiclass", id_mask)
        classes = id_t.argmax(1)
        taught = (classes > 0) if id_mask is None else (classes > 0) & (id_mask > 0)
        log_pseudo_diagnostics(classes, taught, None, views.hidden, ctx)
        ctx.logs.update(loss_cons_seg=float(cons_seg.detach()), loss_cons_cls=float(cons_cls.detach()))
        return sup + ctx.consistency_weight * (cons_seg + cons_cls)

    def targets(self, teacher: EMATeacher, weak: torch.Tensor, ctx: StepContext):
        with torch.no_grad():
            out = teacher(weak)
        return None, None, out.seg[0], out.identification


def _entropy_binary(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


class UAMT(MeanTeacher):
    name = "ua_mt"

    def targets(self, teacher: EMATeacher, weak: torch.Tensor, ctx: StepContext):
        settings = ctx.config.methods
        passes = settings.ua_mt_passes
        with torch.no_grad():
            out = teacher(weak)
            repeated = weak.repeat(passes, 1, 1, 1, 1)
            noise = torch.randn(repeated.shape, generator=ctx.generator, device=weak.device, dtype=weak.dtype)
            noisy = teacher(repeated + (noise * settings.ua_mt_noise).clamp(-2 * settings.ua_mt_noise, 2 * settings.ua_mt_noise))
            b = weak.shape[0]
            p_seg = torch.sigmoid(noisy.seg[0].float()).view(passes, b, *noisy.seg[0].shape[1:]).mean(0)
            p_id = torch.softmax(noisy.identification.float(), 1).view(passes, b, *noisy.identification.shape[1:]).mean(0)
            u_seg = _entropy_binary(p_seg).squeeze(1)
            u_id = -(p_id * p_id.clamp(min=1e-6).log()).sum(1)
            r = ramp(ctx.epoch, ctx.config.schedule.e_cons, ctx.config.schedule.e_ramp)
            fraction = 0.75 + 0.25 * r
            seg_mask = (u_seg < fraction * math.log(2)).float()
            id_mask = (u_id < fraction * math.log(p_id.shape[1])).float()
        ctx.logs.update(pass_seg=float(seg_mask.mean()), pass_cls=float(id_mask.mean()))
        return seg_mask, id_mask, out.seg[0], out.identification
