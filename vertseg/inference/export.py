"""Export the inference network to ONNX or TorchScript, each checked against PyTorch on a test patch before the
file is kept.

Tracing runs the pure-PyTorch chunked selective scan (`vertseg.model.scan` switches to it while tracing: the numba
kernel is opaque to the tracer). Only what inference consumes is exported: full-resolution foreground logits and,
with the identification branch, the 1/4-resolution identification logits. The input shape is fixed to
(1, 1, *data.patch_size), and the run's config is embedded (ONNX metadata / TorchScript extra file) so the file
alone is enough to predict.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vertseg.config import VertsegConfig, dump_config
from vertseg.inference.onnx_runtime import CONFIG_METADATA_KEY, OnnxNetwork
from vertseg.io import atomic_path

ExportFormat = Literal["onnx", "torchscript"]
TORCHSCRIPT_CONFIG_FILE = "config.yaml"
ONNX_OPSET = 17
DEFAULT_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export whose outputs differ from PyTorch beyond the tolerance; no file is written."""


class DeployedNet(nn.Module):
    """The network reduced to the tensors sliding-window inference reads (deep-supervision heads dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return (out.seg[0],) if out.identification is None else (out.seg[0], out.identification)


@dataclass
class ExportResult:
    path: Path
    format: str
    outputs: tuple[str, ...]
    max_abs_diff: float  # largest |exported - PyTorch| over every output on the test patch


def probe_patch(config: VertsegConfig, seed: int = 0) -> torch.Tensor:
    """A (1, 1, *patch) intensity patch in [0, 1], the range the store and the predictor feed the network."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 1, *config.data.patch_size), generator=generator)


def _trace_quietly(fn, *args, **kwargs):
    """Tracing warns about every shape-dependent branch; the input shape is fixed, so those are constants."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*instance_norm.*")  # eval-mode InstanceNorm has no running stats
        return fn(*args, **kwargs)


def _write_onnx(net: DeployedNet, patch: torch.Tensor, config: VertsegConfig, path: Path, names: tuple[str, ...]) -> None:
    import onnx

    _trace_quietly(torch.onnx.export, net, (patch,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                   input_names=["image"], output_names=list(names))
    graph = onnx.load(str(path))
    graph.metadata_props.add(key=CONFIG_METADATA_KEY, value=dump_config(config))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _write_torchscript(net: DeployedNet, patch: torch.Tensor, config: VertsegConfig, path: Path) -> None:
    traced = _trace_quietly(torch.jit.trace, net, (patch,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_CONFIG_FILE: dump_config(config)})


def run_exported(path: Path, fmt: ExportFormat, patch: torch.Tensor) -> list[np.ndarray]:
    """The exported file's outputs on `patch`, through ONNX Runtime or the TorchScript interpreter."""
    if fmt == "onnx":
        out = OnnxNetwork(path)(patch)
        return [t.numpy() for t in (out.seg[0], out.identification) if t is not None]
    with torch.no_grad():
        return [t.numpy() for t in torch.jit.load(str(path), map_location="cpu")(patch)]


def export_model(model: nn.Module, config: VertsegConfig, out: Path | str, fmt: ExportFormat,
                 tolerance: float = DEFAULT_TOLERANCE) -> ExportResult:
    """Write `model` (eval, CPU) to `out` in `fmt`; refused (ExportError, nothing written) when any output
    differs from PyTorch by more than `tolerance` on `probe_patch`."""
    net = DeployedNet(model.to("cpu").eval()).eval()
    patch = probe_patch(config)
    with torch.no_grad():
        expected = [t.numpy() for t in net(patch)]
    names = ("foreground_logits", "identification_logits")[: len(expected)]
    out = Path(out)
    with atomic_path(out) as tmp:
        with torch.no_grad():
            if fmt == "onnx":
                _write_onnx(net, patch, config, tmp, names)
            else:
                _write_torchscript(net, patch, config, tmp)
        got = run_exported(tmp, fmt, patch)
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        if len(got) != len(expected) or not diff <= tolerance:
            raise ExportError(f"{fmt} export of {out.name}: outputs differ from PyTorch by {diff:.2e} "
                              f"(> {tolerance:.0e}) on the test patch; nothing written")
    return ExportResult(out, fmt, names, diff)
