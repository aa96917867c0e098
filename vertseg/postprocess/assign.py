"""Section 2.6 post-processing: network outputs -> VerSe labelmap + per-vertebra table.

Steps: threshold the foreground (0.5); 3D connected components without small fragments are the vertebra candidates;
seeds, always inside the mask (`seeds`: the mask's cores, which count vertebrae whatever the class maps say, shaped
by a cranio-caudal sequence model over the class evidence of slices cut across the spine's centre line, `levels.py`,
default; the sequence model alone; or per-class peaks snapped into the mask, the paper's "per-class peak
locations"); a component holding several seed groups (touching vertebrae) is split by nearest seed - through the
mask (geodesic, default) or in a straight line (Euclidean, the paper's wording); with cores, pieces without a seed
that are fragments get no level; each candidate's class probabilities are the mean of the class maps over its
voxels; candidates sorted cranio-caudally are labelled by a sequence decoder (`sequence.py`) that may call the ends
of the sequence "not a vertebra".

Arrays are in the canonical store frame (axis 0 = z, index 0 most superior). Class maps may be at a coarser
grid than the foreground (the identification branch runs at 1/4 resolution); they are sampled, never upsampled
into a full-size buffer per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from vertseg.labels import C1_L5, PROTOCOLS, VERSE_NAMES, Protocol
from vertseg.postprocess.components import connected_components, min_voxels, sort_cranio_caudal, voxel_volume_ml
from vertseg.postprocess.levels import SpineAxis, core_seeds, cores_with_levels, level_seeds
from vertseg.postprocess.sequence import FRAGMENT_PRIOR, Decoded, DecoderName, decode


UNSEEDED_SHARE = 0.5  # seeds=cores: an instance without a seed, smaller than this share of the median seeded one, is a fragment


@dataclass(frozen=True)
class PostprocessSettings:
    """What post-processing needs; `from_config` reads it from a VertsegConfig or an InferenceConfig."""

    seg_threshold: float = 0.5  # section 2.6: foreground at probability 0.5
    min_fragment_ml: float = 0.5
    decoder: DecoderName = "dp"
    allow_l6: bool = True
    allow_t13: bool = True
    min_vertebra_ml: float = 2.0
    peak_threshold: float = 0.1
    seeds: Literal["cores", "sequence", "peaks"] = "cores"
    core_dynamic_mm: float = 3.0
    core_floor_mm: float = 4.5
    seed_regions: bool = True
    seed_region_confidence: float = 0.8
    interpolated_regions: bool = True
    level_axis: Literal["centre-line", "axial"] = "centre-line"
    none_state: bool = True
    max_none_share: float = 0.25  # "not a vertebra" may take at most this share of the bone, else decode without it
    fragment_prior: float = FRAGMENT_PRIOR
    split_merged: bool = True
    split_metric: Literal["geodesic", "euclidean"] = "geodesic"
    gap_aware: bool = False
    split_aware: bool = True
    protocol: Protocol = C1_L5

    @classmethod
    def from_config(cls, config: Any) -> "PostprocessSettings":
        if isinstance(config, cls):
            return config
        protocol = PROTOCOLS[config.data.protocol] if hasattr(config, "data") else C1_L5
        section = getattr(config, "inference", config)
        values = {name: getattr(section, name) for name in cls.__dataclass_fields__ if hasattr(section, name)}
        return cls(**(values | {"protocol": protocol}))


@dataclass(frozen=True)
class VertebraRecord:
    """One labelled vertebra (label 0: no consistent level). Coordinates are voxel (z, y, x) of the input grid:
    `centroid_zyx` the centre of mass, `body_centroid_zyx` the identification peak inside it (write this one to
    the VerSe centroid JSON: VerSe centroids are vertebral-body centres). `confidence`: probability of the label."""

    label: int
    name: str
    voxels: int
    volume_ml: float
    centroid_zyx: tuple[float, float, float]
    body_centroid_zyx: tuple[float, float, float]
    confidence: float
    argmax_label: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _with_background(class_maps: np.ndarray, protocol: Protocol) -> np.ndarray:
    """(K+1, ...) or (K, ...) maps -> (K+1, ...) with the background first (zeros when the network has none)."""
    k = protocol.num_classes
    if class_maps.ndim != 4 or class_maps.shape[0] not in (k, k + 1):
        raise ValueError(
            f"class maps must be (K+1 or K, Z, Y, X) with K = {k} for protocol {protocol.name}, got {class_maps.shape}"
        )
    if class_maps.shape[0] == k + 1:
        return class_maps
    return np.concatenate([np.zeros((1,) + class_maps.shape[1:], class_maps.dtype), class_maps])


def _scale(map_shape: tuple[int, ...], fg_shape: tuple[int, ...]) -> np.ndarray:
    """Foreground voxels per map voxel along each axis: the integer stride when the map is the ceil-divided grid
    of a strided branch (1/4 resolution: ceil(Z / 4) voxels), else the plain extent ratio."""
    fine, coarse = np.asarray(fg_shape, dtype=np.float64), np.asarray(map_shape, dtype=np.float64)
    stride = np.maximum(np.round(fine / coarse), 1.0)
    return np.where(np.ceil(fine / stride) == coarse, stride, fine / coarse)


def peak_seeds(coords: np.ndarray, map_index: np.ndarray, vert_flat: np.ndarray, threshold: float) -> np.ndarray:
    """Per-class peak locations as seeds (M, 3), each snapped into the mask: the mask voxel where the class map is
    highest (ties: the one nearest to the centre of those voxels). Classes whose map stays below `threshold`
    inside the mask give no seed."""
    values = vert_flat[:, map_index]
    best = values.max(axis=1)
    seeds = []
    for k in np.flatnonzero(best >= threshold):
        top = np.flatnonzero(values[k] >= best[k] - 1e-6)
        centre = coords[top].mean(axis=0)
        seeds.append(coords[top[np.argmin(((coords[top] - centre) ** 2).sum(axis=1))]])
    return np.asarray(seeds, dtype=np.float64).reshape(-1, 3)


def nearest_centroid(points: np.ndarray, centroids: np.ndarray, spacing) -> np.ndarray:
    """Index of the nearest centroid (Euclidean in mm) for each voxel coordinate row of `points`.

    Few centroids (<= 26), many voxels: a running minimum over the centroids, each step vectorised over all voxels
    (faster here than a k-d tree query or a BLAS product with an inner dimension of 3)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    axes = [np.ascontiguousarray(points[:, a] * spacing[a], dtype=np.float32) for a in range(3)]
    centres = centroids * spacing
    best = np.full(points.shape[0], np.inf, dtype=np.float32)
    index = np.zeros(points.shape[0], dtype=np.int64)
    distance = np.empty(points.shape[0], dtype=np.float32)
    step = np.empty(points.shape[0], dtype=np.float32)
    for k, centre in enumerate(centres):
        np.square(axes[0] - np.float32(centre[0]), out=distance)
        for a in (1, 2):
            np.subtract(axes[a], np.float32(centre[a]), out=step)
            distance += np.square(step, out=step)
        closer = distance < best
        best[closer] = distance[closer]
        index[closer] = k
    return index


def geodesic_owner(flat_fg: np.ndarray, shape: tuple[int, ...], coords: np.ndarray, seeds: np.ndarray, spacing
                   ) -> np.ndarray:
    """Index into `seeds` of the seed each foreground voxel is geodesically nearest to, moving only through the
    foreground (6-neighbour steps weighted by the spacing; multi-source Dijkstra); -1 where none is reachable.

    `flat_fg`: sorted flat indices of the foreground voxels (the graph nodes), `coords` their (N, 3) indices,
    `seeds`: sorted, unique node numbers of the seeds. Unlike the straight-line nearest centroid, this keeps a spinous process,
    which reaches down next to the vertebra below, with the body it is attached to."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n = flat_fg.size
    strides = (shape[1] * shape[2], shape[2], 1)
    rows, cols, weights = [], [], []
    for axis in range(3):
        source = np.flatnonzero(coords[:, axis] < shape[axis] - 1)
        neighbour = flat_fg[source] + strides[axis]
        position = np.minimum(np.searchsorted(flat_fg, neighbour), n - 1)
        hit = flat_fg[position] == neighbour
        rows.append(source[hit])
        cols.append(position[hit])
        weights.append(np.full(int(hit.sum()), float(spacing[axis])))
    graph = csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    _, _, sources = dijkstra(graph, directed=False, indices=seeds, min_only=True, return_predecessors=True)
    owner = np.full(n, -1, dtype=np.int64)
    reached = sources >= 0
    owner[reached] = np.searchsorted(seeds, sources[reached])
    return owner


def voxels_of(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(M, 3) integer voxel indices of sub-voxel points, clipped to the volume."""
    return np.clip(np.floor(points + 0.5).astype(np.int64), 0, np.asarray(shape) - 1)


def _split_by_seeds(cc: np.ndarray, n_cc: int, coords: np.ndarray, flat_fg: np.ndarray, seeds: np.ndarray,
                    groups: np.ndarray, spacing, min_piece: int, metric: str) -> tuple[np.ndarray, int]:
    """Split components that hold several seed groups into one piece per group: each voxel goes to the group of
    its nearest seed (through the mask, or in a straight line). `seeds` (M, 3) voxel coordinates, `groups` (M,)
    the vertebra each seed stands for (several seeds may stand for one).

    A piece stands on its own when a seed of its group lies inside its component and it has at least `min_piece`
    voxels; other pieces join the largest standing piece of their component (or the component stays whole)."""
    comp = cc.ravel()[flat_fg].astype(np.int64)
    seed_vox = voxels_of(seeds, cc.shape)
    seed_comp = cc[tuple(seed_vox.T)].astype(np.int64)
    owner = np.full(flat_fg.size, -1, dtype=np.int64)
    if metric == "geodesic":
        inside = seed_comp > 0
        seed_nodes = np.searchsorted(flat_fg, np.ravel_multi_index(tuple(seed_vox[inside].T), cc.shape))
        if seed_nodes.size:
            unique_nodes, first = np.unique(seed_nodes, return_index=True)
            local = geodesic_owner(flat_fg, cc.shape, coords, unique_nodes, spacing)
            owner[local >= 0] = groups[inside][first][local[local >= 0]]
    else:
        owner = groups[nearest_centroid(coords, seeds, spacing)]
    m = int(groups.max()) + 2
    key = comp * m + owner + 1
    pieces, piece_of_voxel, piece_size = np.unique(key, return_inverse=True, return_counts=True)
    piece_comp = pieces // m
    seeded = np.isin(pieces, seed_comp * m + groups + 1)
    valid = (piece_size >= min_piece) & (pieces % m > 0) & seeded
    score = piece_size + valid * (piece_size.max() + 1)
    order = np.lexsort((-score, piece_comp))
    comps, first_in_order = np.unique(piece_comp[order], return_index=True)
    best = np.zeros(n_cc + 1, dtype=np.int64)
    best[comps] = order[first_in_order]
    target = np.where(valid, np.arange(pieces.size), best[piece_comp])
    new_ids, remap = np.unique(target, return_inverse=True)
    labels = np.zeros(cc.size, dtype=np.uint32)
    labels[flat_fg] = remap[piece_of_voxel] + 1
    return labels.reshape(cc.shape), int(new_ids.size)


def _drop_unseeded(instances: np.ndarray, n: int, seeds: np.ndarray, not_bodies: np.ndarray) -> tuple[np.ndarray, int]:
    """Instances holding no seed that are much smaller than the seeded ones (a rib end, a stray blob, a piece the
    split cut off) or that hold a core too tall for a vertebral body get no level: left in, each would take a place
    in the consecutive sequence and shift every label after it. Large unseeded instances stay candidates."""
    def held_by(points: np.ndarray) -> np.ndarray:
        return np.unique(instances[tuple(voxels_of(points, instances.shape).T)]).astype(np.int64)

    seeded = np.zeros(n + 1, dtype=bool)
    seeded[held_by(seeds)] = True
    seeded[0] = False
    size = np.bincount(instances.ravel(), minlength=n + 1)
    reference = float(np.median(size[seeded])) if seeded.any() else 0.0
    keep = seeded | (size >= UNSEEDED_SHARE * reference)
    keep[held_by(not_bodies)] &= seeded[held_by(not_bodies)]
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[instances], int(keep.sum())


def _map_index(coords: np.ndarray, map_shape: tuple[int, ...], fg_shape: tuple[int, ...]) -> np.ndarray:
    """Flat index into the class-map grid of each foreground voxel coordinate (nearest coarse voxel)."""
    low = np.floor((coords + 0.5) / _scale(map_shape, fg_shape)).astype(np.int64)
    low = np.minimum(low, np.asarray(map_shape) - 1)
    return np.ravel_multi_index(tuple(low.T), map_shape)


def _map_sampler(maps: np.ndarray, coords: np.ndarray, fg_shape: tuple[int, ...]
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Rows of `coords` (foreground voxels) -> (C, rows) `maps` interpolated trilinearly at those voxels (the border
    cells extended): the boundary between two levels falls inside a coarse cell, and the cell value alone cannot
    place it. The eight corner cells and weights are found once per voxel for all channels."""
    shape = np.asarray(maps.shape[1:])
    scale = _scale(maps.shape[1:], fg_shape)
    flat = np.asarray(maps, dtype=np.float32).reshape(maps.shape[0], -1)

    def sample(rows: np.ndarray) -> np.ndarray:
        grid = np.clip((coords[rows] + 0.5) / scale - 0.5, 0, shape - 1)
        low = np.minimum(np.floor(grid).astype(np.int64), np.maximum(shape - 2, 0))
        frac = (grid - low).astype(np.float32)
        out = np.zeros((flat.shape[0], rows.size), dtype=np.float32)
        for corner in np.ndindex(2, 2, 2):
            offset = np.asarray(corner)
            weight = np.prod(np.where(offset, frac, 1 - frac), axis=1)
            cell = np.ravel_multi_index(tuple(np.minimum(low + offset, shape - 1).T), maps.shape[1:])
            out += flat[:, cell] * weight
        return out

    return sample


def instance_probabilities(ids: np.ndarray, n: int, maps_flat: np.ndarray, map_index: np.ndarray) -> np.ndarray:
    """(n, K) mean class maps over each instance's voxels (`ids` 0..n-1 per foreground voxel), rows normalised.

    Voxels are first counted per (instance, coarse map voxel) pair, so the maps are read once per pair, not once
    per foreground voxel."""
    pairs, count = np.unique(ids * maps_flat.shape[1] + map_index, return_counts=True)
    inst, cell = pairs // maps_flat.shape[1], pairs % maps_flat.shape[1]
    weighted = maps_flat[:, cell].astype(np.float64) * count
    sums = np.stack([np.bincount(inst, weights=row, minlength=n) for row in weighted], axis=1)
    sums = np.clip(sums, 0, None) + 1e-12
    return sums / sums.sum(axis=1, keepdims=True)


def instance_peaks(ids: np.ndarray, classes: np.ndarray, maps_flat: np.ndarray, map_index: np.ndarray,
                   map_shape: tuple[int, ...], fg_shape: tuple[int, ...]) -> np.ndarray:
    """(n, 3) centre of the map voxel where each instance's own class peaks inside it: its vertebral-body centroid,
    which is what identification heatmaps are trained on (mask centres of mass sit 10-15 mm further back)."""
    values = maps_flat[classes[ids], map_index]
    order = np.lexsort((values, ids))
    best = order[np.r_[np.flatnonzero(np.diff(ids[order])), ids.size - 1]]
    coarse = np.stack(np.unravel_index(map_index[best], map_shape), axis=1).astype(np.float64)
    return (coarse + 0.5) * _scale(map_shape, fg_shape) - 0.5


def labelmap_from_predictions(fg_prob: np.ndarray, class_maps: np.ndarray | None, spacing, config: Any = None
                              ) -> tuple[np.ndarray, list[VertebraRecord]]:
    """Network outputs of one case -> (uint8 VerSe labelmap shaped like `fg_prob`, vertebra table superior first).

    `fg_prob`: (Z, Y, X) foreground probabilities. `class_maps`: (K+1 or K, z, y, x) non-negative identification
    maps (softmax probabilities or heatmaps), any grid covering the same extent, or None (labels from order alone).
    `spacing`: (z, y, x) mm of the `fg_prob` grid. `config`: VertsegConfig, InferenceConfig or PostprocessSettings.
    """
    settings = PostprocessSettings.from_config(config) if config is not None else PostprocessSettings()
    protocol, k = settings.protocol, settings.protocol.num_classes
    fg_prob = np.asarray(fg_prob)
    if fg_prob.ndim != 3:
        raise ValueError(f"foreground probabilities must be (Z, Y, X), got shape {fg_prob.shape}")
    maps = None if class_maps is None else _with_background(np.asarray(class_maps), protocol)
    mask = fg_prob >= settings.seg_threshold
    box = _bounding_box(mask)
    offset = np.array([b.start for b in box], dtype=np.float64)
    cc, n_cc = connected_components(mask[box], spacing, settings.min_fragment_ml)
    flat_fg = np.flatnonzero(cc)
    coords = np.stack(np.unravel_index(flat_fg, cc.shape), axis=1).astype(np.float64)
    instances, n = cc, n_cc
    if maps is not None:
        maps_flat = maps.reshape(k + 1, -1)
        map_index = _map_index(coords + offset, maps.shape[1:], fg_prob.shape)
    if maps is not None and n_cc and settings.split_merged:
        min_piece = max(1, min_voxels(settings.min_vertebra_ml, spacing))
        if settings.seeds in ("sequence", "cores"):
            axis = SpineAxis.fit(coords, spacing) if settings.level_axis == "centre-line" else None
            sample = _map_sampler(maps[1:], coords + offset, fg_prob.shape) if settings.interpolated_regions else None
            seeds, groups = level_seeds(coords, map_index, maps_flat, protocol, spacing,
                                        settings.allow_l6, settings.allow_t13, min_piece,
                                        regions=settings.seed_regions and settings.split_metric == "geodesic",
                                        background=settings.none_state,
                                        region_confidence=settings.seed_region_confidence, axis=axis,
                                        sample_maps=sample)
            if settings.seeds == "cores":
                *core, not_bodies = core_seeds(coords, spacing, settings.core_dynamic_mm, settings.core_floor_mm,
                                               min_piece // 8)
                every = np.concatenate([core[0], seeds]).astype(np.int64)
                seeds, groups = cores_with_levels(core, (seeds, groups), cc[tuple(every.T)], axis)
        else:
            seeds = peak_seeds(coords, map_index, maps_flat[1:], settings.peak_threshold)
            groups = np.arange(seeds.shape[0])
        if np.unique(groups).size > 1:
            instances, n = _split_by_seeds(cc, n_cc, coords, flat_fg, seeds, groups, spacing, min_piece,
                                           settings.split_metric)
        if settings.seeds == "cores" and seeds.size:
            instances, n = _drop_unseeded(instances, n, seeds, not_bodies)
    ordered = sort_cranio_caudal(instances, n)
    if maps is None:
        probs = np.full((n, k), 1.0 / k)
        bodies = ordered.centroids
        decoded = _order_only(n, protocol)
    else:
        ids = ordered.labels.ravel()[flat_fg].astype(np.int64) - 1
        kept = ids >= 0
        ids, map_index = ids[kept], map_index[kept]
        full = instance_probabilities(ids, n, maps_flat, map_index)
        background = full[:, 0] if settings.none_state and n else None
        probs = full[:, 1:] / np.clip(full[:, 1:].sum(axis=1, keepdims=True), 1e-12, None)
        bodies = (instance_peaks(ids, np.argmax(probs, axis=1), maps_flat[1:], map_index, maps.shape[1:], fg_prob.shape)
                  - offset if n else ordered.centroids)
        steps_used = settings.gap_aware or settings.split_aware
        positions = ordered.centroids * np.asarray(spacing, dtype=np.float64) if steps_used else None
        decoded = decode(settings.decoder, probs, protocol, settings.allow_l6, settings.allow_t13, positions, background,
                         settings.fragment_prior, gaps=settings.gap_aware,
                         volumes=ordered.counts if settings.split_aware else None)
        dropped = float(ordered.counts[decoded.labels == 0].sum()) / max(float(ordered.counts.sum()), 1.0)
        if background is not None and dropped > settings.max_none_share:  # "not a vertebra" is for a sacrum or a
            decoded = decode(settings.decoder, probs, protocol, settings.allow_l6, settings.allow_t13, positions,
                             None, settings.fragment_prior, gaps=settings.gap_aware,  # fragment, not most of the bone
                             volumes=ordered.counts if settings.split_aware else None)
    lut = np.zeros(n + 1, dtype=np.uint8)
    lut[1:] = decoded.labels
    labelmap = np.zeros(fg_prob.shape, dtype=np.uint8)
    labelmap[box] = lut[ordered.labels]
    ml = voxel_volume_ml(spacing)
    argmax_labels = np.asarray(protocol.verse_labels)[np.argmax(probs, axis=1)] if n else np.zeros(0, dtype=int)
    records = [
        VertebraRecord(int(lab), VERSE_NAMES.get(int(lab), "unlabelled"), int(count), round(float(count) * ml, 3),
                       _rounded(centroid + offset), _rounded(body + offset), round(float(conf), 4), int(raw))
        for lab, count, centroid, body, conf, raw in zip(decoded.labels, ordered.counts, ordered.centroids, bodies,
                                                         decoded.confidence, argmax_labels)
    ]
    return labelmap, _join_pieces(records)


def _join_pieces(records: list[VertebraRecord]) -> list[VertebraRecord]:
    """One record per level: pieces the split-aware decoder gave the same level are one vertebra in the labelmap
    too (their voxels carry one label); its centre of mass is theirs, the rest comes from the largest piece."""
    joined: dict[int, list[VertebraRecord]] = {}
    for index, record in enumerate(records):
        joined.setdefault(record.label or -1 - index, []).append(record)
    out = []
    for pieces in joined.values():
        largest = max(pieces, key=lambda r: r.voxels)
        voxels = sum(r.voxels for r in pieces)
        centre = sum(np.asarray(r.centroid_zyx) * r.voxels for r in pieces) / voxels
        out.append(replace(largest, voxels=voxels, volume_ml=round(sum(r.volume_ml for r in pieces), 3),
                           centroid_zyx=_rounded(centre)))
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Smallest box holding the foreground (empty slices when there is none): components run on this crop only."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def _rounded(point: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(c), 2) for c in point)


def _order_only(n: int, protocol: Protocol) -> Decoded:
    """Without identification maps, number instances consecutively so that the most inferior one is L5."""
    core = [s for s in protocol.verse_labels if s in range(1, 25)]
    position = np.arange(n) - n + len(core)
    labels = np.where(position >= 0, np.asarray(core)[np.clip(position, 0, None)], 0)
    return Decoded(labels.astype(np.int64), np.zeros(n))
