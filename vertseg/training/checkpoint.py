"""Checkpoints: written atomically (vertseg.io), loaded with weights_only=True, with a clear error on a bad file;
and the partial loading behind fine-tuning (`--init-from`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vertseg.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the file."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _load_failure(error: Exception) -> str:
    """What is wrong with the file, without torch's advice to load it with weights_only=False (which would run
    whatever code the file holds: vertseg never does)."""
    text = str(error)
    if "Weights only load failed" not in text:
        return next((line for line in text.splitlines() if line.strip()), type(error).__name__)
    detail = text.split("WeightsUnpickler error:", 1)[-1].split("Please use", 1)[0].split("Check the documentation", 1)[0]
    detail = " ".join(detail.split()).rstrip(".")
    return (f"it holds more than tensors and plain values ({detail}), or is not a PyTorch checkpoint; vertseg reads "
            "checkpoints without running code from them")


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign / unsafe files
        empty = " (the file is empty)" if path.stat().st_size == 0 else ""
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely{empty}: {_load_failure(error)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict")
    return payload


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs, as weights_only-loadable values (tensors, ints, lists)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded with map_location="cuda" moved these too
    generator.set_state(state["generator"].cpu())
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# The weights a checkpoint's training validated (`inference_weights`), else these in order: EMA teacher first (2.4.3).
WEIGHT_KEYS = ("teacher", "ema", "teacher_state", "student", "model", "student_state", "state_dict")


def model_weights(payload: dict[str, Any], path: Path | str,
                  only: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, its key): the weights inference and fine-tuning use (or exactly those under `only`), with
    DDP/compile prefixes removed so any saved wrapper loads into the plain network."""
    validated = {"teacher": "teacher", "student": "model"}.get(payload.get("inference_weights"))
    keys = (only,) if only else ((validated,) if validated else ()) + WEIGHT_KEYS
    for key in keys:
        state = payload.get(key)
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            broken = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
            if broken:
                raise CheckpointError(f"checkpoint {path} holds non-finite {key} weights ({len(broken)} tensors, e.g. "
                                      f"{_unprefixed(broken[0])}): the run diverged; use an earlier checkpoint")
            return {_unprefixed(name): value for name, value in state.items()}, key
    raise CheckpointError(f"checkpoint {path} holds no model weights (looked for {', '.join(keys)})")


def deployable(payload: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The part of a training checkpoint inference needs: its deployed weights (as `model`), config, method, epoch
    and validation scores; no optimiser, scheduler, students or random states (a bundled model is a third the size)."""
    state, _ = model_weights(payload, path)
    kept = {k: payload[k] for k in ("format", "method", "config_yaml", "config", "epoch", "step", "best_metrics")
            if k in payload}
    return {**kept, "inference_weights": "student", "model": state}


def _unprefixed(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


# ---- fine-tuning (`vertseg train --init-from`) ------------------------------------------------------------------


@dataclass
class InitReport:
    """What `--init-from` loaded: tensors copied, and those left at their fresh initialisation."""

    source: Path
    weights: str  # which weights of the checkpoint (teacher / model)
    loaded: list[str]
    skipped: list[str]  # "name checkpoint-shape -> network-shape": another class count, width or layout
    missing: list[str]  # network tensors the checkpoint does not have
    unused: list[str]  # checkpoint tensors the network has no place for
    fraction: float  # share of the network's weight elements that were loaded

    def summary(self) -> str:
        total = len(self.loaded) + len(self.skipped) + len(self.missing)
        lines = [f"initialised from {self.source} ({self.weights} weights): {len(self.loaded)}/{total} tensors loaded "
                 f"({self.fraction:.1%} of the weights)"]
        for what, names in (("skipped (shape differs)", self.skipped), ("kept fresh (not in checkpoint)", self.missing),
                            ("unused from checkpoint", self.unused)):
            if names:
                lines.append(f"  {what}: {', '.join(names)}")
        return "\n".join(lines)


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, weights: str) -> InitReport:
    """Copy every tensor of `state` whose name and shape match `module` (in place: optimisers keep their params)."""
    own = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(matching, strict=False)
    return InitReport(
        source=source, weights=weights, loaded=list(matching),
        skipped=[f"{k} {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in own if k in state and k not in matching],
        missing=[k for k in own if k not in state], unused=[k for k in state if k not in own],
        fraction=sum(own[k].numel() for k in matching) / max(1, sum(v.numel() for v in own.values())),
    )
