"""lambda(t), tau_seg(t), tau_cls(t) (Eq. 2, 12, 13), lr decay and the EMA teacher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vertseg.training.config import OptimConfig, ScheduleConfig
from vertseg.training.ema import EMATeacher
from vertseg.training.schedules import consistency_weight, lr_factor, tau_cls, tau_seg

EXPECTED = {  # epoch: (lambda, tau_seg, tau_cls) with E_cons = 40, E_ramp = 80
    0: (0.0, 0.50, 0.30),
    39: (0.0, 0.50, 0.30),
    40: (0.0, 0.50, 0.30),
    60: (0.5, 0.70, 0.425),
    80: (1.0, 0.90, 0.55),
    100: (1.0, 0.90, 0.55),
}


@pytest.mark.parametrize("epoch", sorted(EXPECTED))
def test_paper_schedules(epoch):
    schedule = ScheduleConfig()
    lam, t_seg, t_cls = EXPECTED[epoch]
    assert consistency_weight(epoch, schedule) == pytest.approx(lam)
    assert tau_seg(epoch, schedule) == pytest.approx(t_seg)
    assert tau_cls(epoch, schedule) == pytest.approx(t_cls)


def test_ramp_is_linear_between_e_cons_and_e_ramp():
    schedule = ScheduleConfig()
    assert consistency_weight(41, schedule) == pytest.approx(1 / 40)
    assert tau_seg(50, schedule) == pytest.approx(0.6)


def test_poly_lr_decay():
    optim = OptimConfig()
    assert lr_factor(0, 100, optim) == 1.0
    assert lr_factor(50, 100, optim) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, optim) == 0.0
    assert lr_factor(50, 100, OptimConfig(lr_decay="none")) == 1.0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_ema_update_matches_formula_for_params_and_buffers():
    student = _net()
    teacher = EMATeacher(student, decay=0.99)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(2.0)
        student[1].num_batches_tracked.fill_(7)
    teacher.update(student)
    after = teacher.state_dict()
    for key, value in student.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(after[key], 0.99 * before[key] + 0.01 * value), key
        else:
            assert torch.equal(after[key], value), key  # integer counters are copied
    assert not any(p.requires_grad for p in teacher.module.parameters())


def test_ema_reinitialise_copies_student_and_checksum_tracks_it():
    student = _net()
    teacher = EMATeacher(student, decay=0.99)
    same = teacher.checksum()
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3.0)
    teacher.update(student)
    assert teacher.checksum() != same
    teacher.reinitialise(student)
    for key, value in student.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], value)
    assert EMATeacher(student, 0.99).checksum() == teacher.checksum()
