"""Mamba (selective state space) mixing for 3D feature maps, weight-compatible with `mamba_ssm.Mamba`.

`Mamba` holds exactly the parameters of `mamba_ssm.Mamba` (names, shapes, initialisation), so a state dict
trained with the fused CUDA kernels loads strictly here on CPU, and back. The fused kernels are used when
`mamba_ssm` imports and the tensor is on CUDA; everywhere else the pure-PyTorch scan of `scan.py` runs.

Scan order of `MambaBlock3d`: a (B, C, Z, Y, X) map in the store's canonical frame (z index 0 = most superior
slice) is flattened with z slowest and x fastest, so the sequence runs head to feet (cranio-caudal) and each
vertebra's context flows to the vertebrae below it. The bidirectional variant adds a second, independently
weighted Mamba over the reversed (feet-to-head) sequence.
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from vertseg.model.scan import selective_scan


@cache
def fused_mamba_inner():
    """`mamba_ssm`'s fused `mamba_inner_fn`, or None when the optional [cuda] extra is not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
    except Exception:  # mamba_ssm raises ImportError or OSError/RuntimeError without a CUDA runtime
        return None
    return mamba_inner_fn


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """SSM parameters stay in float32 under half-precision weights, as in mamba_ssm, but keep float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Mamba(nn.Module):
    """A Mamba mixer over (B, L, d_model) sequences; parameters identical to `mamba_ssm.Mamba`."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        use_fast_path: bool = True,
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.use_fast_path = use_fast_path
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_dt(dt_min, dt_max, dt_init_floor)

    def _init_dt(self, dt_min: float, dt_max: float, floor: float) -> None:
        """mamba_ssm's init: dt_proj weight ~ U(+-dt_rank^-0.5), softplus(bias) log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2*d_inner, L)
        A = -torch.exp(_at_least_float32(self.A_log))
        fused = fused_mamba_inner() if self.use_fast_path and hidden.is_cuda else None
        if fused is not None:
            return fused(
                xz.contiguous(), self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), _at_least_float32(self.D), z=z,
            delta_bias=_at_least_float32(self.dt_proj.bias), delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


class MambaBlock3d(nn.Module):
    """Pre-LayerNorm residual Mamba over a 3D map scanned cranio-caudally (optionally also caudo-cranially)."""

    def __init__(self, channels: int, d_state: int, d_conv: int, expand: int, bidirectional: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mamba = Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand)
        self.mamba_reverse = Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand) if bidirectional else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        seq = self.norm(x.flatten(2).transpose(1, 2))  # (B, Z*Y*X, C), z slowest: head -> feet
        mixed = self.mamba(seq)
        if self.mamba_reverse is not None:
            mixed = mixed + self.mamba_reverse(seq.flip(1)).flip(1)
        return x + mixed.transpose(1, 2).reshape(b, c, *spatial)
