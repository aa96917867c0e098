"""The EMA teacher of section 2.4.3 (4): theta_ema <- alpha * theta_ema + (1 - alpha) * theta_student."""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP / compiled wrapper (their state_dict keys differ from the teacher's)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class EMATeacher:
    """A frozen copy of the student, updated in place after every optimiser step.

    Buffers are averaged too when they are floating point (e.g. running statistics), copied otherwise (counters),
    so a teacher built on every rank from the same synchronised student stays bit-identical across ranks.
    """

    def __init__(self, student: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(unwrap(student))
        self.module.requires_grad_(False)
        self.module.eval()

    @torch.no_grad()
    def reinitialise(self, student: nn.Module) -> None:
        """Copy the student (end of warm-up: the teacher starts from the current weights)."""
        self.module.load_state_dict(unwrap(student).state_dict())

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        source = unwrap(student)
        teacher_params = [p for p in self.module.parameters()]
        student_params = [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - self.decay)
        for t_buf, s_buf in zip(self.module.buffers(), source.buffers()):
            if t_buf.is_floating_point():
                t_buf.lerp_(s_buf, 1.0 - self.decay)
            else:
                t_buf.copy_(s_buf)

    @torch.no_grad()
    def checksum(self) -> float:
        """A float64 fingerprint of all parameters and buffers; equal on every rank when the teacher is in sync."""
        total = torch.zeros((), dtype=torch.float64, device=next(self.module.parameters()).device)
        for i, tensor in enumerate(self.module.state_dict().values()):
            total += tensor.detach().double().sum() * (1.0 + 1e-3 * i)
        return float(total)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
