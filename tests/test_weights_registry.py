"""`vertseg weights`: predict without --checkpoint and nothing registered uses the bundled model; import (file path
/ file:// URL through pooch's checksum check) -> list -> predict without --checkpoint resolves the default -> export; wrong checksums, non-checkpoints and tampered files are refused."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vertseg.bench.infer import spine_phantom
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.inference.model_loading import load_model
from vertseg.training.checkpoint import save_checkpoint
from vertseg.training.trainer import Trainer
from vertseg.weights import FetchError, Registry, RegistryError
from vertseg.weights.bundled import BUNDLED_DEFAULT, bundled_model

TINY = {
    "model": {"base_width": 2, "bottleneck": "none", "cbam_placement": "none"},
    "data": {"patch_size": [16, 16, 16]},
    "inference": {"overlap": 0.0, "window_batch_size": 4, "localisation": "bone", "min_fragment_ml": 0.0},
}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VERTSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real `vertseg train` checkpoint (Trainer.state_dict) of a tiny network."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, Trainer(build_config(TINY)).state_dict())
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_round_trip_import_list_predict_export(tmp_path, home, checkpoint):
    runner = CliRunner()
    image = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(spine_phantom((24, 32, 32)).transpose(2, 1, 0).copy(), np.diag([1.0, 1.0, 1.0, 1.0])), image)

    bundled = runner.invoke(app, ["predict", str(image), "--out", str(tmp_path / "bundled"), "--device", "cpu"])
    assert bundled.exit_code == 0, bundled.output  # nothing registered: the model that ships with vertseg
    assert f"using the default model {BUNDLED_DEFAULT} (bundled)" in bundled.output
    weights = json.loads((tmp_path / "bundled" / "summary.json").read_text())["weights"]
    assert weights.startswith(str(bundled_model().checkpoint))

    imported = runner.invoke(app, ["weights", "import", checkpoint.as_uri(), "--name", "tiny", "--sha256", _sha(checkpoint)])
    assert imported.exit_code == 0, imported.output
    assert "tiny@1 (default)" in imported.output
    second = runner.invoke(app, ["weights", "import", str(checkpoint), "--name", "tiny"])  # a plain path: version 2
    assert second.exit_code == 0, second.output

    listed = runner.invoke(app, ["weights", "list"])
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "tiny@" in line]
    assert [line.split()[:2] for line in lines] == [["*", "tiny@1"], ["tiny@2", "sha256"]]
    assert _sha(checkpoint) in lines[0] and "width 2, 24 classes" in lines[0]

    assert runner.invoke(app, ["weights", "default", "tiny@2"]).exit_code == 0
    predicted = runner.invoke(app, ["predict", str(image), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    assert "using the default model tiny@2" in predicted.output
    weights = json.loads((tmp_path / "out" / "summary.json").read_text())["weights"]
    assert weights.startswith(str(home / "weights" / "tiny" / "2" / "checkpoint.pt"))
    assert (tmp_path / "out" / "scan" / "scan_seg.nii.gz").exists()

    exported = runner.invoke(app, ["weights", "export", "tiny@1", "-o", str(tmp_path / "shared" / "model.pt")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "shared" / "model.pt").read_bytes() == checkpoint.read_bytes()
    assert (tmp_path / "shared" / "model.pt.sha256").read_text() == f"{_sha(checkpoint)}  model.pt\n"

    slim = tmp_path / "shared" / "slim.pt"
    assert runner.invoke(app, ["weights", "export", "tiny@1", "-o", str(slim), "--slim"]).exit_code == 0
    assert slim.stat().st_size < 0.6 * checkpoint.stat().st_size  # no optimiser, students or random states
    assert (tmp_path / "shared" / "slim.pt.sha256").read_text() == f"{_sha(slim)}  slim.pt\n"
    full_model, _, _ = load_model(checkpoint)
    slim_model, _, key = load_model(slim)
    assert key == "model" and all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(),
                                                                     slim_model.state_dict().values()))


def test_wrong_checksum_and_non_checkpoints_are_refused(tmp_path, home, checkpoint):
    registry = Registry()
    with pytest.raises(FetchError, match="hash"):
        registry.import_checkpoint(checkpoint.as_uri(), "tiny", sha256="0" * 64)
    result = CliRunner().invoke(app, ["weights", "import", str(checkpoint), "--sha256", "f" * 64])
    assert result.exit_code == 2 and "does not match" in result.output
    with pytest.raises(FetchError, match="needs --sha256"):
        registry.import_checkpoint("https://example.org/model.pt", "tiny")
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    with pytest.raises(RegistryError, match="not a usable vertseg checkpoint"):
        registry.import_checkpoint(str(not_ckpt), "tiny")
    assert registry.entries() == [] and registry.default_ref() is None
    assert not list((home / "weights" / ".incoming").iterdir())  # nothing half-imported is left behind

    entry = registry.import_checkpoint(str(checkpoint), "tiny", version="v1", sha256=_sha(checkpoint))
    with pytest.raises(RegistryError, match="already registered"):
        registry.import_checkpoint(str(checkpoint), "tiny", version="v1")
    stored = registry.checkpoint(entry)
    stored.write_bytes(stored.read_bytes() + b"tampered")
    with pytest.raises(RegistryError, match="no longer matches its sha256"):
        registry.verified_checkpoint()
