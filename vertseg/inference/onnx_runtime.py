"""Run an exported ONNX network through ONNX Runtime behind the network contract (`forward(x) -> SegIdOutput`),
so `Predictor`, the localisation pass and the sliding window use it unchanged.

Exported graphs have a fixed (1, 1, *patch) input (`vertseg.inference.export`): a batch of windows runs window by
window. The run's config travels in the model's metadata, so the .onnx file alone is enough to predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vertseg.config import VertsegConfig
from vertseg.inference.model_loading import CheckpointError, WeightsSource, checkpoint_config
from vertseg.model.output import SegIdOutput

CONFIG_METADATA_KEY = "vertseg_config_yaml"


class OnnxNetwork(nn.Module):
    """An ONNX Runtime CPU session holding the exported network; no parameters on the PyTorch side."""

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for missing/invalid files
            raise CheckpointError(f"ONNX model {path} cannot be loaded: {str(error).splitlines()[0]}") from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.input_shape = tuple(graph_input.shape)

    def forward(self, x: torch.Tensor) -> SegIdOutput:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"ONNX model {self.path} takes windows of shape {self.input_shape[1:]}, got "
                             f"{tuple(x.shape[1:])}; predict with the config the model was exported with")
        windows = x.detach().to("cpu", torch.float32).numpy()
        outputs = [self.session.run(None, {self.input_name: np.ascontiguousarray(w[None])}) for w in windows]
        stacked = [torch.from_numpy(np.concatenate(parts)).to(x.device) for parts in zip(*outputs)]
        return SegIdOutput(seg=[stacked[0]], identification=stacked[1] if len(stacked) > 1 else None)

    def config_yaml(self) -> str:
        text = self.session.get_modelmeta().custom_metadata_map.get(CONFIG_METADATA_KEY)
        if text is None:
            raise CheckpointError(f"ONNX model {self.path} carries no vertseg config; export it with `vertseg export`")
        return text


def load_onnx(path: Path | str, overrides: list[str] | None = None) -> tuple[OnnxNetwork, VertsegConfig]:
    """(the network, its config); `overrides` may change inference/post-processing keys, not the network."""
    network = OnnxNetwork(path)
    network.weights_source = WeightsSource("onnx", Path(path))
    return network, checkpoint_config({"config_yaml": network.config_yaml()}, path, overrides)
