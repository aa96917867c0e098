"""`vertseg train --init-from`: every matching tensor loaded, other shapes (another class count) reported and kept
fresh, teacher = student, optimiser and schedule fresh; end to end through the CLI on a phantom store."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from training_phantoms import TINY, make_store
from vertseg.cli.main import app
from vertseg.config import build_config
from vertseg.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vertseg.training.trainer import Trainer

NET = ["model.base_width=4", "data.patch_size=[32,16,16]", "train.method=proposed"]
HEAD = ("id_out.4.weight", "id_out.4.bias")  # the last identification conv: K+1 output channels


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A C1-L5 (24-class) checkpoint whose weights differ from any fresh initialisation."""
    trainer = Trainer(build_config({}, NET))
    with torch.no_grad():
        for p in trainer.bundle.parameters():
            p.add_(0.5)
    trainer.teacher.reinitialise(trainer.bundle.members[0])
    with torch.no_grad():
        for p in trainer.bundle.parameters():
            p.add_(0.25)  # the student moves on: teacher and student differ
    trainer.epoch = trainer.train_cfg.schedule.e_cons + 1  # the checkpoint's deployed weights are the teacher's
    path = tmp_path_factory.mktemp("src") / "c1l5.pt"
    save_checkpoint(path, trainer.state_dict())
    return path, {k: v.clone() for k, v in trainer.teacher.state_dict().items()}


def test_partial_loading_across_class_counts(source):
    path, weights = source
    trainer = Trainer(build_config({}, NET + ["data.protocol=extended", "model.num_classes=26"]))
    fresh = {k: v.clone() for k, v in trainer.bundle.members[0].state_dict().items()}
    report = trainer.initialise_from(path)

    assert report.weights == "teacher"
    assert [s.split()[0] for s in report.skipped] == list(HEAD)
    assert "(25, 8, 1, 1, 1) -> (27, 8, 1, 1, 1)" in report.skipped[0]
    assert report.missing == [] and report.unused == []
    student = trainer.bundle.members[0].state_dict()
    for name, value in student.items():
        torch.testing.assert_close(value, fresh[name] if name in HEAD else weights[name], rtol=0, atol=0)
    for name, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(value, student[name], rtol=0, atol=0)
    assert trainer.step == 0 and trainer.epoch == 0 and not trainer.optimizer.state
    assert "tensors loaded" in report.summary() and "id_out.4.weight" in report.summary()


def test_a_foreign_network_is_refused(source):
    path, _ = source
    trainer = Trainer(build_config({}, ["model.base_width=2", "data.patch_size=[32,16,16]", "model.bottleneck=none"]))
    with pytest.raises(CheckpointError, match="weights match the checkpoint"):
        trainer.initialise_from(path)


@pytest.mark.slow
def test_cli_fine_tunes_from_a_checkpoint(tmp_path, source):
    path, weights = source
    store = make_store(tmp_path / "s.zarr", {"training": 1, "unlabeled": 1})
    sets = TINY + ["train.method=proposed", "train.loader_workers=0", "train.schedule.epochs=1",
                   "train.schedule.iterations_per_epoch=1", "train.schedule.e_cons=0",
                   "train.schedule.e_ramp=1"]
    args = ["train", "--store", str(store), "--unlabeled", str(store), "--cpu-workers", "0", "--out", str(tmp_path / "r"),
            "--name", "ft", "--mlflow-uri", "none", "--init-from", str(path)]
    result = CliRunner().invoke(app, args + [x for item in sets for x in ("--set", item)])
    assert result.exit_code == 0, result.output
    assert "initialised from" in result.output and "tensors loaded" in result.output
    teacher = load_checkpoint(tmp_path / "r" / "ft" / "checkpoints" / "latest.pt")["teacher"]
    drift = max(float((teacher[k] - v).abs().max()) for k, v in weights.items() if v.is_floating_point())
    assert drift < 0.1  # one EMA step away from the source weights (a fresh network is >= 0.5 away)
    missing = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "does not exist" in " ".join(missing.output.split())
