"""`vertseg export`: a checkpoint's network as ONNX or TorchScript, checked against PyTorch before it is kept."""

from __future__ import annotations

from pathlib import Path

import typer

from vertseg.cli.common import console, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("export")
    def export(
        checkpoint: Path = typer.Argument(None, help="Training checkpoint (default: the registry's default model)."),
        out: Path = typer.Option(..., "--out", "-o", help="File to write (.onnx or .pt)."),
        onnx: bool = typer.Option(False, "--onnx", help="ONNX (opset 17), for onnxruntime: `vertseg predict --onnx`."),
        torchscript: bool = typer.Option(False, "--torchscript", help="TorchScript (torch.jit.load)."),
        tolerance: float = typer.Option(1e-4, help="Largest allowed |exported - PyTorch| on the test patch."),
    ) -> None:
        """Export the network to ONNX or TorchScript.

        Export the network inference uses (teacher/EMA weights) with a fixed (1, 1, *data.patch_size) input and
        the run's config embedded; outputs foreground logits (+ identification logits). The file is written only
        if its outputs match PyTorch within --tolerance on a test patch."""
        from vertseg.inference.export import ExportError, export_model
        from vertseg.inference.model_loading import CheckpointError, load_model
        from vertseg.weights import Registry, RegistryError

        if onnx == torchscript:
            raise fail("give exactly one of --onnx or --torchscript")
        try:
            if checkpoint is None:
                checkpoint, ref = Registry().default_checkpoint()
                console.print(f"exporting the default model {ref}", highlight=False)
            model, config, key = load_model(checkpoint)
            result = export_model(model, config, out, "onnx" if onnx else "torchscript", tolerance)
        except (CheckpointError, RegistryError, ExportError) as error:
            raise fail(str(error)) from None
        console.print(f"{result.format} -> {result.path} ({key} weights; outputs {', '.join(result.outputs)}; "
                      f"max |diff| vs PyTorch {result.max_abs_diff:.1e} on a {config.data.patch_size} patch)",
                      highlight=False)
