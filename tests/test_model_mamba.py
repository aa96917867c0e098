"""Mamba weights interchangeable with mamba_ssm.Mamba, and the 3D block's cranio-caudal scan."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vertseg.model import ModelConfig, build_model
from vertseg.model.mamba import Mamba, MambaBlock3d
from vertseg.model.scan import selective_scan_reference


def mamba_ssm_state_dict(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, seed: int = 0) -> dict:
    """The layout of mamba_ssm.Mamba (bias=False, conv_bias=True, dt_rank="auto"), written out by hand."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    return {k: 0.3 * torch.randn(*s, generator=g) for k, s in shapes.items()}


def mamba_ssm_forward(sd: dict, h: torch.Tensor, d_state: int) -> torch.Tensor:
    """mamba_ssm.Mamba.forward's slow path, step by step (stack-facts layout), as an independent reference."""
    length = h.shape[1]
    xz = (h @ sd["in_proj.weight"].T).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, sd["conv1d.weight"], sd["conv1d.bias"], padding=sd["conv1d.weight"].shape[-1] - 1, groups=x.shape[1])[..., :length])
    dt_rank = sd["dt_proj.weight"].shape[1]
    dt, B, C = torch.split(x.transpose(1, 2) @ sd["x_proj.weight"].T, [dt_rank, d_state, d_state], dim=-1)
    dt = (dt @ sd["dt_proj.weight"].T).transpose(1, 2)
    y = selective_scan_reference(x, dt, -torch.exp(sd["A_log"]), B.transpose(1, 2), C.transpose(1, 2), sd["D"], z,
                                 sd["dt_proj.bias"], delta_softplus=True)
    return y.transpose(1, 2) @ sd["out_proj.weight"].T


def test_mamba_ssm_state_dict_loads_strictly_and_computes_the_same():
    sd = mamba_ssm_state_dict(d_model=40, d_state=8, d_conv=3, expand=2)
    module = Mamba(40, d_state=8, d_conv=3, expand=2)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    module.load_state_dict(sd, strict=True)
    h = torch.randn(2, 70, 40, dtype=torch.float64)
    sd64 = {k: v.double() for k, v in sd.items()}
    torch.testing.assert_close(module.double()(h), mamba_ssm_forward(sd64, h, 8), rtol=0, atol=1e-8)
    roundtrip = Mamba(40, d_state=8, d_conv=3, expand=2)
    roundtrip.load_state_dict(module.state_dict(), strict=True)


def test_initialisation_follows_mamba_ssm():
    module = Mamba(32, d_state=16)
    torch.testing.assert_close(module.A_log[3], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(module.D, torch.ones(64))
    dt = F.softplus(module.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert module.dt_rank == 2


def test_network_bottleneck_loads_a_mamba_ssm_state_dict():
    model = build_model(ModelConfig(base_width=4))
    channels = model.bottleneck.norm.normalized_shape[0]
    sd = {f"bottleneck.mamba.{k}": v for k, v in mamba_ssm_state_dict(channels).items()}
    full = model.state_dict()
    full.update(sd)
    model.load_state_dict(full, strict=True)
    assert torch.equal(model.bottleneck.mamba.A_log, sd["bottleneck.mamba.A_log"])


def test_scan_runs_head_to_feet_and_bidirectional_reaches_back():
    """Changing the lowest slice (last z) moves no earlier token of a causal scan; the reverse scan does."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 3, 3)
    x2 = x.clone()
    x2[:, :, -1] += torch.randn(1, 8, 3, 3)  # not a constant shift: LayerNorm over channels would remove that
    uni = MambaBlock3d(8, 4, 2, 2, bidirectional=False)
    changed = (uni(x2) - uni(x)).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(changed[:-1] == 0) and changed[-1] > 0
    bi = MambaBlock3d(8, 4, 2, 2, bidirectional=True)
    assert torch.all((bi(x2) - bi(x)).abs().amax(dim=(0, 1, 3, 4)) > 0)
