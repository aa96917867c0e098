"""Section 2.6 post-processing: network outputs -> VerSe labelmap + per-vertebra table.

Steps: threshold the foreground (0.5); per-class heatmap peaks are the predicted centroids; 3D connected
components without small fragments are the vertebra candidates, and a component holding several centroids
(touching vertebrae) is split by nearest centroid - through the mask (geodesic, default) or in a straight line
(Euclidean, the paper's wording); each candidate's class probabilities are the mean of the class maps over its
voxels; candidates sorted cranio-caudally are labelled by a sequence decoder (`sequence.py`).

Arrays are in the canonical store frame (axis 0 = z, index 0 most superior). Class maps may be at a coarser
grid than the foreground (the identification branch runs at 1/4 resolution); they are sampled, never upsampled
into a full-size buffer per class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from vertseg.labels import C1_L5, PROTOCOLS, VERSE_NAMES, Protocol
from vertseg.postprocess.components import connected_components, min_voxels, sort_cranio_caudal, voxel_volume_ml
from vertseg.postprocess.sequence import Decoded, DecoderName, decode


@dataclass(frozen=True)
class PostprocessSettings:
    """What post-processing needs; `from_config` reads it from a VertsegConfig or an InferenceConfig."""

    seg_threshold: float = 0.5  # section 2.6: foreground at probability 0.5
    min_fragment_ml: float = 0.5
    decoder: DecoderName = "dp"
    allow_l6: bool = False
    allow_t13: bool = False
    min_vertebra_ml: float = 2.0
    peak_threshold: float = 0.1
    split_merged: bool = True
    split_metric: Literal["geodesic", "euclidean"] = "geodesic"
    gap_aware: bool = False
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


def _vertebra_maps(class_maps: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Drop the background channel when present: (K+1, ...) or (K, ...) -> (K, ...)."""
    k = protocol.num_classes
    if class_maps.ndim != 4 or class_maps.shape[0] not in (k, k + 1):
        raise ValueError(
            f"class maps must be (K+1 or K, Z, Y, X) with K = {k} for protocol {protocol.name}, got {class_maps.shape}"
        )
    return class_maps[1:] if class_maps.shape[0] == k + 1 else class_maps


def _scale(map_shape: tuple[int, ...], fg_shape: tuple[int, ...]) -> np.ndarray:
    """Foreground voxels per map voxel along each axis: the integer stride when the map is the ceil-divided grid
    of a strided branch (1/4 resolution: ceil(Z / 4) voxels), else the plain extent ratio."""
    fine, coarse = np.asarray(fg_shape, dtype=np.float64), np.asarray(map_shape, dtype=np.float64)
    stride = np.maximum(np.round(fine / coarse), 1.0)
    return np.where(np.ceil(fine / stride) == coarse, stride, fine / coarse)


def class_peaks(class_maps: np.ndarray, fg_shape: tuple[int, int, int], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-class maximum of (K, z, y, x) maps -> (class indices 1..K whose peak >= threshold, peak voxel coords (M, 3)
    in the foreground grid)."""
    flat = class_maps.reshape(class_maps.shape[0], -1)
    arg = np.argmax(flat, axis=1)
    value = flat[np.arange(flat.shape[0]), arg]
    keep = np.flatnonzero(value >= threshold)
    coords = np.stack(np.unravel_index(arg[keep], class_maps.shape[1:]), axis=1).astype(np.float64)
    coords = (coords + 0.5) * _scale(class_maps.shape[1:], fg_shape) - 0.5
    return keep + 1, coords


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


def _split_by_centroids(cc: np.ndarray, n_cc: int, coords: np.ndarray, flat_fg: np.ndarray, peaks: np.ndarray,
                        spacing, min_piece: int, metric: str) -> tuple[np.ndarray, int]:
    """Split components that hold several peaks into one piece per peak (geodesic or straight-line nearest peak).

    A piece stands on its own when its peak lies inside its component and it has at least `min_piece` voxels;
    other pieces join the largest standing piece of their component (or the component stays whole)."""
    comp = cc.ravel()[flat_fg].astype(np.int64)
    peak_vox = np.clip(np.floor(peaks + 0.5).astype(np.int64), 0, np.asarray(cc.shape) - 1)
    peak_comp = cc[tuple(peak_vox.T)].astype(np.int64)
    if metric == "geodesic":
        seeds_flat = np.ravel_multi_index(tuple(peak_vox.T), cc.shape)
        inside = peak_comp > 0
        seed_nodes = np.searchsorted(flat_fg, seeds_flat[inside])
        owner = np.full(flat_fg.size, -1, dtype=np.int64)
        if seed_nodes.size:
            unique_nodes, first = np.unique(seed_nodes, return_index=True)
            local = geodesic_owner(flat_fg, cc.shape, coords, unique_nodes, spacing)
            peak_ids = np.flatnonzero(inside)[first]
            owner[local >= 0] = peak_ids[local[local >= 0]]
    else:
        owner = nearest_centroid(coords, peaks, spacing)
    m = peaks.shape[0] + 1
    key = comp * m + owner + 1
    pieces, piece_of_voxel, piece_size = np.unique(key, return_inverse=True, return_counts=True)
    piece_comp, piece_peak = pieces // m, pieces % m - 1
    valid = (piece_size >= min_piece) & (piece_peak >= 0) & (peak_comp[np.maximum(piece_peak, 0)] == piece_comp)
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


def _map_index(coords: np.ndarray, map_shape: tuple[int, ...], fg_shape: tuple[int, ...]) -> np.ndarray:
    """Flat index into the class-map grid of each foreground voxel coordinate (nearest coarse voxel)."""
    low = np.floor((coords + 0.5) / _scale(map_shape, fg_shape)).astype(np.int64)
    low = np.minimum(low, np.asarray(map_shape) - 1)
    return np.ravel_multi_index(tuple(low.T), map_shape)


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
    vert_maps = None if class_maps is None else _vertebra_maps(np.asarray(class_maps), protocol)
    mask = fg_prob >= settings.seg_threshold
    box = _bounding_box(mask)
    offset = np.array([b.start for b in box], dtype=np.float64)
    cc, n_cc = connected_components(mask[box], spacing, settings.min_fragment_ml)
    flat_fg = np.flatnonzero(cc)
    coords = np.stack(np.unravel_index(flat_fg, cc.shape), axis=1).astype(np.float64)
    instances, n = cc, n_cc
    if vert_maps is not None and n_cc:
        _, peaks = class_peaks(vert_maps, fg_prob.shape, settings.peak_threshold)
        peaks -= offset
        if settings.split_merged and peaks.shape[0] > 1:
            instances, n = _split_by_centroids(cc, n_cc, coords, flat_fg, peaks, spacing,
                                               max(1, min_voxels(settings.min_vertebra_ml, spacing)),
                                               settings.split_metric)
    ordered = sort_cranio_caudal(instances, n)
    if vert_maps is None:
        probs = np.full((n, k), 1.0 / k)
        bodies = ordered.centroids
        decoded = _order_only(n, protocol)
    else:
        ids = ordered.labels.ravel()[flat_fg].astype(np.int64) - 1
        maps_flat = vert_maps.reshape(k, -1)
        map_index = _map_index(coords + offset, vert_maps.shape[1:], fg_prob.shape)
        probs = instance_probabilities(ids, n, maps_flat, map_index)
        bodies = (instance_peaks(ids, np.argmax(probs, axis=1), maps_flat, map_index, vert_maps.shape[1:], fg_prob.shape)
                  - offset if n else ordered.centroids)
        positions = bodies * np.asarray(spacing, dtype=np.float64) if settings.gap_aware else None
        decoded = decode(settings.decoder, probs, protocol, settings.allow_l6, settings.allow_t13, positions)
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
    return labelmap, records


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
