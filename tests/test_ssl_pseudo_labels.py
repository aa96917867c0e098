"""The `train.ssl` switches: sequence-consistent pseudo-labels, the readiness gate, per-class adaptive thresholds,
distribution alignment, and the hidden-label diagnostics. Each test fails when its switch is broken."""

from __future__ import annotations

import math

import pytest
import torch

from vertseg.config import build_config
from vertseg.postprocess.assign import PostprocessSettings
from vertseg.training.methods.base import StepContext, pseudo_targets
from vertseg.training.pseudo_labels import (
    ClassBalance,
    argmax_pseudo_labels,
    class_map_entropy,
    hidden_classes,
    pseudo_label_accuracy,
    sequence_pseudo_labels,
)
from vertseg.model import SegIdOutput
from vertseg.training.trainer import Trainer

from test_training_methods import SMALL, phantom_batch

T3, T4, T5, T6 = 10, 11, 12, 13  # class indices (C1..C7 = 1..7, T1 = 8)
K = 24


def merged_pair_teacher(confidence: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Four separate vertebrae down a 32x16x16 patch at 3 mm; the class maps call them T3, T4, T4, T6: the two
    middle ones are merged into one class (what a narrowing teacher does)."""
    seg = torch.full((1, 1, 32, 16, 16), -8.0)
    for i in range(4):
        seg[..., 8 * i + 1 : 8 * i + 7, :, :] = 8.0
    named = [T3, T4, T4, T6]
    probs = torch.full((1, K + 1, 8, 4, 4), (1 - confidence) / K)
    for i, klass in enumerate(named):
        probs[:, klass, 2 * i : 2 * i + 2] = confidence
    return seg, probs


def vertebra_cells(i: int) -> tuple:
    return (0, slice(2 * i, 2 * i + 2))


def test_sequence_pseudo_labels_repair_a_merged_pair_that_argmax_keeps():
    seg, probs = merged_pair_teacher()
    argmax = argmax_pseudo_labels(probs)
    sequence = sequence_pseudo_labels(seg, probs, (3.0, 3.0, 3.0), PostprocessSettings())
    assert [int(argmax.classes[vertebra_cells(i)].unique()) for i in range(4)] == [T3, T4, T4, T6]
    decoded = [sequence.classes[vertebra_cells(i)].unique().tolist() for i in range(4)]
    assert decoded == [[T3], [T4], [T5], [T6]]  # one label per vertebra, a continuous run
    assert (sequence.confidence[vertebra_cells(2)] > 0).all()


def test_sequence_pseudo_labels_leave_background_untaught():
    seg, probs = merged_pair_teacher()
    seg[..., 26:, :, :] = -8.0  # the last vertebra is gone from the teacher's segmentation
    sequence = sequence_pseudo_labels(seg, probs, (3.0, 3.0, 3.0), PostprocessSettings())
    assert (sequence.classes[0, 7] == 0).all()  # cells below the bone carry no class, whatever the maps say
    assert (argmax_pseudo_labels(probs).classes[0, 7] == T6).all()


def _context(overrides: list[str], balance: ClassBalance | None = None, ready: bool = True) -> StepContext:
    config = build_config({}, SMALL + ["train.method=proposed"] + overrides)
    return StepContext(config=config.train, epoch=1, consistency_weight=1.0, tau_seg=0.5, tau_cls=0.55,
                       class_weights=torch.ones(K), generator=torch.Generator(), cls_enabled=ready, balance=balance,
                       postprocess=PostprocessSettings.from_config(config), spacing_mm=(3.0, 3.0, 3.0))


def _teacher_output() -> SegIdOutput:
    seg, probs = merged_pair_teacher()
    return SegIdOutput(seg=[seg], identification=probs.log() * 0.5)  # softmax(logits / T=0.5) gives probs back


def test_pseudo_targets_follow_the_switch():
    argmax = pseudo_targets(_teacher_output(), _context(["train.ssl.pseudo_labels=argmax"]))
    sequence = pseudo_targets(_teacher_output(), _context(["train.ssl.pseudo_labels=sequence"]))
    assert int(argmax.classes[vertebra_cells(2)].unique()) == T4
    assert int(sequence.classes[vertebra_cells(2)].unique()) == T5
    assert argmax.keep[vertebra_cells(2)].all() and sequence.keep[vertebra_cells(2)].all()


def test_readiness_gate_keeps_the_class_term_off_until_validation_passes():
    ctx = _context(["train.ssl.ready_acc_id=0.5"], ready=False)
    closed = pseudo_targets(_teacher_output(), ctx)
    assert not closed.keep.any() and ctx.logs["cls_gate"] == 0.0
    trainer = Trainer(build_config({}, SMALL + ["train.method=proposed", "train.ssl.ready_acc_id=0.5"]))
    trainer.epoch = 1
    logs = trainer.train_step(phantom_batch(0), phantom_batch(100)["image"])
    assert logs["cls_gate"] == 0.0 and logs["pass_cls"] == 0.0 and logs["loss_cons_cls"] == 0.0
    trainer.observe_validation({"val_volume_id_acc": 0.4, "val_id_acc": 0.9})  # full-volume Acc_ID decides
    assert not trainer.teacher_ready
    trainer.observe_validation({"val_volume_id_acc": 0.6})
    logs = trainer.train_step(phantom_batch(1), phantom_batch(101)["image"])
    assert logs["cls_gate"] == 1.0
    assert Trainer(build_config({}, SMALL + ["train.method=proposed"])).teacher_ready  # 0 = the paper: no gate
    state = trainer.state_dict()
    resumed = Trainer(build_config({}, SMALL + ["train.method=proposed", "train.ssl.ready_acc_id=0.5"]))
    resumed.load_state_dict(state)
    assert resumed.teacher_ready


def test_adaptive_thresholds_lower_the_bar_for_classes_the_teacher_rarely_predicts():
    balance = ClassBalance(3, momentum=0.0)
    probs = torch.zeros(1, 4, 10, 1, 1)
    probs[:, 0] = 0.1
    probs[:, 1, :8], probs[:, 2, 8:] = 0.9, 0.9  # the teacher predicts class 1 four times as often as class 2
    balance.update(probs, None)
    thresholds = balance.thresholds(0.6)
    assert thresholds[1] == pytest.approx(0.6)
    assert thresholds[2] < 0.25 and thresholds[3] < thresholds[2]
    ctx = _context(["train.ssl.class_thresholds=adaptive"], balance=ClassBalance(K, momentum=0.0))
    seg, probs = merged_pair_teacher(confidence=0.5)  # below tau_cls = 0.55 everywhere
    teacher = SegIdOutput(seg=[seg], identification=probs.log() * 0.5)
    assert not pseudo_targets(teacher, _context([])).keep.any()
    assert pseudo_targets(teacher, ctx).keep[vertebra_cells(0)].all()  # T3: a quarter as frequent as T4


def test_distribution_alignment_moves_mass_to_under_predicted_classes():
    balance = ClassBalance(2, momentum=0.0, target=torch.tensor([1.0, 1.0]))
    probs = torch.tensor([0.2, 0.45, 0.35]).view(1, 3, 1, 1, 1)
    balance.update(torch.tensor([0.0, 0.8, 0.2]).view(1, 3, 1, 1, 1), None)  # running shares 0.8 / 0.2
    aligned = balance.align(probs)
    assert aligned[0, 0].item() == pytest.approx(0.2)  # background untouched
    assert aligned[0, 1:].sum().item() == pytest.approx(0.8)
    assert aligned[0, 2].item() > aligned[0, 1].item()  # the rare class now wins
    balance.load_state_dict(balance.state_dict())
    assert balance.shares.tolist() == pytest.approx([0.8, 0.2])


def test_pseudo_label_accuracy_against_hidden_labels():
    pseudo = torch.tensor([[1, 2, 2, 0]]).view(1, 4, 1, 1)
    keep = torch.tensor([[True, True, True, False]]).view(1, 4, 1, 1)
    hidden = torch.tensor([[1, 2, 3, 3]]).view(1, 4, 1, 1)
    out = pseudo_label_accuracy(pseudo, keep, hidden)
    assert out["pseudo_acc"] == pytest.approx(2 / 3) and out["pseudo_cover"] == pytest.approx(3 / 4)
    swapped = pseudo_label_accuracy(torch.tensor([[2, 1, 3, 0]]).view(1, 4, 1, 1), keep, hidden)
    assert swapped["pseudo_acc"] == pytest.approx(1 / 3)
    assert pseudo_label_accuracy(pseudo, keep, torch.full_like(hidden, -1)) == {}  # an unlabelled scan: nothing


def test_hidden_classes_and_class_spread():
    labels = torch.zeros(1, 8, 4, 4, dtype=torch.long)
    labels[:, :4] = 5
    labels[:, 4:] = -1  # unknown half
    coarse = hidden_classes(labels, (2, 1, 1), K)
    assert coarse.view(-1).tolist() == [5, -1]
    classes = torch.tensor([1, 1, 1, 2, 3, 4]).view(1, 6, 1, 1)
    entropy, top2 = class_map_entropy(classes, torch.ones_like(classes, dtype=torch.bool), 4)
    assert top2 == pytest.approx(4 / 6)
    assert entropy == pytest.approx(-(0.5 * math.log(0.5) + 3 * (1 / 6) * math.log(1 / 6)) / math.log(4))


def test_trainer_logs_pseudo_label_accuracy_only_with_hidden_labels():
    trainer = Trainer(build_config({}, SMALL + ["train.method=proposed", "train.schedule.tau_cls_start=0",
                                                "train.schedule.tau_cls_end=0"]))
    trainer.epoch = 1
    unlabeled = phantom_batch(100)
    logs = trainer.train_step(phantom_batch(0), unlabeled["image"])
    assert "pseudo_acc" not in logs
    logs = trainer.train_step(phantom_batch(1), unlabeled["image"], unlabeled["labels"])
    assert 0.0 <= logs["pseudo_cover"] <= 1.0


def test_cps_students_branched_from_one_checkpoint_differ(tmp_path):
    from vertseg.training.checkpoint import save_checkpoint

    source = Trainer(build_config({}, SMALL + ["train.method=fsl"]))
    path = tmp_path / "warmup.pt"
    save_checkpoint(path, {**source.state_dict(), "best_metrics": {"val_volume_id_acc": 0.7}})
    cps = Trainer(build_config({}, SMALL + ["train.method=cps"]))
    cps.initialise_from(path)
    first, second = (dict(m.named_parameters()) for m in cps.bundle.members)
    name = next(n for n, p in first.items() if p.numel() > 1)
    assert torch.equal(first[name], dict(source.bundle.members[0].named_parameters())[name])
    assert not torch.equal(first[name], second[name])
    gated = Trainer(build_config({}, SMALL + ["train.method=proposed", "train.ssl.ready_acc_id=0.5"]))
    gated.initialise_from(path)  # the warm-up's validation opens the gate: the teacher starts as those weights
    assert gated.teacher_ready
