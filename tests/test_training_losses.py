"""Each loss term against a hand-computed tiny example (Eq. 4-11), heatmaps and class weights."""

from __future__ import annotations

import math

import pytest
import torch

from vertseg.config import build_config
from vertseg.training.heatmaps import fill_missing_centroids, render_heatmaps, to_low_resolution
from vertseg.training.pseudo_labels import argmax_pseudo_labels, teacher_probabilities
from vertseg.training.losses import (
    class_competition_loss,
    class_frequency_weights,
    cls_consistency_loss,
    combine_identification,
    deep_supervision_loss,
    dice_bce,
    instance_dice_loss,
    kl_heatmap_loss,
    seg_consistency_loss,
    teacher_foreground,
)
from vertseg.training.losses.segmentation import bce_loss, soft_dice_loss


def vol(values, shape=(1, 1, 1, 1, 4)):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_dice_and_bce_by_hand():
    logits = vol([0.0, 0.0, 0.0, 0.0])  # p = 0.5 everywhere
    target = vol([1.0, 0.0, 1.0, 1.0])
    # Dice = 1 - (2 * 1.5 + eps) / (2 + 3 + eps); BCE = ln 2 for every voxel
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 3 / 5, abs=1e-6)
    assert bce_loss(logits, target).item() == pytest.approx(math.log(2), abs=1e-6)
    assert dice_bce(logits, target, 0.5, 1e-6).item() == pytest.approx(0.5 * 0.4 + 0.5 * math.log(2), abs=1e-6)


def test_deep_supervision_weights_scales_and_downsamples_targets():
    mask = torch.ones(1, 1, 4, 4, 4)
    big = 20.0  # p ~ 1: Dice ~ 0 and BCE ~ 0 at every scale except the one predicting background
    seg = [torch.full((1, 1, 4, 4, 4), big), torch.full((1, 1, 2, 2, 2), -big), torch.full((1, 1, 1, 1, 1), big)]
    loss = deep_supervision_loss(seg, mask, (4 / 7, 2 / 7, 1 / 7), 0.5, 1e-6)
    # the 1/2 scale predicts p ~ 0 on an all-foreground target: Dice = 1, BCE = 20 -> 0.5 * 1 + 0.5 * 20
    assert loss.item() == pytest.approx(2 / 7 * (0.5 + 10.0), rel=1e-4)
    with pytest.raises(ValueError, match="scale weights"):
        deep_supervision_loss(seg[:2], mask, (4 / 7, 2 / 7, 1 / 7), 0.5, 1e-6)


def test_kl_heatmap_by_hand():
    logits = torch.zeros(1, 2, 1, 1, 2)  # background + 1 class, P = (0.5, 0.5) over the two voxels
    heat = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2)
    present = torch.tensor([[True]])
    assert kl_heatmap_loss(logits, heat, present).item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_heatmap_loss(logits, heat, torch.tensor([[False]])).item() == 0.0


def test_instance_dice_by_hand_penalises_merges():
    labels = torch.tensor([1, 1, 2, 2]).reshape(1, 1, 1, 4)
    merged = torch.zeros(1, 3, 1, 1, 4)
    merged[:, 1] = 30.0  # predicts class 1 everywhere: vertebra 2 is merged into 1
    # class 1: Dice = 2*2 / (4 + 2) = 2/3; class 2: Dice = 0 -> mean loss (1/3 + 1) / 2
    assert instance_dice_loss(merged, labels).item() == pytest.approx((1 / 3 + 1) / 2, abs=1e-5)
    right = torch.zeros(1, 3, 1, 1, 4)
    right[:, 1, ..., :2] = 30.0
    right[:, 2, ..., 2:] = 30.0
    assert instance_dice_loss(right, labels).item() == pytest.approx(0.0, abs=1e-5)


def test_identification_reweighting_balances_terms():
    kl, inst = torch.tensor(3.0), torch.tensor(1.0)
    loss, w_kl, w_inst = combine_identification(kl, inst, "balance")
    assert w_kl * 3.0 == pytest.approx(w_inst * 1.0)
    assert loss.item() == pytest.approx(2 * 2 * 3 * 1 / 4)
    assert combine_identification(kl, inst, "none")[0].item() == 4.0
    assert combine_identification(torch.tensor(0.5), torch.tensor(0.5), "balance")[1:] == (1.0, 1.0)


def test_default_reweighting_keeps_the_instance_term_alive_when_kl_has_converged():
    """The spatial KL falls fast; the instance Dice (the per-voxel class competition inference uses) must keep its
    weight, or identification never learns (what the `balance` rule did)."""
    kl, inst = torch.tensor(0.003), torch.tensor(0.94)
    loss, w_kl, w_inst = combine_identification(kl, inst, build_config().train.loss.id_reweighting)
    assert w_inst == pytest.approx(2 * 0.94 / 0.943) and w_kl + w_inst == pytest.approx(2.0)
    assert loss.item() == pytest.approx(w_kl * 0.003 + w_inst * 0.94)
    assert combine_identification(kl, inst, "balance")[2] < 0.01  # the starved case, kept for comparison


def test_seg_consistency_by_hand():
    teacher = torch.logit(torch.tensor([0.95, 0.6, 0.1, 0.3])).reshape(1, 1, 1, 1, 4)
    student = torch.zeros(1, 1, 1, 1, 4)
    # tau = 0.8: confident voxels are 0.95 (pseudo 1) and 0.1 (pseudo 0); BCE at p_S = 0.5 is ln 2 for both
    loss, passed = seg_consistency_loss(student, teacher, tau=0.8)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert passed == pytest.approx(0.5)
    loss, passed = seg_consistency_loss(student, teacher, tau=0.99)
    assert loss.item() == 0.0 and passed == 0.0


def _argmax_targets(teacher: torch.Tensor, tau: float, temperature: float, region=None):
    pseudo = argmax_pseudo_labels(teacher_probabilities(teacher, temperature))
    keep = (pseudo.confidence > tau) & (pseudo.classes > 0)
    return pseudo.classes, keep if region is None else keep & region


def test_cls_consistency_by_hand():
    # two voxels; classes 0 (background), 1, 2. Teacher: voxel 0 -> class 2 (confident), voxel 1 -> background
    teacher = torch.tensor([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 1, 2)
    student = torch.zeros(1, 3, 1, 1, 2)
    student[:, 0] = 5.0  # the background channel does not take part: CE over the 2 vertebra channels = ln 2
    weights = torch.tensor([0.5, 1.5])
    classes, keep = _argmax_targets(teacher, tau=0.5, temperature=0.5)
    loss = cls_consistency_loss(student, classes, keep, class_weights=weights)
    # softmax(4/0.5 = 8 vs 0) confidence ~ 0.9993 > 0.5; background voxel excluded -> w_2 * ln 2 / 1 voxel
    assert loss.item() == pytest.approx(1.5 * math.log(2), abs=1e-5)
    assert keep.float().mean() == pytest.approx(0.5)
    # temperature matters: at T = 8 the confidence e^0.5/(e^0.5+2) = 0.45 falls below tau = 0.5
    classes, keep = _argmax_targets(teacher, tau=0.5, temperature=8.0)
    assert not keep.any() and cls_consistency_loss(student, classes, keep, weights).item() == 0.0


def test_cls_consistency_ignores_confident_classes_outside_the_teacher_foreground():
    # both voxels confidently class 1 in the heatmaps, but the teacher's segmentation sees bone only under voxel 0
    teacher_id = torch.tensor([[0.0, 4.0, 0.0], [0.0, 4.0, 0.0]]).T.reshape(1, 3, 1, 1, 2)
    seg_full = torch.full((1, 1, 4, 4, 8), -6.0)
    seg_full[..., :4] = 6.0  # the left half of the patch (voxel 0 of the 1/4 grid) is foreground
    region = teacher_foreground(seg_full, (1, 1, 2), threshold=0.5)
    assert region.tolist() == [[[[True, False]]]]
    student = torch.zeros(1, 3, 1, 1, 2)
    classes, keep = _argmax_targets(teacher_id, 0.5, 0.5, region)
    assert keep.float().mean() == pytest.approx(0.5)
    assert cls_consistency_loss(student, classes, keep, torch.ones(2)).item() == pytest.approx(math.log(2), abs=1e-5)
    assert _argmax_targets(teacher_id, 0.5, 0.5)[1].float().mean() == pytest.approx(1.0)


def test_class_frequency_weights_sum_to_k_and_favour_rare_classes():
    w = class_frequency_weights(torch.tensor([100.0, 300.0, 0.0, 600.0]))
    assert w.sum().item() == pytest.approx(4.0)
    assert w[0] == pytest.approx(3 * w[1]) and w[0] == pytest.approx(6 * w[3])
    assert w[2] == pytest.approx(w.max())  # unseen class: as rare as the rarest seen one
    assert torch.equal(class_frequency_weights(torch.zeros(3)), torch.ones(3))


def test_heatmaps_sum_to_one_and_peak_at_centroid():
    centroids = torch.tensor([[[2.0, 3.0, 1.0], [float("nan")] * 3, [-40.0, 0.0, 0.0]]])
    heat, present = render_heatmaps(centroids, (6, 6, 4), sigma=2.0)
    assert present.tolist() == [[True, False, False]]  # NaN = absent; 20 sigma outside = nothing visible
    assert heat[0, 0].sum().item() == pytest.approx(1.0, abs=1e-5)
    assert tuple(torch.nonzero(heat[0, 0] == heat[0, 0].max())[0].tolist()) == (2, 3, 1)
    assert heat[0, 1].sum() == 0 and heat[0, 2].sum() == 0
    # sigma = 2: neighbour one voxel away along z has exp(-1/8) of the peak
    assert (heat[0, 0, 3, 3, 1] / heat[0, 0, 2, 3, 1]).item() == pytest.approx(math.exp(-1 / 8), rel=1e-5)


def test_low_resolution_mapping_and_mask_centre_fallback():
    assert to_low_resolution(torch.tensor([1.5, 5.5, 0.0]), 4).tolist() == [0.0, 1.0, -0.375]
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    labels[0, 0:2, 0:2, 2:4] = 2
    centroids = torch.full((1, 3, 3), float("nan"))
    centroids[0, 0] = torch.tensor([9.0, 9.0, 9.0])  # from the centroid file: kept even if class 1 is not in labels
    filled = fill_missing_centroids(centroids, labels)
    assert filled[0, 0].tolist() == [9.0, 9.0, 9.0]
    assert filled[0, 1].tolist() == [0.5, 0.5, 2.5]
    assert torch.isnan(filled[0, 2]).all()


def test_class_competition_by_hand_on_the_quarter_grid():
    # Labels 4x4x8 -> one 1x1x2 grid of two cells: the first all class 1, the second half class 2, half background.
    labels = torch.zeros((1, 4, 4, 8), dtype=torch.long)
    labels[..., :4] = 1
    labels[:, :2, :, 4:] = 2
    logits = torch.zeros((1, 3, 1, 1, 2))
    logits[0, 1, 0, 0, 0] = math.log(4.0)  # cell 0: p(class 1) = 4 / 6
    # Bone cells: only cell 0 (cell 1 is half background, so it counts among the others, with soft targets).
    expected_bone = -math.log(4 / 6)
    expected_rest = -(0.5 * math.log(1 / 3) + 0.5 * math.log(1 / 3))
    value = class_competition_loss(logits, labels, background_weight=0.5)
    assert value.item() == pytest.approx(expected_bone + 0.5 * expected_rest, rel=1e-5)


def test_class_competition_prefers_the_right_vertebra_and_punishes_a_swap():
    labels = torch.zeros((1, 8, 8, 8), dtype=torch.long)
    labels[:, :4] = 1
    labels[:, 4:] = 2
    right = torch.full((1, 3, 2, 2, 2), -4.0)
    right[:, 1, 0], right[:, 2, 1] = 4.0, 4.0
    swapped = right[:, [0, 2, 1]]
    assert class_competition_loss(right, labels) < 0.01 < 3.0 < class_competition_loss(swapped, labels)
    # The gradient raises the true class and lowers the others at each bone cell (the competition inference reads).
    logits = torch.zeros((1, 3, 2, 2, 2), requires_grad=True)
    class_competition_loss(logits, labels).backward()
    assert (logits.grad[0, 1, 0] < 0).all() and (logits.grad[0, 2, 0] > 0).all()
    assert (logits.grad[0, 2, 1] < 0).all() and (logits.grad[0, 1, 1] > 0).all()


def test_class_competition_weighs_a_small_vertebra_as_much_as_a_large_one():
    # Quarter grid 1x1x8: class 1 (a lumbar-sized vertebra) fills cells 0-5, class 2 (cervical-sized) cells 6-7.
    labels = torch.zeros((1, 4, 4, 32), dtype=torch.long)
    labels[..., :24] = 1
    labels[..., 24:] = 2
    def wrong_on(cells):
        logits = torch.full((1, 3, 1, 1, 8), -4.0)
        logits[0, 1, 0, 0, :6], logits[0, 2, 0, 0, 6:] = 4.0, 4.0
        logits[0, 1:, 0, 0, cells] = logits[0, 1:, 0, 0, cells].flip(0)  # swap the two classes at these cells
        return logits
    small_wrong, large_wrong = wrong_on([6, 7]), wrong_on([0, 1, 2, 3, 4, 5])
    balanced = [class_competition_loss(x, labels, balance="vertebra").item() for x in (small_wrong, large_wrong)]
    per_cell = [class_competition_loss(x, labels, balance="cell").item() for x in (small_wrong, large_wrong)]
    # Each vertebra wholly misnamed costs the same; counted per cell the small one costs a third of the large one.
    assert balanced[0] == pytest.approx(balanced[1], rel=1e-4) and balanced[0] > 3.0
    assert per_cell[0] == pytest.approx(per_cell[1] / 3, rel=1e-3)
    # Vertebrae are told apart per scan: class 1 of a second, all-class-1 scan is a third vertebra (8 / 3, not 8 / 2).
    only_large = torch.ones_like(labels)
    right_large = torch.full((1, 3, 1, 1, 8), -4.0)
    right_large[0, 1] = 4.0
    two = class_competition_loss(torch.cat([small_wrong, right_large]), torch.cat([labels, only_large]))
    assert two.item() == pytest.approx(2 * balanced[0] / 3, rel=1e-3)


def test_supervised_loss_adds_the_competition_term_only_when_configured():
    from vertseg.model.output import SegIdOutput
    from vertseg.training.methods import supervised_loss

    labels = torch.zeros((1, 8, 8, 8), dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 3
    batch = {"mask": (labels > 0).float()[:, None], "labels": labels, "centroids": torch.full((1, 24, 3), float("nan"))}
    output = SegIdOutput(seg=[torch.zeros((1, 1, 8, 8, 8)), torch.zeros((1, 1, 4, 4, 4)), torch.zeros((1, 1, 2, 2, 2))],
                         identification=torch.zeros((1, 25, 2, 2, 2)))
    paper = build_config({"train": {"loss": {"id_ce_weight": 0.0}}}).train
    ours = build_config({}).train
    logs_paper, logs_ours = {}, {}
    base = supervised_loss(output, batch, paper, logs_paper)
    total = supervised_loss(output, batch, ours, logs_ours)
    assert "loss_id_ce" not in logs_paper and logs_ours["loss_id_ce"] > 0
    assert total.item() == pytest.approx(base.item() + logs_ours["loss_id_ce"], rel=1e-5)
