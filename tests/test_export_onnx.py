"""`vertseg export`: ONNX (through onnxruntime) and TorchScript outputs match PyTorch to 1e-4, on the traced patch
and on other inputs; the traced scan holds for decays its example never had; `predict --onnx` equals PyTorch."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vertseg.bench.infer import spine_phantom
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.inference.export import ExportError, export_model, run_exported
from vertseg.inference.model_loading import load_model, random_model
from vertseg.inference.onnx_runtime import load_onnx
from vertseg.model.scan import linear_recurrence
from vertseg.training.checkpoint import save_checkpoint
from vertseg.training.trainer import Trainer

TINY = {  # the Mamba bottleneck (4x2x2 = 16 tokens) and CBAM are exported too
    "model": {"base_width": 4},
    "data": {"patch_size": [32, 16, 16]},
    "inference": {"overlap": 0.0, "window_batch_size": 2, "localisation": "bone", "min_fragment_ml": 0.0},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.manual_seed(1)
    trainer = Trainer(build_config(TINY))
    with torch.no_grad():  # non-trivial Mamba decays: dt spread over a wide range
        for name, p in trainer.bundle.members[0].named_parameters():
            if name.endswith("dt_proj.bias"):
                p.copy_(torch.linspace(-4.0, 2.0, p.numel()))
    save_checkpoint(path, trainer.state_dict())
    return path


def _reference(model, x):
    with torch.no_grad():
        out = model(x)
    return [out.seg[0].numpy(), out.identification.numpy()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    """Both formats, exported once for the module: (PyTorch model, {format: ExportResult})."""
    model, config, _ = load_model(checkpoint)
    folder = tmp_path_factory.mktemp("exported")
    return model, {fmt: export_model(model, config, folder / f"model.{fmt}", fmt) for fmt in ("onnx", "torchscript")}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_outputs_match_pytorch(exported, fmt):
    model, results = exported
    result = results[fmt]
    assert result.outputs == ("foreground_logits", "identification_logits") and result.max_abs_diff <= 1e-4
    generator = torch.Generator().manual_seed(7)
    for x in (torch.rand(1, 1, 32, 16, 16, generator=generator), 3 * torch.rand(1, 1, 32, 16, 16, generator=generator)):
        got, expected = run_exported(result.path, fmt, x), _reference(model, x)
        assert [g.shape for g in got] == [(1, 1, 32, 16, 16), (1, 25, 8, 4, 4)]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)


def test_onnx_network_carries_its_config_and_batches_windows(exported):
    model, results = exported
    network, loaded = load_onnx(results["onnx"].path, ["inference.overlap=0.25"])
    assert loaded.model == model.cfg and loaded.inference.overlap == 0.25
    x = torch.rand(3, 1, 32, 16, 16)
    out = network(x)
    expected = _reference(model, x)
    np.testing.assert_allclose(out.seg[0].numpy(), expected[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.identification.numpy(), expected[1], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="windows of shape"):
        network(torch.rand(1, 1, 16, 16, 16))


def test_export_is_refused_and_nothing_written_beyond_tolerance(tmp_path):
    config = build_config({"model": {"base_width": 2, "bottleneck": "none"}, "data": {"patch_size": [16, 16, 16]}})
    model = random_model(config)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(model, config, tmp_path / "m.onnx", "onnx", tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_traced_scan_holds_for_decays_steeper_than_the_example():
    """Tracing must not bake the chunk width chosen from the example's decays: a steep input would overflow."""
    def scan(log_a, b):
        return linear_recurrence(log_a, b, torch.zeros(1, 3), chunk=16)

    g = torch.Generator().manual_seed(0)
    mild = (-0.01 * torch.rand(1, 64, 3, generator=g), torch.randn(1, 64, 3, generator=g))
    traced = torch.jit.trace(scan, mild, check_trace=False)
    steep = (-80 * torch.rand(1, 64, 3, generator=g), torch.randn(1, 64, 3, generator=g))
    for inputs in (mild, steep):
        got = traced(*inputs)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, scan(*inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_cli_export_then_predict_onnx_equals_pytorch(tmp_path, checkpoint):
    runner = CliRunner()
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(spine_phantom((40, 32, 32)).transpose(2, 1, 0).copy(), np.eye(4)), image)
    onnx_path = tmp_path / "model.onnx"
    written = runner.invoke(app, ["export", str(checkpoint), "--onnx", "-o", str(onnx_path)])
    assert written.exit_code == 0, written.output
    assert "max |diff| vs PyTorch" in " ".join(written.output.split())
    both = runner.invoke(app, ["export", str(checkpoint), "--onnx", "--torchscript", "-o", str(tmp_path / "x")])
    assert both.exit_code == 2 and "exactly one" in both.output

    whole = ["--set", "inference.localisation=none"]  # the toy spine is too small for the bone column: all of it
    via_onnx = runner.invoke(app, ["predict", str(image), "--onnx", str(onnx_path), "--out", str(tmp_path / "o"), *whole])
    assert via_onnx.exit_code == 0, via_onnx.output
    via_torch = runner.invoke(app, ["predict", str(image), "--checkpoint", str(checkpoint), "--device", "cpu",
                                    "--out", str(tmp_path / "t"), *whole])
    assert via_torch.exit_code == 0, via_torch.output
    assert "ONNX Runtime" in json.loads((tmp_path / "o" / "summary.json").read_text())["weights"]
    seg_onnx = np.asarray(nib.load(tmp_path / "o" / "scan" / "scan_seg.nii.gz").dataobj)
    seg_torch = np.asarray(nib.load(tmp_path / "t" / "scan" / "scan_seg.nii.gz").dataobj)
    assert seg_torch.any() and np.array_equal(seg_onnx, seg_torch)
