"""Parameter and forward-FLOP counts of the network and of each ablation variant (section 2.7.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from vertseg.model.config import ModelConfig
from vertseg.model.mamba import Mamba

# The ablation rows of section 2.7.3 / Fig. 2 as config overrides of the model being summarised.
ABLATIONS: dict[str, dict[str, object]] = {
    "configured": {},
    "seg-only baseline": {"identification_branch": False},
    "Mamba@all encoder stages": {"mamba_placement": "all_encoder_stages"},
    "bidirectional Mamba": {"mamba_bidirectional": True},
    "CBAM none": {"cbam_placement": "none"},
    "CBAM both": {"cbam_placement": "both"},
    "Transformer bottleneck": {"bottleneck": "transformer"},
    "no bottleneck block": {"bottleneck": "none"},
}

SCAN_FLOPS_PER_STATE = 9  # mamba_ssm's selective-scan FLOP estimate: 9 * batch * length * d_inner * d_state


@dataclass(frozen=True)
class ModelCost:
    name: str
    parameters: int
    forward_flops: int  # matmuls/convolutions counted by FlopCounterMode plus the selective scans
    scan_flops: int


def variant_configs(cfg: ModelConfig) -> dict[str, ModelConfig]:
    """Each ablation applied to `cfg`; duplicates of the configured model (e.g. CBAM id when that is set) dropped."""
    out: dict[str, ModelConfig] = {}
    for name, overrides in ABLATIONS.items():
        variant = cfg.model_copy(update=overrides)
        if name == "configured" or variant != cfg:
            out[name] = variant
    return out


def model_cost(name: str, cfg: ModelConfig, patch: tuple[int, int, int], batch: int = 1) -> ModelCost:
    """Counts on the meta device: no memory is allocated and nothing is computed, so any patch size is instant."""
    from vertseg.model import build_model

    scan_elements: list[int] = []

    def count_scan(module: Mamba, inputs, _output) -> None:
        b, length, _ = inputs[0].shape
        scan_elements.append(b * length * module.d_inner * module.d_state)

    with torch.device("meta"):
        model = build_model(cfg)
        x = torch.empty(batch, cfg.in_channels, *patch)
    parameters = sum(p.numel() for p in model.parameters())
    hooks = [m.register_forward_hook(count_scan) for m in model.modules() if isinstance(m, Mamba)]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    for hook in hooks:
        hook.remove()
    scan = SCAN_FLOPS_PER_STATE * sum(scan_elements)
    return ModelCost(name, parameters, counter.get_total_flops() + scan, scan)


def summarize(cfg: ModelConfig, patch: tuple[int, int, int], batch: int = 1) -> list[ModelCost]:
    return [model_cost(name, variant, patch, batch) for name, variant in variant_configs(cfg).items()]
