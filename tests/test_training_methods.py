"""Every method trains a few steps on phantom-like patches; `proposed` learns; resume is exact; NaN stops cleanly."""

from __future__ import annotations

import math

import pytest
import torch

from vertseg.config import build_config
from vertseg.model import SegIdOutput
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
                                        "train.schedule.e_cons=40", "train.schedule.e_ramp=80", "train.schedule.epochs=100"])
    trainer = Trainer(config)
    logs = [trainer.train_step(phantom_batch(i % 4), phantom_batch(50 + i)["image"]) for i in range(30)]

    def drop(key: str) -> float:
        """Mean of the last 5 steps over the mean of the first 5."""
        values = [step[key] for step in logs]
        return (sum(values[-5:]) / 5) / (sum(values[:5]) / 5)

    # The total is dominated by the (reweighted) instance Dice, which falls slowly by design; each term must fall
    # but the spatial KL, which starts at its floor on these small patches (0.044 at step 0; over 30 steps 0.047
    # with its gradient and 0.038 without: noise), so it is only held there.
    assert drop("loss") < 0.97 and drop("loss_seg") < 0.85 and drop("loss_inst") < 1.0, logs[-1]
    assert max(step["loss_kl"] for step in logs[-5:]) < 0.1, logs[-1]


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
    from vertseg.training.checkpoint import model_weights

    config = build_config({}, SMALL + ["train.method=proposed", "train.schedule.e_cons=1", "train.schedule.iterations_per_epoch=1"])
    trainer = Trainer(config)
    trainer.train_epoch(iter([phantom_batch(0)]))
    assert trainer.deployed_weights == "student"
    weights, key = model_weights(trainer.state_dict(), "c.pt")
    assert key == "model" and all(torch.equal(weights[k], v) for k, v in trainer.bundle.members[0].state_dict().items())
    trainer.train_epoch(iter([phantom_batch(1)]))  # epoch E_cons: restart, one consistency step
    assert trainer.deployed_weights == "teacher"
    assert model_weights(trainer.state_dict(), "c.pt")[1] == "teacher"
    student, key = model_weights(trainer.state_dict(), "c.pt", "model")  # the student scored beside the teacher
    assert key == "model" and all(torch.equal(student[k], v) for k, v in trainer.bundle.members[0].state_dict().items())
    with pytest.raises(CheckpointError, match="looked for ema"):
        model_weights(trainer.state_dict(), "c.pt", "ema")
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
    torch.save({"state": _Pickled()}, tmp_path / "code.pt")  # loading it fully would run this module's code
    with pytest.raises(CheckpointError, match=r"code.pt .*holds more than tensors .*_Pickled") as caught:
        load_checkpoint(tmp_path / "code.pt")
    assert "weights_only" not in str(caught.value)  # torch's advice to load it unsafely does not reach the user
    trainer = Trainer(build_config({}, SMALL + ["train.method=fsl"]))
    with pytest.raises(ValueError, match="method"):
        Trainer(build_config({}, SMALL + ["train.method=proposed"])).load_state_dict(trainer.state_dict())


class _Pickled:
    """A class a checkpoint may name but `weights_only` loading refuses."""


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


def _capture_outputs(bundle) -> list:
    """Every member's full-batch output of the next forward, in member order."""
    captured = []
    for member in bundle.members:
        member.register_forward_hook(lambda module, args, output: captured.append(output))
    return captured


def test_cps_teaches_each_network_the_other_networks_hard_pseudo_labels():
    """Network A is made to call every voxel background and class 1, network B foreground and class 2: each one's
    consistency loss must be the cross-entropy against the OTHER's hard labels (large here), not its own (~0)."""
    import torch.nn.functional as F

    from vertseg.training.methods.base import Views

    trainer = Trainer(build_config({}, SMALL + ["train.method=cps"]))
    trainer.epoch = 1
    a, b = trainer.bundle.members
    with torch.no_grad():
        a.seg_heads["0"].bias.fill_(-20.0)
        b.seg_heads["0"].bias.fill_(20.0)
        for net, label in ((a, 1), (b, 2)):
            net.id_out[-1].bias.zero_()
            net.id_out[-1].bias[label] = 50.0
    captured = _capture_outputs(trainer.bundle)
    ctx = trainer._context()
    labeled, weak = phantom_batch(0), phantom_batch(1)["image"]
    trainer.method.consistency_loss(trainer.bundle, None, Views(labeled=labeled, weak=weak), ctx)
    n = labeled["image"].shape[0]
    (seg_a, id_a), (seg_b, id_b) = ((out.seg[0][n:].detach(), out.identification[n:].detach()) for out in captured)
    assert (seg_a < 0).all() and (seg_b > 0).all()
    assert (id_a.argmax(1) == 1).all() and (id_b.argmax(1) == 2).all()

    expected_seg = (F.binary_cross_entropy_with_logits(seg_a, torch.ones_like(seg_a))
                    + F.binary_cross_entropy_with_logits(seg_b, torch.zeros_like(seg_b)))
    expected_cls = (F.cross_entropy(id_a, torch.full_like(id_a[:, 0], 2, dtype=torch.long))
                    + F.cross_entropy(id_b, torch.full_like(id_b[:, 0], 1, dtype=torch.long)))
    assert expected_seg > 10 and expected_cls > 10  # each network is told the opposite of what it says
    assert ctx.logs["loss_cons_seg"] == pytest.approx(float(expected_seg), rel=1e-5)
    assert ctx.logs["loss_cons_cls"] == pytest.approx(float(expected_cls), rel=1e-5)


class FixedTeacher:
    """A teacher whose outputs ignore its input, noise included: the uncertainty UA-MT measures is known exactly.

    Segmentation probabilities along x: 0.5 (maximal entropy ln 2), 0.27 (entropy 0.84 ln 2), 0.999 (~0).
    Identification over K + 1 = 25 classes along x: uniform (ln 25), uniform over 15 classes (0.84 ln 25), one-hot.
    """

    SEG_P = (0.5, 0.27, 0.999)

    def __init__(self, seg_shape: tuple[int, ...], id_shape: tuple[int, ...]) -> None:
        self.seg = torch.zeros(1, 1, *seg_shape)
        for i, p in enumerate(self.SEG_P):
            self.seg[..., i::3] = math.log(p / (1 - p))
        classes = id_shape[0]
        self.identification = torch.full((1, *id_shape), -40.0)
        self.identification[:, :, ..., 0::3] = 0.0
        self.identification[:, :15, ..., 1::3] = 0.0
        self.identification[:, 3, ..., 2::3] = 40.0
        assert classes == 25

    def __call__(self, x: torch.Tensor) -> SegIdOutput:
        n = x.shape[0]
        return SegIdOutput(seg=[self.seg.expand(n, *self.seg.shape[1:])],
                           identification=self.identification.expand(n, *self.identification.shape[1:]))


def _retain_output_grads(module, args, output) -> None:
    output.seg[0].retain_grad()
    output.identification.retain_grad()


def _uamt_setup(epoch: int):
    trainer = Trainer(build_config({}, SMALL + ["train.method=ua_mt"]))
    trainer.epoch = epoch
    shape = (16, 8, 24)  # identification at 1/4: six x columns, two per uncertainty level
    labeled, unlabeled = phantom_batch(0, shape=shape), phantom_batch(1, shape=shape)["image"]
    with torch.no_grad():
        shapes = trainer.bundle.members[0](unlabeled)
    teacher = FixedTeacher(tuple(shapes.seg[0].shape[2:]), tuple(shapes.identification.shape[1:]))
    return trainer, teacher, labeled, unlabeled


def _expected_keep(shape: tuple[int, ...], kept_columns: tuple[int, ...]) -> torch.Tensor:
    """1 where x % 3 is one of `kept_columns`."""
    column = torch.arange(shape[-1]) % 3
    return sum((column == c) for c in kept_columns).float().expand(shape)


@pytest.mark.parametrize(("epoch", "kept"), [(0, (2,)), (2, (1, 2))])
def test_ua_mt_masks_exactly_the_voxels_whose_teacher_is_uncertain(epoch, kept):
    """Threshold 0.75 ln C at the start of the ramp (epoch 0) and ln C at its end (epoch 2): maximal-entropy voxels
    never teach, 0.84 ln C voxels teach only once the threshold has risen, confident voxels always teach."""
    from vertseg.training.methods.mean_teacher import UAMT

    trainer, teacher, _, unlabeled = _uamt_setup(epoch)
    seg_mask, id_mask, seg_t, id_t = UAMT().targets(teacher, unlabeled, trainer._context())
    n = unlabeled.shape[0]
    assert teacher.identification.shape[-1] == 6
    assert torch.equal(seg_mask, _expected_keep((n, *teacher.seg.shape[2:]), kept))
    assert torch.equal(id_mask, _expected_keep((n, *teacher.identification.shape[2:]), kept))
    assert torch.equal(seg_t, teacher(unlabeled).seg[0]) and torch.equal(id_t, teacher(unlabeled).identification)


def test_ua_mt_consistency_gradient_reaches_only_confidently_taught_voxels():
    """Through the whole UA-MT loss: the student's unlabeled outputs get a gradient exactly where the teacher is
    confident, and none where it is uncertain (Mean Teacher, without the mask, pulls on every voxel)."""
    from vertseg.training.methods.base import Views
    from vertseg.training.methods.mean_teacher import UAMT, MeanTeacher

    for method, kept in ((UAMT(), (2,)), (MeanTeacher(), (0, 1, 2))):
        trainer, teacher, labeled, unlabeled = _uamt_setup(0)
        captured = _capture_outputs(trainer.bundle)
        trainer.bundle.members[0].register_forward_hook(_retain_output_grads)
        ctx = trainer._context()
        ctx.consistency_weight = 1.0
        views = Views(labeled=labeled, weak=unlabeled, strong=unlabeled)
        method.consistency_loss(trainer.bundle, teacher, views, ctx).backward()
        n = labeled["image"].shape[0]
        seg_grad, id_grad = captured[0].seg[0].grad[n:], captured[0].identification.grad[n:]
        assert torch.equal((seg_grad != 0).float(), _expected_keep(seg_grad.shape, kept)), method.name
        assert torch.equal((id_grad != 0).any(1, keepdim=True).float(), _expected_keep(id_grad[:, :1].shape, kept)), method.name
