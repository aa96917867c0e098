"""Post-processing: components, sequence decoders and the full labelmap assembly, with hand-computed expectations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vertseg.config import build_config
from vertseg.labels import C1_L5, EXTENDED, L6, T13
from vertseg.postprocess import PostprocessSettings, decode_dp, decode_paper, labelmap_from_predictions
from vertseg.postprocess.components import connected_components, min_voxels, ordered_instances


def one_hot_probs(classes: list[int], k: int = 24, confidence: float = 0.9) -> np.ndarray:
    """Rows peaked at the given protocol classes (1-based), the rest of the mass spread evenly."""
    probs = np.full((len(classes), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(classes)), np.asarray(classes) - 1] = confidence
    return probs


def test_min_voxels_follows_spacing():
    assert min_voxels(0.5, (1, 1, 1)) == 500
    assert min_voxels(0.5, (2, 2, 2)) == 63  # 0.5 ml / 8 mm^3 = 62.5 voxels
    assert min_voxels(0.0, (1, 1, 1)) == 0
    with pytest.raises(ValueError, match="positive"):
        min_voxels(1.0, (1, 0, 1))


def test_components_drop_fragments_in_ml_and_sort_superior_first():
    mask = np.zeros((40, 12, 12), bool)
    mask[25:35, 1:11, 1:11] = True  # 1000 voxels, inferior
    mask[2:12, 1:11, 1:11] = True  # 1000 voxels, superior
    mask[18:20, 5:7, 5:7] = True  # 8 voxels: 8 ml at 1 mm? no: 0.008 ml at 1 mm, 0.064 ml at 2 mm
    labels, n = connected_components(mask, (1, 1, 1), min_fragment_ml=0.05)
    assert n == 2
    labels, n = connected_components(mask, (2, 2, 2), min_fragment_ml=0.05)
    assert n == 3  # the same fragment is 0.064 ml at 2 mm and survives
    inst = ordered_instances(mask, (1, 1, 1), 0.05)
    assert inst.counts.tolist() == [1000, 1000]
    assert inst.centroids[:, 0].tolist() == [6.5, 29.5]
    assert inst.labels[5, 5, 5] == 1 and inst.labels[30, 5, 5] == 2


def test_dp_recovers_consecutive_labels_from_one_wrong_instance():
    # T10 T11 T12 L1 L2 with the T12 instance confidently called L3 (class 22).
    truth = [17, 18, 19, 20, 21]
    probs = one_hot_probs([17, 18, 22, 20, 21])
    assert decode_dp(probs, C1_L5).labels.tolist() == truth
    # The paper rules keep the argmax sequence's top anchor: 17, 18, then 19 (fill), 20, 21 -> also right here.
    assert decode_paper(probs, C1_L5).labels.tolist() == truth


def test_paper_decoder_is_anchored_by_the_top_instance_dp_is_not():
    probs = one_hot_probs([14, 18, 19, 20, 21])  # top instance wrongly T7 instead of T10
    assert decode_paper(probs, C1_L5).labels.tolist() == [14, 15, 16, 17, 18]
    assert decode_dp(probs, C1_L5).labels.tolist() == [17, 18, 19, 20, 21]


def test_paper_duplicates_keep_most_confident_and_renumber_by_order():
    probs = one_hot_probs([20, 20, 21], confidence=0.6)
    probs[1, 19] = 0.9  # the second instance is the confident L1
    decoded = decode_paper(probs, C1_L5)
    assert decoded.labels.tolist() == [19, 20, 21]  # the first becomes T12 (one above the kept L1)
    assert decoded.confidence[1] == pytest.approx(0.9)


def test_dp_sequence_is_clipped_to_the_chain_end():
    probs = one_hot_probs([21, 22, 23, 24, 24])  # five instances ending at L5: must be L1..L5
    assert decode_dp(probs, C1_L5).labels.tolist() == [20, 21, 22, 23, 24]
    assert decode_paper(probs, C1_L5).labels.tolist() == [20, 21, 22, 23, 24]


def test_dp_l6_variant_uses_merged_l5_evidence():
    # Six lumbar instances: with C1-L5 training the L6 vertebra looks like L5 (merged), the true L5 like L5/L4.
    probs = one_hot_probs([20, 21, 22, 23, 24, 24])
    strict = decode_dp(probs, C1_L5).labels.tolist()
    assert strict == [19, 20, 21, 22, 23, 24]
    assert decode_dp(probs, C1_L5, allow_l6=True).labels.tolist() == [20, 21, 22, 23, 24, L6]
    # Five clean lumbar levels never take the L6 detour.
    assert decode_dp(one_hot_probs([20, 21, 22, 23, 24]), C1_L5, allow_l6=True).labels.tolist() == [20, 21, 22, 23, 24]


def test_dp_t13_variant_on_the_extended_protocol():
    k = EXTENDED.num_classes
    classes = [EXTENDED.class_of(v) for v in (18, 19, T13, 20, 21)]
    probs = one_hot_probs(classes, k=k)
    assert decode_dp(probs, EXTENDED).labels.tolist() == [18, 19, T13, 20, 21]
    # Without T13 evidence the chain skips it.
    probs = one_hot_probs([EXTENDED.class_of(v) for v in (18, 19, 20, 21)], k=k)
    assert decode_dp(probs, EXTENDED).labels.tolist() == [18, 19, 20, 21]


def test_dp_more_instances_than_levels_labels_the_best_run():
    probs = one_hot_probs(list(range(1, 25)) + [24])
    decoded = decode_dp(probs, C1_L5)
    assert (decoded.labels > 0).sum() == 24
    assert decoded.labels[decoded.labels > 0].tolist() == list(range(1, 25))


def test_decoders_reject_bad_probabilities():
    with pytest.raises(ValueError, match=r"\(N, 24\)"):
        decode_dp(np.ones((3, 5)), C1_L5)
    with pytest.raises(ValueError, match="finite"):
        decode_paper(np.full((2, 24), np.nan), C1_L5)


def _phantom(touching: bool):
    """Five 20-voxel-tall boxes along z (L1..L5), optionally the first two bridged; 1/4-resolution class maps."""
    fg = np.zeros((130, 30, 30), np.float32)
    for i in range(5):
        fg[7 + 22 * i: 27 + 22 * i, 9:19, 8:18] = 0.9
    if touching:
        fg[27:29, 9:19, 8:18] = 0.9
    maps = np.full((25, 33, 8, 8), 0.01, np.float32)
    for i in range(5):
        maps[20 + i, (17 + 22 * i) // 4, 3, 3] = 1.0
    return fg, maps


def test_labelmap_splits_touching_vertebrae_and_reports_volumes():
    fg, maps = _phantom(touching=True)
    config = build_config({"inference": {"min_fragment_ml": 0.1, "min_vertebra_ml": 1.0}})
    labelmap, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), config)
    assert labelmap.shape == fg.shape and labelmap.dtype == np.uint8
    assert [r.label for r in records] == [20, 21, 22, 23, 24]
    assert labelmap[17, 13, 12] == 20 and labelmap[39, 13, 12] == 21
    # Each box keeps its own voxels; the bridge (2 slices x 100 voxels) carries no class evidence and goes to one of
    # the two vertebrae it joins.
    voxels = [r.voxels for r in records]
    assert voxels[2:] == [2000, 2000, 2000] and voxels[0] + voxels[1] == 4200 and min(voxels[:2]) >= 2000
    assert (labelmap[7:27] == 20).sum() == 2000 and (labelmap[29:49] == 21).sum() == 2000
    assert records[0].volume_ml == pytest.approx(voxels[0] / 1000)
    # The paper's per-class peaks and straight-line nearest centroid: slice 27 is 9.5 mm from L1's peak, slice 28
    # 9.5 mm from L2's, so the bridge is shared.
    paper = config.model_copy(update={"inference": config.inference.model_copy(
        update={"split_metric": "euclidean", "seeds": "peaks"})})
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), paper)
    assert [r.voxels for r in records] == [2100, 2100, 2000, 2000, 2000]
    assert records[0].name == "L1" and records[0].argmax_label == 20
    assert records[0].confidence > 3 / 24  # mean of a peaked heatmap: well above the uniform 1/24
    # Body centroid: centre of the peak's coarse voxel 4 at stride 4 (33 = ceil(130 / 4)): z = 4 * 4 + 1.5.
    assert records[0].body_centroid_zyx == pytest.approx((17.5, 13.5, 13.5))


def test_labelmap_without_split_keeps_one_instance_and_dp_shifts():
    fg, maps = _phantom(touching=True)
    settings = PostprocessSettings(min_fragment_ml=0.1, split_merged=False)
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), settings)
    assert len(records) == 4 and records[0].voxels == 4200


def test_labelmap_without_class_maps_ends_at_l5():
    fg, _ = _phantom(touching=False)
    labelmap, records = labelmap_from_predictions(fg, None, (1.0, 1.0, 1.0), PostprocessSettings(min_fragment_ml=0.1))
    assert [r.label for r in records] == [20, 21, 22, 23, 24]
    assert set(np.unique(labelmap)) == {0, 20, 21, 22, 23, 24}


def test_labelmap_threshold_and_empty_input():
    fg, maps = _phantom(touching=False)
    labelmap, records = labelmap_from_predictions(fg * 0.5, maps, (1.0, 1.0, 1.0))  # 0.45 < 0.5: nothing
    assert records == [] and not labelmap.any()
    with pytest.raises(ValueError, match="K = 24"):
        labelmap_from_predictions(fg, maps[:10], (1.0, 1.0, 1.0))


def test_gap_aware_dp_skips_the_level_of_a_missed_vertebra():
    fg, maps = _phantom(touching=False)
    fg[51:71] = 0  # L3 missed by the segmentation; its heatmap peak stays but has no instance
    maps[22] = 0.01
    strict = PostprocessSettings(min_fragment_ml=0.1)
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), strict)
    assert len([r.label for r in records]) == 4 and [r.label for r in records] != [20, 21, 23, 24]
    gap_aware = PostprocessSettings(min_fragment_ml=0.1, gap_aware=True)
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), gap_aware)
    assert [r.label for r in records] == [20, 21, 23, 24]


def _levels(rows: list[dict[int, float]], k: int = 24) -> np.ndarray:
    """Class probability rows from {protocol class: probability}, the rest spread evenly."""
    probs = np.zeros((len(rows), k))
    for i, row in enumerate(rows):
        probs[i] = (1 - sum(row.values())) / (k - len(row))
        for cls, p in row.items():
            probs[i, cls - 1] = p
    return probs


def test_split_aware_dp_keeps_one_level_over_a_piece_cut_off_a_vertebra():
    # T11 T12 [piece of T12] L1 L2 L3, evenly spaced, with a trained network's weak evidence; the piece (a fifth
    # of a vertebra) leans to T12.
    probs = _levels([{18: 0.3}, {19: 0.3}, {19: 0.2, 20: 0.15}, {20: 0.3}, {21: 0.3}, {22: 0.3}])
    centres = np.array([[0.0, 0.0, 25.0 * i] for i in range(6)])
    volumes = np.array([10.0, 10.0, 2.0, 10.0, 10.0, 10.0])
    assert decode_dp(probs, C1_L5, centroids_mm=centres, volumes=volumes).labels.tolist() == [18, 19, 19, 20, 21, 22]
    # Without the piece model one of the two shifts: the consecutive chain has no place for a sixth instance.
    assert decode_dp(probs, C1_L5, centroids_mm=centres).labels.tolist() != [18, 19, 19, 20, 21, 22]
    # A piece a fraction of a step from its body joins it whatever its size.
    close = centres.copy()
    close[2, 2] = 27.0
    same_size = np.full(6, 10.0)
    assert decode_dp(probs, C1_L5, centroids_mm=close, volumes=same_size).labels.tolist() == [18, 19, 19, 20, 21, 22]


def test_a_piece_joins_one_neighbour_and_never_bridges_two_vertebrae_into_one_level():
    # T11 T12 [piece] L1 L2 L3, where the network tells T12 and L1 apart no better than the piece between them:
    # a piece small next to both neighbours must not let all three share one level.
    probs = _levels([{18: 0.3}, {19: 0.2, 20: 0.2}, {19: 0.2, 20: 0.2}, {19: 0.2, 20: 0.2}, {21: 0.3}, {22: 0.3}])
    centres = np.array([[0.0, 0.0, 25.0 * i] for i in range(6)])
    volumes = np.array([10.0, 10.0, 2.0, 10.0, 10.0, 10.0])
    assert decode_dp(probs, C1_L5, centroids_mm=centres, volumes=volumes).labels.tolist() == [18, 19, 19, 20, 21, 22]


def test_split_aware_dp_leaves_a_vertebra_cut_by_the_field_of_view_its_level():
    # The last instance is small because the scan ends in it: it is still L3, not a piece of L2.
    probs = _levels([{17: 0.3}, {18: 0.3}, {19: 0.3}, {20: 0.3}, {21: 0.3}, {22: 0.3, 21: 0.25}])
    centres = np.array([[0.0, 0.0, 25.0 * i] for i in range(6)])
    volumes = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 2.0])
    assert decode_dp(probs, C1_L5, centroids_mm=centres, volumes=volumes).labels.tolist() == [17, 18, 19, 20, 21, 22]


def test_labelmap_joins_a_split_off_piece_with_its_vertebra():
    fg, maps = _phantom(touching=False)
    fg[41] = 0  # L2 (slices 29-48) loses a slice: slices 42-48 become a piece with no class evidence of its own
    peaks = PostprocessSettings(min_fragment_ml=0.1, seeds="peaks")
    labelmap, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), peaks)
    assert [r.label for r in records] == [20, 21, 22, 23, 24]
    assert [r.voxels for r in records] == [2000, 1900, 2000, 2000, 2000]
    assert (labelmap[42:49, 9:19, 8:18] == 21).all()
    # One record per level: the centre of mass of both pieces (1,200 voxels at z 34.5, 700 at z 45).
    assert records[1].centroid_zyx[0] == pytest.approx((34.5 * 1200 + 45 * 700) / 1900, abs=0.01)
    _, unjoined = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), replace(peaks, split_aware=False))
    assert [r.label for r in unjoined] == [19, 20, 21, 22, 23, 24]  # the piece takes a level: all shift by one


def test_a_thirteenth_thoracic_vertebra_is_named_t13_by_default():
    # T11 T12 T13 L1 L2 L3 as six separate boxes; a network trained on C1-L5 (T13 merged into T12) calls T13 "T12".
    fg = np.zeros((152, 30, 30), np.float32)
    maps = np.full((25, 38, 8, 8), 0.01, np.float32)
    for i, klass in enumerate([18, 19, 19, 20, 21, 22]):
        fg[7 + 22 * i: 27 + 22 * i, 9:19, 8:18] = 0.9
        maps[klass, (17 + 22 * i) // 4, 3, 3] = 1.0
    settings = PostprocessSettings(min_fragment_ml=0.1)
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), settings)
    assert [r.label for r in records] == [18, 19, T13, 20, 21, 22]
    # Without the transitional level the six instances cannot all keep their place.
    _, records = labelmap_from_predictions(fg, maps, (1.0, 1.0, 1.0), replace(settings, allow_t13=False))
    assert [r.label for r in records] != [18, 19, T13, 20, 21, 22] and T13 not in [r.label for r in records]
