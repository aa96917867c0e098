"""Where bf16 autocast pays: devices that compute bf16 natively (CUDA, and CPUs with AVX512-BF16 or AMX).

On such a CPU a 3-D U-Net forward pass runs about twice as fast in bf16 (`vertseg bench train`, `vertseg bench
infer`); elsewhere bf16 is emulated and slower than float32, so autocast stays off there.
"""

from __future__ import annotations

import torch


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # builds without oneDNN
            return False
    return False
