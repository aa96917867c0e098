"""Epoch-dependent weights and thresholds (Eq. 2, 12, 13) and the learning-rate decay, as pure functions."""

from __future__ import annotations

from vertseg.training.config import OptimConfig, ScheduleConfig


def ramp(epoch: float, e_cons: int, e_ramp: int) -> float:
    """The shared ramp of Eq. 2/12/13: 0 before E_cons, linear to 1 at E_ramp, 1 after."""
    if epoch < e_cons:
        return 0.0
    return min(1.0, (epoch - e_cons) / (e_ramp - e_cons))


def consistency_weight(epoch: float, schedule: ScheduleConfig) -> float:
    """lambda(t) of Eq. 2 (the caller multiplies by lambda_cons)."""
    return ramp(epoch, schedule.e_cons, schedule.e_ramp)


def tau_cls(epoch: float, schedule: ScheduleConfig) -> float:
    """Eq. 12: identification confidence threshold, tau_cls_start before E_cons."""
    r = ramp(epoch, schedule.e_cons, schedule.e_ramp)
    return schedule.tau_cls_start + (schedule.tau_cls_end - schedule.tau_cls_start) * r


def tau_seg(epoch: float, schedule: ScheduleConfig) -> float:
    """Eq. 13: segmentation confidence threshold, capped at tau_seg_end."""
    r = ramp(epoch, schedule.e_cons, schedule.e_ramp)
    return min(schedule.tau_seg_end, schedule.tau_seg_start + (schedule.tau_seg_end - schedule.tau_seg_start) * r)


def lr_factor(iteration: int, total_iterations: int, optim: OptimConfig) -> float:
    """Multiplier of the initial lr: nnU-Net's poly decay (1 - i/N)^0.9, or constant."""
    if optim.lr_decay == "none":
        return 1.0
    progress = min(iteration, total_iterations) / max(total_iterations, 1)
    return (1.0 - progress) ** optim.poly_exponent
