"""The cranio-caudal level model behind the split seeds, and the decoder's "not a vertebra" end states."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vertseg.labels import C1_L5
from vertseg.postprocess import PostprocessSettings, decode_dp, labelmap_from_predictions
from vertseg.postprocess import levels as levels_module
from vertseg.evaluation.identification import identification_accuracy
from vertseg.postprocess.assign import _map_sampler
from vertseg.postprocess.levels import (SpineAxis, core_seeds, cores_with_levels, level_path, level_seeds,
                                        slice_evidence)
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
    seeds, groups = level_seeds(coords, cells, maps.reshape(25, -1), C1_L5, (1.0, 1.0, 1.0))
    assert sorted(CHAIN.states[g] for g in np.unique(groups)) == [20, 21, 22]
    assert (labels[tuple(seeds.astype(int).T)] > 0).all()
    for g in np.unique(groups):  # each group's seeds sit in its own level
        assert set(labels[tuple(seeds[groups == g].astype(int).T)]) == {CHAIN.states[g]}


def test_seed_regions_come_only_from_levels_the_maps_name_surely():
    labels, maps = _tower([20, 21, 22])
    coords = np.argwhere(labels > 0).astype(float)
    cells = np.ravel_multi_index(tuple((coords // 4).astype(int).T), maps.shape[1:])

    def seeds_per_level(class_maps: np.ndarray, confidence: float) -> list[int]:
        _, groups = level_seeds(coords, cells, class_maps.reshape(25, -1), C1_L5, (1.0, 1.0, 1.0),
                                region_confidence=confidence)
        return np.unique(groups, return_counts=True)[1].tolist()

    assert min(seeds_per_level(maps, 0.8)) > 1  # exact maps: every level seeds its inner slices
    # A trained network's narrow wins: the same winners, each holding 45 % of its cell's vertebra evidence and
    # each other level of the tower 27.5 %.
    levels = [20, 21, 22]
    unsure = maps.copy()
    for own in levels:
        for other in levels:
            if other != own:
                unsure[other] += maps[own] * (0.275 / 0.45)
    assert seeds_per_level(unsure, 0.8) == [1, 1, 1]
    assert min(seeds_per_level(unsure, 0.0)) > 1  # ungated, as before 2026-12-01


def _tilted_tower(levels: list[int], tilt_deg: float, height: int = 6, radius: int = 4) -> np.ndarray:
    """Touching cylinders stacked along an axis tilted `tilt_deg` from z in the z-y plane (a steep cervicothoracic
    junction): an axial slice through one cuts its neighbours too. Shape padded to a multiple of 4."""
    theta = np.radians(tilt_deg)
    direction = np.array([np.cos(theta), np.sin(theta), 0.0])
    extent = len(levels) * height
    shape = (int(extent * direction[0]) + 2 * radius + 6, int(extent * direction[1]) + 2 * radius + 6, 2 * radius + 4)
    shape = tuple(s + (-s) % 4 for s in shape)
    offset = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1) - (radius + 2.0)
    along = offset @ direction
    across = np.linalg.norm(offset - along[..., None] * direction, axis=-1)
    labels = np.zeros(shape, np.uint8)
    for i, level in enumerate(levels):
        labels[(along >= i * height) & (along < (i + 1) * height) & (across <= radius)] = level
    return labels


def _quarter_grid_maps(labels: np.ndarray) -> np.ndarray:
    """What a perfect identification branch outputs: the classes' shares of each 4x4x4 cell (background first)."""
    classes = np.eye(25, dtype=np.float32)[labels]
    return classes.reshape(labels.shape[0] // 4, 4, labels.shape[1] // 4, 4, labels.shape[2] // 4, 4, 25
                           ).mean(axis=(1, 3, 5)).transpose(3, 0, 1, 2)


def test_spine_axis_steps_across_the_spine_not_across_the_scan():
    straight = np.argwhere(np.ones((10, 3, 3))).astype(float) + [5, 0, 0]
    vertical = SpineAxis.fit(straight, (3.0,) * 3)
    assert (vertical.position(straight) == straight[:, 0] - 5).all()
    assert (vertical.position(straight + [0, 4, 0]) == straight[:, 0] - 5).all()  # beside the fitted voxels
    labels = _tilted_tower([3, 4, 5, 6], tilt_deg=60)
    coords = np.argwhere(labels > 0).astype(float)
    axis = SpineAxis.fit(coords, (3.0,) * 3)
    step = axis.position(coords)
    levels_per_step = [np.unique(labels[tuple(coords[step == s].astype(int).T)]).size for s in np.unique(step)]
    levels_per_slice = [np.unique(labels[int(z)][labels[int(z)] > 0]).size for z in np.unique(coords[:, 0])]
    assert max(levels_per_slice) >= 3  # an axial slice cuts three vertebrae
    assert np.mean(np.asarray(levels_per_step) == 1) > 0.6 > np.mean(np.asarray(levels_per_slice) == 1)


@pytest.mark.parametrize("level_axis, named", [("centre-line", 6), ("axial", 4)])
def test_a_steeply_tilted_spine_is_named_along_its_centre_line(level_axis, named):
    labels = _tilted_tower([3, 4, 5, 6, 7, 8], tilt_deg=60)
    settings = PostprocessSettings(min_fragment_ml=0.0, min_vertebra_ml=0.0, level_axis=level_axis)
    labelmap, _ = labelmap_from_predictions((labels > 0).astype(np.float32), _quarter_grid_maps(labels),
                                            (3.0,) * 3, settings)
    result = identification_accuracy(labels, labelmap, (3.0,) * 3, min_fragment_ml=0.0)
    assert sum(result.correct.values()) == named  # axial slices give two levels too few slices and merge them


def test_a_small_level_straddling_coarse_cells_seeds_where_the_interpolated_maps_name_it():
    labels = _tilted_tower([3, 4, 5, 6, 7], tilt_deg=0, height=5)  # 15 mm vertebrae on 12 mm cells
    maps = _quarter_grid_maps(labels)
    coords = np.argwhere(labels > 0).astype(float)
    cells = np.ravel_multi_index(tuple((coords // 4).astype(int).T), maps.shape[1:])
    sampler = _map_sampler(maps[1:], coords, labels.shape)

    def regions(class_maps: np.ndarray, sample) -> list[int]:
        seeds, groups = level_seeds(coords, cells, class_maps.reshape(25, -1), C1_L5, (3.0,) * 3,
                                    region_confidence=0.95, sample_maps=sample)
        for g in np.unique(groups):  # every seed in its own vertebra
            assert set(labels[tuple(seeds[groups == g].astype(int).T)]) == {CHAIN.states[g]}
        return np.unique(groups, return_counts=True)[1].tolist()

    gated = np.asarray(regions(maps, None))
    inner = np.ones(gated.size, dtype=bool)
    inner[[0, -1]] = False  # the first and last level of the tower
    assert (gated[inner] == 1).any() and (gated[~inner] == 1).any()  # won cells all mixtures: one seed point each
    sampled = np.asarray(regions(maps, sampler))
    assert (sampled[inner & (gated == 1)] > 1).all()  # two-class mixtures between two levels: a boundary region each
    assert (sampled[~inner & (gated == 1)] == 1).all()  # the end of the spine: two-class whatever the maps, none
    unsure = maps.copy()  # the same winners, with a fifth of the evidence spread over the tower's five classes
    spread = np.isin(np.arange(24), [2, 3, 4, 5, 6])[:, None, None, None] / 5
    unsure[1:] = 0.8 * maps[1:] + 0.2 * maps[1:].sum(axis=0) * spread
    assert (np.asarray(regions(unsure, _map_sampler(unsure[1:], coords, labels.shape)))[gated == 1] == 1).all()


def test_a_small_level_between_two_keeps_its_arch_from_perfect_quarter_grid_maps(test_data, monkeypatch):
    """Seed 2028's sub-verse500 (C2-L2) as the one-hot oracle's sliding window gives it at 3 mm: C4 is 16 mm tall on
    12 mm cells, fails the seed-region gate, and the interpolated maps name its arch at a share of 0.5-0.7."""
    window = np.load(test_data / "oracle-window" / "seed2028-sub-verse500.npz")
    labels = window["labels"]

    def worst_iou() -> float:
        labelmap, records = labelmap_from_predictions(window["fg_prob"].astype(np.float32), window["class_maps"],
                                                      (3.0,) * 3)
        assert [r.label for r in records] == list(range(2, 22))
        return min(np.sum((labelmap == v) & (labels == v)) / np.sum((labelmap == v) | (labels == v))
                   for v in range(2, 22))

    assert worst_iou() > 0.75
    monkeypatch.setattr(levels_module, "BOUNDARY_REGION_SHARE", 0.7)
    assert worst_iou() < 0.6  # C5's seeds reach C4's arch first through the mask


def test_a_seed_region_stops_where_the_interpolated_maps_change_level_inside_a_cell():
    labels = _tilted_tower([3, 4, 5, 6, 7], tilt_deg=0, height=8)  # boundaries 2 voxels into a cell
    maps = _quarter_grid_maps(labels)
    coords = np.argwhere(labels > 0).astype(float)
    cells = np.ravel_multi_index(tuple((coords // 4).astype(int).T), maps.shape[1:])

    def seeds_in_another_vertebra(sample) -> int:
        seeds, groups = level_seeds(coords, cells, maps.reshape(25, -1), C1_L5, (3.0,) * 3, region_confidence=0.8,
                                    sample_maps=sample)
        return sum(int((labels[tuple(seeds[groups == g].astype(int).T)] != CHAIN.states[g]).sum())
                   for g in np.unique(groups))

    assert seeds_in_another_vertebra(None) > 0  # a won cell's voxels include the edge of the next vertebra
    assert seeds_in_another_vertebra(_map_sampler(maps[1:], coords, labels.shape)) == 0


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


def _spine_with_piece(piece_background: float) -> tuple[np.ndarray, np.ndarray]:
    """T9..L2 named confidently, with a seventh instance between T11 and T12 that names no level."""
    probs = np.full((7, 24), 0.1 / 23)
    probs[np.arange(7), [15, 16, 17, 0, 18, 19, 20]] = 0.9
    probs[3] = 1 / 24
    background = np.full(7, 0.3)
    background[3] = piece_background
    return probs, background


def test_decoder_names_a_mid_spine_piece_not_a_vertebra_instead_of_cutting_or_shifting():
    probs, background = _spine_with_piece(0.95)
    assert decode_dp(probs, C1_L5, background=background).labels.tolist() == [16, 17, 18, 0, 19, 20, 21]
    ends_only = decode_dp(probs, C1_L5, background=background, fragment_prior=0.0).labels.tolist()
    assert ends_only != [16, 17, 18, 0, 19, 20, 21]  # "not a vertebra" only at the ends: cut or shifted


def test_a_mid_spine_vertebra_without_class_evidence_keeps_its_level():
    probs, background = _spine_with_piece(0.3)  # bone like its neighbours, only its class is unknown
    probs[4:, :] = np.roll(probs[4:, :], 1, axis=1)  # ... and the levels after it are one further on
    assert decode_dp(probs, C1_L5, background=background).labels.tolist() == [16, 17, 18, 19, 20, 21, 22]


def _bodies(n: int, *, vessel: bool = False, fragment: bool = False):
    """`n` thick vertebral bodies (8 slices x 10 x 10 voxels at 3 mm) joined by 4 x 4 necks (discs, facets), one
    touching column; class maps that name nothing but the lowest body (L5), as an undertrained network's do.
    Optional: a tall separate column (a contrast-filled vessel) and a small separate blob beside the spine."""
    z = n * 10
    labels = np.zeros((z, 14, 26), np.uint8)
    for i in range(n):
        labels[i * 10:i * 10 + 8, 2:12, 2:12] = 20 + i
        labels[i * 10 + 8:i * 10 + 10, 5:9, 5:9] = 20 + i
    fg = (labels > 0).astype(np.float32)
    if vessel:
        fg[2:z - 2, 2:12, 15:25] = 1.0
    if fragment:
        fg[12:15, 16:19, 16:19] = 1.0
    maps = np.full((25, -(-z // 4), 4, 7), 1.0 / 25, np.float32)
    maps[:, -2:] = 0.02 / 24
    maps[24, -2:] = 0.9
    maps[0, -2:] = 0.08
    return labels, fg, maps


CORES = PostprocessSettings(seeds="cores", min_fragment_ml=0.1, min_vertebra_ml=1.0)


def test_cores_count_touching_vertebrae_that_the_class_maps_do_not_tell_apart():
    labels, fg, maps = _bodies(5)
    labelmap, records = labelmap_from_predictions(fg, maps, (3.0, 3.0, 3.0), CORES)
    assert [r.label for r in records] == [20, 21, 22, 23, 24]
    assert (labelmap == labels).mean() > 0.97  # only the necks may go to either neighbour
    _, by_sequence = labelmap_from_predictions(fg, maps, (3.0, 3.0, 3.0),
                                               PostprocessSettings(seeds="sequence", min_fragment_ml=0.1, min_vertebra_ml=1.0))
    assert len(by_sequence) < 5  # flat evidence: the slice model alone merges levels


@pytest.mark.parametrize("zoom", [1, 3])  # 3 mm voxels, and the same bodies at 1 mm (cores found on 2 mm blocks)
def test_core_seeds_are_inside_the_mask_one_group_per_body(zoom):
    labels, _, _ = _bodies(4)
    labels = labels.repeat(zoom, 0).repeat(zoom, 1).repeat(zoom, 2)
    coords = np.argwhere(labels > 0).astype(float)
    seeds, groups, not_bodies = core_seeds(coords, (3.0 / zoom,) * 3, dynamic_mm=3.0, floor_mm=4.5)
    assert not_bodies.size == 0
    assert np.unique(groups).size == 4
    for g in np.unique(groups):
        assert np.unique(labels[tuple(seeds[groups == g].astype(int).T)]).size == 1


def test_a_tall_column_and_a_stray_blob_take_no_level():
    labels, fg, maps = _bodies(5, vessel=True, fragment=True)
    labelmap, records = labelmap_from_predictions(fg, maps, (3.0, 3.0, 3.0), CORES)
    assert [r.label for r in records] == [20, 21, 22, 23, 24]
    assert not labelmap[:, :, 14:].any()  # neither the vessel nor the blob is labelled
    assert (labelmap[:, :, :14] == labels[:, :, :14]).mean() > 0.97


def test_level_seeds_shape_their_core_or_stand_in_for_a_missing_one():
    core = (np.array([[10.0, 1, 1], [20.0, 1, 1], [24.0, 1, 1]]), np.array([0, 1, 2]))
    # level 4 spans slices 9-11 (one core: lends its seeds, but not the one in another component), level 5 spans
    # 19-25 (two cores: its seeds are dropped), level 6 spans 30-31 (no core: its own group)
    level = (np.array([[9.0, 2, 2], [11.0, 2, 3], [10.0, 5, 5], [19.0, 1, 2], [25.0, 1, 2], [30.0, 1, 1], [31.0, 1, 2]]),
             np.array([4, 4, 4, 5, 5, 6, 6]))
    component = np.array([1, 1, 1, 1, 1, 2, 1, 1, 1, 1])
    seeds, groups = cores_with_levels(core, level, component)
    assert seeds.tolist() == [[10, 1, 1], [20, 1, 1], [24, 1, 1], [9, 2, 2], [11, 2, 3], [30, 1, 1], [31, 1, 2]]
    assert groups.tolist() == [0, 1, 2, 0, 0, 3, 3]


def test_an_unsure_network_does_not_lose_the_spine_to_not_a_vertebra():
    """On unfamiliar (real) scans the identification branch calls bone background while the segmentation branch sees
    it: "not a vertebra" may take a sacrum or a fragment (a quarter of the bone at most), not the spine."""
    labels, fg, maps = _bodies(5)
    maps[0] = 0.9  # background wins every cell, vertebra classes are flat
    maps[1:] = 0.1 / 24
    kept, records = labelmap_from_predictions(fg, maps, (3.0, 3.0, 3.0), CORES)
    assert (kept > 0).sum() == (fg > 0).sum() and len(records) == 5
    unguarded, _ = labelmap_from_predictions(fg, maps, (3.0, 3.0, 3.0), replace(CORES, max_none_share=1.0))
    assert (unguarded > 0).sum() < 0.5 * (fg > 0).sum()  # without the guard most of the spine is dropped
    sacrum = maps.copy()  # only the lowest body is clearly background: it alone may be dropped
    sacrum[0], sacrum[1:] = 0.02, 0.98 / 24
    sacrum[0, -2:], sacrum[1:, -2:] = 0.95, 0.05 / 24
    labelmap, records = labelmap_from_predictions(fg, sacrum, (3.0, 3.0, 3.0), CORES)
    assert [r.label for r in records][-1] == 0 and (labelmap[labels == 24] == 0).all()
