"""The cranio-caudal level model behind the split seeds, and the decoder's "not a vertebra" end states."""

from __future__ import annotations

import numpy as np
import pytest

from vertseg.labels import C1_L5
from vertseg.postprocess import PostprocessSettings, decode_dp, labelmap_from_predictions
from vertseg.postprocess.levels import level_path, level_seeds, slice_evidence
from vertseg.postprocess.sequence import LabelChain

CHAIN = LabelChain.build(C1_L5)


def evidence_rows(classes: list[int], background: float = 0.0) -> np.ndarray:
    """(Z, 25) per-slice evidence: each slice's class (0 = background) with probability 0.8."""
    rows = np.full((len(classes), 25), 0.2 / 24)
    rows[np.arange(len(classes)), classes] = 0.8
    rows[:, 0] = np.where(np.asarray(classes) == 0, 0.8, background)
    return rows


def test_level_path_follows_the_evidence_and_ignores_empty_slices():
    classes = [17] * 6 + [18] * 6 + [19] * 7 + [20] * 8
    rows = evidence_rows(classes)
    rows[8:10] = np.nan  # two slices without mask (a disc, a gap)
    path = level_path(rows, CHAIN, slice_mm=3.0)
    assert [CHAIN.states[i] for i in path] == [17] * 6 + [18] * 6 + [19] * 7 + [20] * 8


def test_level_path_cannot_jump_or_go_back_a_level():
    # One slice in the middle of T10 looks like L3, one of T12 like T11: the sequence model keeps T10..L1 in order.
    classes = [17] * 6 + [18] * 6 + [19] * 7 + [20] * 8
    rows = evidence_rows(classes)
    rows[3, 17], rows[3, 22] = 0.05, 0.8
    rows[15, 19], rows[15, 18] = 0.05, 0.8
    labels = [CHAIN.states[i] for i in level_path(rows, CHAIN, slice_mm=3.0)]
    assert labels == [17] * 6 + [18] * 6 + [19] * 7 + [20] * 8


def test_background_slices_below_the_spine_are_not_a_vertebra():
    classes = [23] * 10 + [24] * 10 + [0] * 12  # L4, L5, then sacrum (bone the network calls background)
    path = level_path(evidence_rows(classes), CHAIN, slice_mm=3.0)
    assert (path[-12:] == len(CHAIN.states)).all()  # the "below the spine" state
    assert [CHAIN.states[i] for i in path[:20]] == [23] * 10 + [24] * 10


def test_slice_evidence_averages_the_maps_over_each_slice():
    maps = np.zeros((3, 2))  # channels x cells
    maps[1, 0], maps[2, 1] = 1.0, 1.0
    z = np.array([0, 0, 0, 2])
    cells = np.array([0, 0, 1, 1])
    ev = slice_evidence(z, cells, maps, n_slices=3)
    np.testing.assert_allclose(ev[0], [0, 2 / 3, 1 / 3])
    assert np.isnan(ev[1]).all()
    np.testing.assert_allclose(ev[2], [0, 0, 1])


def _tower(levels: list[int], height: int = 8):
    """Touching boxes along z, one per level, with one-hot class maps on a 1/4 grid (bone in every slice)."""
    z = height * len(levels)
    labels = np.zeros((z, 8, 8), np.uint8)
    for i, level in enumerate(levels):
        labels[i * height:(i + 1) * height, 2:6, 2:6] = level
    maps = np.zeros((25, z // 4, 2, 2), np.float32)
    for i, level in enumerate(levels):
        maps[level, i * height // 4:(i + 1) * height // 4] = 1.0
    maps[0] = 1.0 - maps[1:].sum(axis=0)
    return labels, maps


def test_seeds_lie_inside_the_mask_one_group_per_level():
    labels, maps = _tower([20, 21, 22])
    coords = np.argwhere(labels > 0).astype(float)
    cells = np.ravel_multi_index(tuple((coords // 4).astype(int).T), maps.shape[1:])
    seeds, groups = level_seeds(coords, cells, maps.reshape(25, -1), labels.shape[0], C1_L5, (1.0, 1.0, 1.0))
    assert sorted(CHAIN.states[g] for g in np.unique(groups)) == [20, 21, 22]
    assert (labels[tuple(seeds.astype(int).T)] > 0).all()
    for g in np.unique(groups):  # each group's seeds sit in its own level
        assert set(labels[tuple(seeds[groups == g].astype(int).T)]) == {CHAIN.states[g]}


def test_touching_tower_is_split_and_named_exactly():
    labels, maps = _tower([19, 20, 21, 22, 23])
    labelmap, records = labelmap_from_predictions((labels > 0).astype(np.float32), maps, (3.0, 3.0, 3.0),
                                                  PostprocessSettings(min_fragment_ml=0.0, min_vertebra_ml=0.0))
    assert [r.label for r in records] == [19, 20, 21, 22, 23]
    assert (labelmap == labels).all()


@pytest.mark.parametrize("background", [None, np.zeros(5)])
def test_decoder_without_background_evidence_shifts_rather_than_drops(background):
    probs = np.full((5, 24), 0.1 / 23)
    probs[np.arange(5), [20, 21, 22, 23, 23]] = 0.9  # L2..L5 then a second "L5": the sequence ends at L5
    assert decode_dp(probs, C1_L5, background=background).labels.tolist() == [20, 21, 22, 23, 24]


def test_decoder_names_a_sacrum_not_a_vertebra_instead_of_shifting_the_spine():
    probs = np.full((5, 24), 0.1 / 23)
    probs[np.arange(5), [20, 21, 22, 23, 23]] = 0.9
    background = np.array([0.05, 0.05, 0.05, 0.05, 0.9])  # the last instance is bone without a vertebra class
    decoded = decode_dp(probs, C1_L5, background=background)
    assert decoded.labels.tolist() == [21, 22, 23, 24, 0]
    assert decoded.confidence[-1] == 0.0
