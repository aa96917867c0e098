"""Load the network for inference: from a training checkpoint (teacher/EMA weights first) or randomly initialised.

A checkpoint is a `torch.save`d dict holding the run's config (a plain dict) and one or more state dicts; it is
read with `weights_only=True`, so only tensors and plain containers are accepted.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from vertseg.config import ConfigError, VertsegConfig, build_config
from vertseg.inference.config import InferenceConfig
from vertseg.model import build_model
from vertseg.training.checkpoint import CheckpointError, load_checkpoint, model_weights


@dataclass(frozen=True)
class WeightsSource:
    """Which weights a loaded network holds, so that outputs can say which model made them (the DICOM-SEG's
    algorithm identification): a checkpoint file and the state dict used, an ONNX file, or random weights.
    `load_model`, `random_model` and `load_onnx` put one on the network as `weights_source`; `Predictor.weights`
    reads it."""

    kind: Literal["checkpoint", "onnx", "random"]
    path: Path | None = None
    detail: str | None = None  # checkpoint: the state dict ("teacher", "model"); random: "seed N"

    @cached_property
    def parameters(self) -> dict[str, str]:
        """{"checkpoint" | "onnx": file name, "sha256": its first 16 hex digits, "state": state dict} or
        {"random": "seed N"}; values hold no ',' or '=' (DICOM AlgorithmParameters is `key=value,...`)."""
        from vertseg.weights.fetch import sha256_of

        if self.path is None:
            values = {self.kind: self.detail or "unknown"}
        else:
            values = {self.kind: self.path.name}
            if self.path.is_file():
                values["sha256"] = sha256_of(self.path)[:16]
            if self.detail:
                values["state"] = self.detail
        return {key: re.sub(r"[,=]", "_", value) for key, value in values.items()}


def checkpoint_config(payload: dict[str, Any], path: Path | str, overrides: list[str] | None = None) -> VertsegConfig:
    """The training run's config; `overrides` may change inference/post-processing keys, not the network."""
    raw = payload.get("config")
    if raw is None and isinstance(payload.get("config_yaml"), str):  # what `vertseg train` (Trainer.state_dict) saves
        import yaml

        try:
            raw = yaml.safe_load(payload["config_yaml"])
        except yaml.YAMLError as error:
            reason = " ".join(str(getattr(error, "problem", None) or error).split())
            raise CheckpointError(f"checkpoint {path}: its embedded config is not plain YAML ({reason})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} has no 'config' dict; it was not written by vertseg train")
    raw = _without_retired_inference_keys(raw, path)
    try:
        config = build_config(raw, overrides, f"{path} (config)")
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    trained = build_config(raw, None, str(path)).model
    if config.model != trained:
        raise CheckpointError(f"checkpoint {path}: --set may not change model.* (the weights fix the network)")
    return config


def _without_retired_inference_keys(raw: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """Inference settings saved by an older vertseg that this one no longer has are dropped with a warning: they
    only chose post-processing defaults, while the weights, data and model sections still load strictly."""
    section = raw.get("inference")
    if not isinstance(section, dict):
        return raw
    retired = sorted(set(section) - set(InferenceConfig.model_fields))
    if not retired:
        return raw
    warnings.warn(f"checkpoint {path}: ignoring inference settings this vertseg no longer has: {', '.join(retired)}",
                  stacklevel=3)
    return {**raw, "inference": {key: value for key, value in section.items() if key not in retired}}


def load_model(path: Path | str, overrides: list[str] | None = None,
               weights: str | None = None) -> tuple[nn.Module, VertsegConfig, str]:
    """(network in eval mode on CPU, its config, which weights were used): those the training validated, or the
    state dict under `weights` (e.g. "model", the student of a checkpoint that deploys its EMA teacher)."""
    payload = load_checkpoint(path)
    config = checkpoint_config(payload, path, overrides)
    state, key = model_weights(payload, path, weights)
    model = build_model(config.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the configured network: {str(error)[:500]}") from None
    model.weights_source = WeightsSource("checkpoint", Path(path), key)
    return model.eval(), config, key


def random_model(config: VertsegConfig, seed: int = 0) -> nn.Module:
    """An untrained network, for smoke tests and benchmarks only: its predictions are meaningless."""
    torch.manual_seed(seed)
    model = build_model(config.model)
    model.weights_source = WeightsSource("random", detail=f"seed {seed}")
    return model.eval()


DEVICES = ("auto", "cpu", "cuda", "mps")  # and "cuda:N"; TotalSegmentator's "gpu" means cuda


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA on a machine without it is an error, and so is a name that is
    no device (the choices are listed)."""
    name = "cuda" + name[3:] if name.startswith("gpu") else name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; choose {', '.join(DEVICES)} (or cuda:N)") from None
    if device.type not in DEVICES:
        raise ValueError(f"--device {name!r} is not supported; choose {', '.join(DEVICES)} (or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was requested but this machine has no Apple GPU (MPS) available")
    return device
