"""Every method trains a few steps on phantom-like patches; `proposed` learns; resume is exact; NaN stops cleanly."""

from __future__ import annotations

import pytest
import torch

from vertseg.config import build_config
from vertseg.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from vertseg.training.heatmaps import fill_missing_centroids
from vertseg.training.methods import METHODS
from vertseg.training.trainer import NonFiniteLossError, Trainer

SMALL = ["model.base_width=4", "train.methods.ua_mt_passes=2", "train.schedule.e_cons=0",
         "train.schedule.e_ramp=2", "train.schedule.epochs=4", "train.schedule.iterations_per_epoch=10"]


def phantom_batch(seed: int, batch: int = 2, shape=(16, 8, 8)) -> dict[str, torch.Tensor]:
    """A column of three 'vertebrae' (classes 1-3) with bright cortex and dimmer body, at a random x/y offset."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, *shape, dtype=torch.long)
    for b in range(batch):
        oy, ox = torch.randint(0, 3, (2,), generator=g).tolist()
        for k in range(3):
            labels[b, 1 + 5 * k : 5 + 5 * k, 1 + oy : 6 + oy, 1 + ox : 6 + ox] = k + 1
    mask = (labels > 0).float().unsqueeze(1)
    image = (0.15 + 0.6 * mask + 0.05 * torch.randn(mask.shape, generator=g)).clamp(0, 1)
    centroids = fill_missing_centroids(torch.full((batch, 24, 3), float("nan")), labels)
    return {"image": image, "mask": mask, "labels": labels, "centroids": centroids}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_steps_with_consistency_on(method):
    trainer = Trainer(build_config({}, SMALL + [f"train.method={method}"]))
    trainer.epoch = 1  # lambda > 0: unlabeled views and consistency terms are active
    for step in range(2):
        logs = trainer.train_step(phantom_batch(step), phantom_batch(100 + step)["image"])
        assert torch.isfinite(torch.tensor(logs["loss"])), logs
    assert trainer.step == 2 and trainer.skipped_steps == 0
    assert (trainer.teacher is not None) == METHODS[method]().uses_teacher
    if METHODS[method]().uses_unlabeled:
        assert "loss_cons_seg" in logs and logs["lambda_cons"] > 0
    if method == "seg_only":
        assert "loss_kl" not in logs  # segmentation branch only


@pytest.mark.slow
def test_proposed_loss_falls_over_30_steps():
    config = build_config({}, SMALL + ["train.method=proposed", "train.augment.flip_z_p=0", "train.optim.lr=0.02",
                                        "train.schedule.e_cons=40", "train.schedule.e_ramp=80"])
    trainer = Trainer(config)
    logs = [trainer.train_step(phantom_batch(i % 4), phantom_batch(50 + i)["image"]) for i in range(30)]

    def drop(key: str) -> float:
        """Mean of the last 5 steps over the mean of the first 5."""
        values = [step[key] for step in logs]
        return (sum(values[-5:]) / 5) / (sum(values[:5]) / 5)

    # The total is dominated by the (reweighted) instance Dice, which falls slowly by design; each term must fall.
    assert drop("loss") < 0.97 and drop("loss_seg") < 0.85 and drop("loss_kl") < 0.9 and drop("loss_inst") < 1.0, logs[-1]


def test_teacher_reinitialised_at_end_of_warm_up():
    config = build_config({}, SMALL + ["train.method=proposed", "train.schedule.e_cons=1", "train.schedule.iterations_per_epoch=1"])
    trainer = Trainer(config)
    batches = iter([phantom_batch(i) for i in range(3)])
    trainer.train_epoch(batches)
    student = trainer.bundle.members[0].state_dict()
    assert any(not torch.equal(trainer.teacher.state_dict()[k], v) for k, v in student.items())  # EMA lags in warm-up
    trainer.begin_epoch()  # epoch == E_cons
    for key, value in trainer.bundle.members[0].state_dict().items():
        assert torch.equal(trainer.teacher.state_dict()[key], value), key


def test_validation_and_inference_use_the_same_weights(tmp_path):
    """Before the warm-up restart the EMA teacher still averages in the random init: validation and the checkpoint's
    inference weights are the student; afterwards both are the teacher."""
    from vertseg.inference.model_loading import state_dict_of

    config = build_config({}, SMALL + ["train.method=proposed", "train.schedule.e_cons=1", "train.schedule.iterations_per_epoch=1"])
    trainer = Trainer(config)
    trainer.train_epoch(iter([phantom_batch(0)]))
    assert trainer.deployed_weights == "student"
    weights, key = state_dict_of(trainer.state_dict(), "c.pt")
    assert key == "model" and all(torch.equal(weights[k], v) for k, v in trainer.bundle.members[0].state_dict().items())
    trainer.train_epoch(iter([phantom_batch(1)]))  # epoch E_cons: restart, one consistency step
    assert trainer.deployed_weights == "teacher"
    assert state_dict_of(trainer.state_dict(), "c.pt")[1] == "teacher"
    fsl = Trainer(build_config({}, SMALL + ["train.method=fsl"]))
    fsl.epoch = 5
    assert fsl.deployed_weights == "student"


def test_resume_state_reproduces_the_uninterrupted_run(tmp_path):
    config = build_config({}, SMALL + ["train.method=proposed"])
    batches = [phantom_batch(i) for i in range(4)]
    unlabeled = [phantom_batch(10 + i)["image"] for i in range(4)]
    straight = Trainer(config)
    straight.epoch = 1
    for i in range(4):
        straight.train_step(batches[i], unlabeled[i])
    first = Trainer(config)
    first.epoch = 1
    for i in range(2):
        first.train_step(batches[i], unlabeled[i])
    save_checkpoint(tmp_path / "ck.pt", first.state_dict())
    torch.manual_seed(999)  # the restored RNG states must win over whatever happened in between
    resumed = Trainer(config)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ck.pt"))
    for i in range(2, 4):
        resumed.train_step(batches[i], unlabeled[i])
    assert resumed.step == straight.step == 4
    for key, value in straight.bundle.state_dict().items():
        assert torch.equal(resumed.bundle.state_dict()[key], value), key
    assert resumed.teacher.checksum() == straight.teacher.checksum()
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.state_dict()["state"][0]["momentum_buffer"].equal(straight.optimizer.state_dict()["state"][0]["momentum_buffer"])


def test_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    trainer = Trainer(build_config({}, SMALL + ["train.method=fsl"]))
    with pytest.raises(ValueError, match="method"):
        Trainer(build_config({}, SMALL + ["train.method=proposed"])).load_state_dict(trainer.state_dict())


def test_non_finite_steps_are_skipped_then_stop_the_run():
    trainer = Trainer(build_config({}, SMALL + ["train.method=fsl", "train.max_nonfinite_steps=1"]))
    with torch.no_grad():
        next(trainer.bundle.parameters())[0].fill_(float("nan"))  # a corrupted weight: every loss is NaN
    before = {k: v.clone() for k, v in trainer.bundle.state_dict().items()}
    bad = phantom_batch(0)
    logs = trainer.train_step(bad)
    assert logs["skipped"] == 1.0 and trainer.skipped_steps == 1
    for key, value in trainer.bundle.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)  # the bad step changed nothing
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        trainer.train_step(bad)
