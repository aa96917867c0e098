"""Seeds for splitting touching vertebrae, from a cranio-caudal sequence model over per-slice class evidence.

At coarse spacing every vertebra of a spine touches its neighbours and the mask is one component, so instances
come from seeds. Per-class peaks of the identification maps make poor seeds: a peak is a coarse cell, often
outside the thin mask, and a class whose evidence is spread or weak gives no peak at all; one lost seed merges two
vertebrae and shifts every label below. Here the slices of the mask are walked superior to inferior by a
hidden Markov model whose states are "above the spine", the levels of the label chain in order, and "below the
spine" (sacrum, fragments): a slice either stays in its level or advances one level, with the expected stay of a
level its typical height (VerSe 2019 training centroids). The evidence of a slice is the mean class probability
over its mask voxels. Each level's run of slices gives one seed: the mask voxel nearest to that level's
probability-weighted centre there, so a seed is always inside the mask.

The "slices" are cut across the spine's centre line (`SpineAxis`), not the scan's axial planes: where the spine
runs steeply forward (the cervicothoracic junction, a kyphosis), an axial slice holds two or three levels and the
walk gives a level too few slices; steps of the same thickness along the centre line hold one.

That model needs class maps that tell neighbouring levels apart. The mask's cores (`core_seeds`: its thick parts,
the vertebral bodies, on the distance to the background) count vertebrae without them; `cores_with_levels` joins
both kinds of seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cc3d
import numpy as np
from numpy.polynomial import Polynomial
from scipy import ndimage
from scipy.spatial import cKDTree

from vertseg.labels import L6, T13, Protocol
from vertseg.postprocess.sequence import NONE_PRIOR, LabelChain, viterbi

# Median distance (mm) from each level's body centroid to the next one's, C1..L5 (the last repeats L4-L5),
# measured on the 80 VerSe 2019 training scans (vertseg/resources/verse19_landmarks.csv). L6 and T13 reuse the
# height of the level they extend.
LEVEL_HEIGHT_MM = (21.7, 18.4, 16.9, 16.5, 15.7, 17.2, 18.3, 20.0, 20.3, 20.7, 20.8, 21.9, 21.9, 22.1, 23.4, 25.0,
                   26.2, 29.2, 30.7, 32.5, 33.9, 35.0, 33.1, 32.3)
_MERGED = {T13: 19, L6: 24}  # a transitional level takes the height of the level it extends
_EPS = 1e-6
CORE_GRID_MM = 2.0  # cores are found on blocks of at least this size: a vertebral body is still 6+ blocks across
MAX_CORE_HEIGHT_MM = 1.2 * max(LEVEL_HEIGHT_MM)  # a taller core is no vertebral body (a contrast-filled vessel, an organ)
_LEAVE_SPINE = 1e-3  # per slice: the spine ends (scan border, sacrum) before its last level
_ENTER_SPINE = 1e-3  # per slice: the spine starts below the top slice
AXIS_DEGREE = 3  # the centre line is a cubic in z: it follows a lordosis and a kyphosis, not ribs and processes
BOUNDARY_TWO_CLASS_SHARE = 0.95  # a level's cells hold two classes only: the coarse grid straddles a boundary
BOUNDARY_REGION_SHARE = 0.5  # ... and its boundary region is where the interpolated maps give it this share


@dataclass(frozen=True)
class SpineAxis:
    """The spine's centre line: a smooth curve through the per-slice centres of the mask, cut into steps of one
    slice thickness by arc length. The step of a point is that of the curve point nearest to it; the mask voxels'
    steps are found once, when the axis is fitted, and looked up after."""

    points_mm: np.ndarray  # (M, 3) dense samples of the curve, z first
    arc_mm: np.ndarray  # (M,) arc length at each sample
    spacing: np.ndarray
    voxel_keys: np.ndarray  # sorted flat indices (in `extent`) of the voxels fitted
    voxel_steps: np.ndarray  # their steps, in the same order
    extent: tuple[int, int, int]

    @classmethod
    def fit(cls, coords: np.ndarray, spacing, degree: int = AXIS_DEGREE) -> "SpineAxis":
        """Least-squares polynomial y(z), x(z) through the slice centres of the mask voxels `coords`, each weighted
        by the square root of its voxel count (a slice crossing ribs or a fragment pulls less than its area)."""
        spacing = np.asarray(spacing, dtype=np.float64)
        z = coords[:, 0].astype(np.int64)
        slices, inverse, count = np.unique(z, return_inverse=True, return_counts=True)
        centre = np.stack([np.bincount(inverse, weights=coords[:, a]) / count for a in (1, 2)], axis=1)
        zs = np.linspace(slices[0], slices[-1], 4 * (slices[-1] - slices[0]) + 1)
        degree = min(degree, slices.size - 1)
        curve = [zs] + [Polynomial.fit(slices, centre[:, a], degree, w=np.sqrt(count))(zs) if degree > 0
                        else np.full(zs.size, centre[0, a]) for a in (0, 1)]
        points = np.stack(curve, axis=1) * spacing
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
        extent = tuple(int(e) for e in coords.max(axis=0).astype(np.int64) + 1)
        keys = np.ravel_multi_index(tuple(coords.astype(np.int64).T), extent)
        order = np.argsort(keys)
        return cls(points, arc, spacing, keys[order], _curve_steps(points, arc, spacing, coords[order]), extent)

    def position(self, points: np.ndarray) -> np.ndarray:
        """Step along the centre line (0 at the top slice) of each voxel coordinate row of `points`."""
        if points.size == 0:
            return np.zeros(0, dtype=np.int64)
        voxels = points.astype(np.int64)
        inside = (voxels >= 0).all(axis=1) & (voxels < np.asarray(self.extent)).all(axis=1)
        keys = np.ravel_multi_index(tuple(np.where(inside[:, None], voxels, 0).T), self.extent)
        at = np.minimum(np.searchsorted(self.voxel_keys, keys), self.voxel_keys.size - 1)
        known = inside & (self.voxel_keys[at] == keys)
        steps = np.where(known, self.voxel_steps[at], 0)
        if not known.all():
            steps[~known] = _curve_steps(self.points_mm, self.arc_mm, self.spacing, points[~known])
        return steps


def _curve_steps(curve_mm: np.ndarray, arc_mm: np.ndarray, spacing: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Step (arc length in slice thicknesses) of the curve sample nearest to each voxel coordinate row."""
    _, nearest = cKDTree(curve_mm).query(np.asarray(points, dtype=np.float64) * spacing)
    return np.rint(arc_mm[nearest] / spacing[0]).astype(np.int64)


def positions(points: np.ndarray, axis: SpineAxis | None) -> np.ndarray:
    """Cranio-caudal step of each point: along `axis`, or its axial slice without one."""
    return points[:, 0].astype(np.int64) if axis is None else axis.position(points)


def slice_evidence(z: np.ndarray, map_index: np.ndarray, maps_flat: np.ndarray, n_slices: int) -> np.ndarray:
    """(n_slices, C) mean of each map channel over the mask voxels of each slice (NaN rows: empty slice).

    `z`: slice of each mask voxel (axial, or a step along the spine's centre line), `map_index`: its cell in the
    class-map grid, `maps_flat`: (C, cells). Voxels are counted per (slice, cell) pair first, so each map cell is
    read once per slice it touches."""
    cells = maps_flat.shape[1]
    pairs, count = np.unique(z.astype(np.int64) * cells + map_index, return_counts=True)
    slice_of, cell = pairs // cells, pairs % cells
    sums = np.stack([np.bincount(slice_of, weights=row, minlength=n_slices)
                     for row in maps_flat[:, cell].astype(np.float64) * count], axis=1)
    voxels = np.bincount(slice_of, weights=count, minlength=n_slices)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / voxels[:, None]
    mean[voxels == 0] = np.nan
    return mean


def level_path(evidence: np.ndarray, chain: LabelChain, slice_mm: float, transitional_prior: float = 0.1,
               background: bool = True) -> np.ndarray:
    """Most probable state per slice: -1 above the spine, i = index into `chain.states`, len(states) below it.

    `evidence`: (Z, 1 + K) per-slice class probabilities, column 0 the background ("not a vertebra"), columns
    1..K the protocol classes (`slice_evidence` of the full maps); NaN rows (no mask) favour no state. Each row is
    renormalised, so maps of any scale (softmax outputs, sum-1 heatmaps) compete on equal terms. The background pays
    the decoder's `NONE_PRIOR`: on the coarse grid every cell at a vertebra's edge is mostly air, so the background
    share of a vertebra's slice is often above its class's share. Without `background`, slices with mask are never
    "not a vertebra" (the states then only cover the empty slices beyond the spine)."""
    n_levels = len(chain.states)
    rows = np.nan_to_num(evidence, nan=0.0)
    total = rows.sum(axis=1, keepdims=True)
    rows = np.divide(rows, total, out=np.zeros_like(rows), where=total > 0)
    emit = np.zeros((rows.shape[0], n_levels + 2))
    observed = total[:, 0] > 0
    log_rows = np.log(rows[observed] + _EPS)
    emit[observed, 1:-1] = log_rows[:, np.asarray(chain.score_class)]
    none = log_rows[:, 0] + np.log(NONE_PRIOR) if background else np.log(_EPS) * 3
    emit[observed, 0] = emit[observed, -1] = none
    return viterbi(emit, _slice_transitions(chain, slice_mm, transitional_prior))[0] - 1


def _slice_transitions(chain: LabelChain, slice_mm: float, transitional_prior: float) -> np.ndarray:
    """(S + 2, S + 2) log transition weights between consecutive slices (above, levels..., below)."""
    n = len(chain.states)
    heights = np.array([LEVEL_HEIGHT_MM[_MERGED.get(s, s) - 1] for s in chain.states]) / max(slice_mm, 1e-6)
    stay = np.clip(1.0 - 1.0 / np.maximum(heights, 1.0), 1e-3, 1 - 1e-3)
    log_t = np.full((n + 2, n + 2), -np.inf)
    log_t[0, 0] = np.log1p(-_ENTER_SPINE)
    log_t[0, 1:-1] = np.log(_ENTER_SPINE / n)
    advance = np.exp(chain.transitions(transitional_prior))  # consecutive levels, transitional ones at a cost
    for i in range(n):
        log_t[1 + i, 1 + i] = np.log(stay[i] * (1 - _LEAVE_SPINE))
        with np.errstate(divide="ignore"):
            log_t[1 + i, 1:-1] = np.maximum(log_t[1 + i, 1:-1],
                                            np.log(advance[i] * (1 - stay[i]) * (1 - _LEAVE_SPINE)))
        log_t[1 + i, -1] = np.log(_LEAVE_SPINE)
    log_t[-1, -1] = 0.0
    return log_t


def level_seeds(coords: np.ndarray, map_index: np.ndarray, maps_flat: np.ndarray, protocol: Protocol, spacing,
                allow_l6: bool = False, allow_t13: bool = False, min_voxels: int = 1, regions: bool = True,
                background: bool = True, region_confidence: float = 0.0, axis: SpineAxis | None = None,
                sample_maps: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeds (M, 3) in the voxel coordinates of `coords` and the level (index of the chain) each stands for.

    `coords`: (N, 3) mask voxel indices (z first), `map_index`: their class-map cells, `maps_flat`: (1 + K, cells)
    maps with the background first (a row of zeros when the network has none). Slices are cut along `axis` (axial
    without one). Per level run of slices: the mask voxel nearest to the level's probability-weighted centre there,
    plus with `regions` every voxel of the run's inner slices (its first and last slice are shared with the
    neighbours) whose map cell the level wins, if the cells it wins give it a median share of at least
    `region_confidence` of their vertebra-class evidence. Seed regions keep a long spinous process, which a
    geodesic split from one body point hands to the vertebra below, with its own level (oracle maps at 3 mm, 82
    vertebrae: worst IoU with the truth 0.59 from single points, 0.78 from these regions; 0.38 from every voxel of
    the run). A trained network's maps are not that sure: its cells are won narrowly, at a tilted level by the level
    whose slices they share rather than the vertebra that fills them, and regions from them hand half a vertebra to
    its neighbour (trained fsl, 12 test phantoms: Acc_ID 53-55 % with every won cell, 77-79 % with the gate at 0.8;
    docs/postprocessing.md).

    With `sample_maps` (rows of `coords` -> (K, rows) vertebra-class maps interpolated at those voxels) regions
    follow the boundaries inside a cell: a won cell also covers the edge of the next vertebra, so a region keeps
    only the voxels where the interpolated maps name the level too; and a level that fails the gate only because
    its vertebra is small next to a cell (a cervical level on the 1/4 grid: its cells also hold the next level, but
    nothing else) gets a boundary region: if the cells it touches hold two classes for at least
    `BOUNDARY_TWO_CLASS_SHARE` of their evidence, the voxels where the interpolated maps give it
    `BOUNDARY_REGION_SHARE`. A trained network's unsure cells spread their evidence over more classes and get
    none. Nor do the first and last level seen: with a neighbour on one side only, their cells are two-class
    mixtures whatever the maps, and maps that only know distances to bodies (Gaussian heatmaps) would hand them the
    posterior elements of the vertebra next to them (a boundary share of 0.7 kept that small but left a small
    vertebra's arch to its neighbour: seed 2028's C4, IoU 0.53). A level whose run holds fewer than `min_voxels`
    mask voxels gives no seed (its voxels join a neighbour and the decoder still names the rest). `background`:
    whether the background channel may call slices "not a vertebra" (`inference.none_state`)."""
    chain = LabelChain.build(protocol, allow_l6, allow_t13)
    step = positions(coords, axis)
    path = level_path(slice_evidence(step, map_index, maps_flat, int(step.max(initial=-1)) + 1), chain,
                      float(np.asarray(spacing)[0]), background=background)
    state = path[step]
    spacing = np.asarray(spacing, dtype=np.float64)
    vertebra = maps_flat[1:].astype(np.float64)
    winner = np.argmax(vertebra, axis=0) + 1
    evidence = np.clip(vertebra.sum(axis=0), 1e-12, None)
    share = vertebra.max(axis=0) / evidence
    seeds, groups = [], []
    seen = np.unique(state[(state >= 0) & (state < len(chain.states))])
    for i in seen:
        members = np.flatnonzero(state == i)
        if members.size < min_voxels:
            continue
        klass = chain.score_class[i]
        weight = maps_flat[klass, map_index[members]].astype(np.float64)
        weight = weight if weight.sum() > 0 else np.ones_like(weight)
        centre = (coords[members] * weight[:, None]).sum(axis=0) / weight.sum()
        strong = members[weight >= 0.5 * weight.max()]
        chosen = [strong[np.argmin((((coords[strong] - centre) * spacing) ** 2).sum(axis=1))]]
        if regions:
            won = members[winner[map_index[members]] == klass]
            if not (won.size and np.median(share[map_index[won]]) >= region_confidence):
                inner = seen[0] < i < seen[-1]
                won = _boundary_region(members, klass, map_index, vertebra, evidence, sample_maps) if inner else won[:0]
            elif sample_maps is not None:
                won = won[np.argmax(sample_maps(won), axis=0) == klass - 1]
            run = step[members]
            chosen += list(won[(step[won] > run.min()) & (step[won] < run.max())])
        chosen = np.unique(chosen)
        seeds.append(coords[chosen])
        groups.append(np.full(chosen.size, i))
    if not seeds:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    return np.concatenate(seeds).astype(np.float64), np.concatenate(groups).astype(np.int64)


def _boundary_region(members: np.ndarray, klass: int, map_index: np.ndarray, vertebra: np.ndarray,
                     evidence: np.ndarray, sample_maps: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Voxels of `members` where the interpolated maps give `klass` its boundary share, if its cells are two-class
    mixtures (see `level_seeds`); none otherwise."""
    if sample_maps is None:
        return members[:0]
    cells = map_index[members]
    top_two = np.partition(vertebra[:, cells], -2, axis=0)[-2:].sum(axis=0) / evidence[cells]
    if np.median(top_two) < BOUNDARY_TWO_CLASS_SHARE:
        return members[:0]
    sampled = sample_maps(members)
    own = sampled[klass - 1] / np.clip(sampled.sum(axis=0), 1e-12, None)
    return members[(np.argmax(sampled, axis=0) == klass - 1) & (own >= BOUNDARY_REGION_SHARE)]


def core_seeds(coords: np.ndarray, spacing, dynamic_mm: float, floor_mm: float, min_voxels: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds (M, 3) and their group from the cores of the mask: its thick parts, found on the distance to the
    background.

    Touching vertebrae meet through discs and thin posterior elements, so their thick vertebral bodies come apart
    once the mask is eroded far enough; how far depends on the vertebra (a cervical body is a third of a lumbar
    one). The mask is therefore eroded step by step, deepest first (in steps of a quarter voxel down to `floor_mm`): a
    part that holds no core yet becomes one when it rises at least `dynamic_mm` above the depth where it appears
    (the h-maxima of the distance map: a body rises well above the disc that joins it to the next one, a bump on
    a lamina does not). Each core (at least `min_voxels`) is one vertebra whatever the class maps say: cores
    count vertebrae, the maps name them. Returns the core voxels, their core, and the voxels of cores taller than
    any vertebral body (a contrast-filled vessel, an organ), which are no seeds but mark their component."""
    if coords.size == 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    spacing = np.asarray(spacing, dtype=np.float64)
    factor = np.maximum(np.floor(CORE_GRID_MM / spacing), 1).astype(np.int64)
    if (factor > 1).any():
        return _core_seeds_on_coarser_grid(coords, spacing, factor, dynamic_mm, floor_mm, min_voxels)
    low = coords.min(axis=0).astype(np.int64)
    local = coords.astype(np.int64) - low + 1
    mask = np.zeros(tuple(local.max(axis=0) + 2), dtype=bool)
    mask[tuple(local.T)] = True
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    cores = np.zeros(mask.shape, dtype=np.int64)
    found = 0
    step = float(spacing.min()) / 4
    for level in floor_mm + step * np.arange(int((depth.max() - floor_mm) / step), -1, -1):
        parts, n = cc3d.connected_components(depth >= level, connectivity=6, return_N=True)
        if n == 0:
            continue
        holds = np.zeros(n + 1, dtype=bool)
        holds[np.unique(parts[cores > 0])] = True
        peak = np.zeros(n + 1)
        inside = parts > 0
        np.maximum.at(peak, parts[inside], depth[inside])  # per-part maximum in one pass (ndimage sorts the volume)
        size = np.bincount(parts.ravel(), minlength=n + 1)
        new = np.flatnonzero(~holds & (peak - level >= dynamic_mm - 1e-6) & (size >= min_voxels))
        new = new[new > 0]
        if new.size:
            lut = np.zeros(n + 1, dtype=np.int64)
            lut[new] = np.arange(found + 1, found + 1 + new.size)
            cores = np.where(cores > 0, cores, lut[parts])
            found += new.size
    group = cores[tuple(local.T)]
    inside = np.flatnonzero(group)
    coords, group = coords[inside].astype(np.float64), group[inside] - 1
    if group.size == 0:
        return coords, group.astype(np.int64), np.zeros((0, 3))
    top = ndimage.minimum(coords[:, 0], group, index=np.arange(found))
    bottom = ndimage.maximum(coords[:, 0], group, index=np.arange(found))
    tall = ((np.asarray(bottom) - np.asarray(top) + 1) * spacing[0] > MAX_CORE_HEIGHT_MM)[group]
    return coords[~tall], np.unique(group[~tall], return_inverse=True)[1].astype(np.int64), coords[tall]


def _core_seeds_on_coarser_grid(coords: np.ndarray, spacing: np.ndarray, factor: np.ndarray, dynamic_mm: float,
                                floor_mm: float, min_voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`core_seeds` on blocks of `factor` voxels (a block is mask when most of it is), mapped back to the mask
    voxels: the erosion ladder costs one labelling of the volume per step, so at 1 mm it would take tens of
    seconds, while a vertebral body is still several blocks across at `CORE_GRID_MM`."""
    local = coords.astype(np.int64) - coords.min(axis=0).astype(np.int64)
    block = local // factor
    shape = tuple(block.max(axis=0) + 1)
    count = np.bincount(np.ravel_multi_index(tuple(block.T), shape), minlength=int(np.prod(shape))).reshape(shape)
    coarse = np.argwhere(count >= 0.5 * np.prod(factor)).astype(np.float64)
    points, groups, tall = core_seeds(coarse, spacing * factor, dynamic_mm, floor_mm,
                                      max(1, min_voxels // int(np.prod(factor))))
    label = np.zeros(shape, dtype=np.int64)
    label[tuple(points.astype(np.int64).T)] = groups + 1
    label[tuple(tall.astype(np.int64).T)] = -1
    of_voxel = label[tuple(block.T)]
    fine = coords.astype(np.float64)
    return fine[of_voxel > 0], of_voxel[of_voxel > 0] - 1, fine[of_voxel < 0]


def cores_with_levels(core: tuple[np.ndarray, np.ndarray], level: tuple[np.ndarray, np.ndarray],
                      component: np.ndarray | None = None, axis: SpineAxis | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Join the two kinds of seeds: cores count the vertebrae, the sequence model's level seeds shape them.

    Each core belongs to the level whose seeds span most of its slices (cut along `axis`, as the levels were). A
    level holding exactly one core lends it its seeds (the level's seed regions keep a long spinous process with its
    own body); a level holding several cores is one the class maps could not tell apart, and its cores stand alone;
    a level with no core in its slices (a vertebra too thin for a core, e.g. cervical at coarse spacing) keeps its
    own seeds. `component` (optional, one id per core seed then per level seed): lent seeds must lie in their core's
    mask component (a level's seed regions cover whole slices, ribs and stray blobs included)."""
    core_points, core_groups = core
    level_points, level_groups = level
    levels = np.unique(level_groups)
    if levels.size == 0 or core_groups.size == 0:
        if core_groups.size:
            return core
        return level_points, np.unique(level_groups, return_inverse=True)[1]
    level_steps, core_steps = positions(level_points, axis), positions(core_points, axis)
    top = np.array([level_steps[level_groups == g].min() for g in levels])
    bottom = np.array([level_steps[level_groups == g].max() for g in levels])
    n_cores = int(core_groups.max()) + 1
    owner = np.full(n_cores, -1)
    for c in range(n_cores):
        z = core_steps[core_groups == c]
        overlap = ((z[:, None] >= top[None]) & (z[:, None] <= bottom[None])).sum(axis=0)
        owner[c] = int(np.argmax(overlap)) if overlap.max() > 0 else -1
    core_slices = np.unique(core_steps)
    points, groups = [core_points], [core_groups]
    extra = n_cores
    for i, g in enumerate(levels):
        members = level_groups == g
        held = np.flatnonzero(owner == i)
        if held.size == 1:
            if component is not None:
                own = component[np.flatnonzero(core_groups == held[0])[0]]
                members &= component[core_groups.size:] == own
            points.append(level_points[members])
            groups.append(np.full(int(members.sum()), held[0]))
        elif held.size == 0 and not np.isin(level_steps[members], core_slices).any():
            points.append(level_points[members])
            groups.append(np.full(int(members.sum()), extra))
            extra += 1
    return np.concatenate(points), np.concatenate(groups)
