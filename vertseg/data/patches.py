"""Training and validation patches read straight from the Zarr store (only the chunks a patch touches).

Labeled samples: `image` (1,Z,Y,X) in [0,1], `mask` (1,Z,Y,X) in {0,1}, `labels` (Z,Y,X) protocol class indices,
`centroids` (K,3) patch voxel coordinates (NaN where the vertebra is absent). Unlabeled samples: `image` only.
Volumes smaller than the patch are padded symmetrically (image 0 = below the HU window, labels background).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vertseg.data.config import DataConfig
from vertseg.data.store import VertStore
from vertseg.labels import PROTOCOLS


def window_slices(start: np.ndarray, size: tuple[int, ...], shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Source slices into the volume and destination slices into the patch for a window that may stick out."""
    src, dst = [], []
    for s, n, v in zip(start, size, shape):
        lo, hi = max(int(s), 0), min(int(s) + n, v)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - int(s), lo - int(s) + max(0, hi - lo)))
    return tuple(src), tuple(dst)


def valid_start_range(size: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest patch start per axis; a volume smaller than the patch gets one centred (padded) start."""
    size_a, shape_a = np.asarray(size), np.asarray(shape)
    low = np.where(shape_a >= size_a, 0, -((size_a - shape_a) // 2))
    high = np.where(shape_a >= size_a, shape_a - size_a, low)
    return low, high


def centred_start(centre: np.ndarray, size: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Start of the patch centred on `centre`, moved inside the volume (or to the symmetric padding)."""
    low, high = valid_start_range(size, shape)
    return np.clip(np.round(np.asarray(centre) - np.asarray(size) / 2).astype(int), low, high)


class PatchReader:
    """Reads one patch at a given start from a store; the shared core of every patch dataset."""

    def __init__(self, store: VertStore, config: DataConfig) -> None:
        self.store = store
        self.size = tuple(int(v) for v in config.patch_size)
        self.protocol = PROTOCOLS[config.protocol]
        self.class_lut = self.protocol.class_lut(config.transitional_policy)
        self._centroids: dict[str, np.ndarray] = {}

    def _classes(self, case_id: str, src: tuple[slice, ...], dst: tuple[slice, ...]) -> np.ndarray:
        verse = np.zeros(self.size, np.uint8)
        verse[dst] = self.store.read_labels(case_id, src)
        return self.class_lut[verse].astype(np.int64)

    def _class_centroids(self, case_id: str) -> np.ndarray:
        """(K, 3) store-voxel centroids per class; a directly mapped label wins over a merged one (L6 -> L5)."""
        if case_id not in self._centroids:
            table = np.full((self.protocol.num_classes, 3), np.nan)
            best = self.store.centroids(case_id).best()
            direct = set(self.protocol.verse_labels)
            for label in sorted(best, key=lambda v: v in direct):
                k = int(self.class_lut[label]) if label < len(self.class_lut) else 0
                if k:
                    table[k - 1] = best[label]
            self._centroids[case_id] = table
        return self._centroids[case_id]

    def read(self, case_id: str, start: np.ndarray, labeled: bool, hidden: bool = False) -> dict[str, Any]:
        """One patch; `hidden` adds `hidden_labels` to an unlabelled patch: its class indices when the scan has
        labels held back (`train.labeled_fraction`), else -1 everywhere. They judge pseudo-labels, never train."""
        shape = self.store.shape(case_id)
        src, dst = window_slices(start, self.size, shape)
        image = np.zeros(self.size, np.float32)
        image[dst] = self.store.read_image(case_id, src)
        sample: dict[str, Any] = {"image": torch.from_numpy(image)[None], "case_id": case_id, "start": torch.as_tensor(start)}
        if not labeled:
            if hidden:
                known = self.store.is_labeled(case_id)
                sample["hidden_labels"] = torch.from_numpy(self._classes(case_id, src, dst) if known
                                                           else np.full(self.size, -1, np.int64))
            return sample
        classes = self._classes(case_id, src, dst)
        centroids = self._class_centroids(case_id) - np.asarray(start, float)
        outside = np.any((centroids < -0.5) | (centroids > np.asarray(self.size) - 0.5), axis=1)
        centroids[outside] = np.nan
        sample.update(
            mask=torch.from_numpy((classes > 0).astype(np.float32))[None],
            labels=torch.from_numpy(classes),
            centroids=torch.from_numpy(centroids.astype(np.float32)),
        )
        return sample


class RandomPatches(IterableDataset):
    """An endless-per-epoch stream of random patches from one pool, sharded over DDP ranks and loader workers.

    Every (rank, worker) draws a disjoint slice of one epoch-wide case sequence and its own seeded RNG, so a
    run is reproducible for a given seed, world size and worker count. Call `set_epoch` each epoch.
    """

    def __init__(
        self,
        store_path: Path | str,
        config: DataConfig,
        pool: str = "labeled",
        split: str | None = "training",
        samples_per_epoch: int = 250,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        case_ids: list[str] | None = None,
        hidden_labels: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.store_path, self.config, self.pool = Path(store_path), config, pool
        self.labeled, self.hidden_labels = pool == "labeled", hidden_labels
        store = VertStore(self.store_path, config.hu_window)
        self.case_ids = list(case_ids) if case_ids is not None else store.cases(split=split, pool=pool)
        if not self.case_ids:
            raise ValueError(f"{self.store_path} has no {pool} cases in split {split!r}")
        self.samples_per_epoch, self.seed, self.rank, self.world_size = samples_per_epoch, seed, rank, world_size
        self.epoch = 0
        self._reader: PatchReader | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:
        """Loader workers (fork or spawn) reopen the store themselves; memory maps do not travel."""
        return {**self.__dict__, "_reader": None}

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def __len__(self) -> int:
        return self.samples_per_epoch // self.world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._reader is None:  # opened lazily so each loader worker holds its own file handles
            self._reader = PatchReader(VertStore(self.store_path, self.config.hu_window), self.config)
        shard, shards = self._shard()
        order = np.random.default_rng([self.seed, self.epoch]).integers(0, len(self.case_ids), self.samples_per_epoch)
        rng = np.random.default_rng([self.seed, self.epoch, shard])
        per_rank = len(self) * self.world_size
        for index in range(shard, per_rank, shards):
            case_id = self.case_ids[order[index]]
            yield self._reader.read(case_id, self._random_start(case_id, rng), self.labeled, self.hidden_labels)

    def _random_start(self, case_id: str, rng: np.random.Generator) -> np.ndarray:
        store, size = self._reader.store, self._reader.size
        shape = store.shape(case_id)
        if rng.random() < self.config.foreground_oversample:
            fg = store.foreground(case_id)
            if len(fg):
                labels = np.unique(fg[:, 0])
                rows = fg[fg[:, 0] == rng.choice(labels)]  # class-balanced: rare vertebrae are drawn as often
                return centred_start(rows[rng.integers(len(rows)), 1:], size, shape)
        low, high = valid_start_range(size, shape)
        return rng.integers(low, high + 1)


class ValidationPatches(Dataset):
    """Deterministic patches tiling each case's spine along z (axial stride = patch depth), centred in y/x."""

    def __init__(self, store_path: Path | str, config: DataConfig, split: str = "validation", case_ids: list[str] | None = None) -> None:
        self.reader = PatchReader(VertStore(store_path, config.hu_window), config)
        store = self.reader.store
        ids = list(case_ids) if case_ids is not None else store.cases(split=split, pool="labeled")
        self.windows = [(case_id, start) for case_id in ids for start in self._starts(case_id)]

    def _starts(self, case_id: str) -> list[np.ndarray]:
        store, size = self.reader.store, self.reader.size
        shape = store.shape(case_id)
        box = store.spine_box(case_id)
        low, high = box if box is not None else (np.zeros(3, int), np.asarray(shape))
        centre = (low + high) / 2
        z_starts = list(range(int(low[0]), max(int(low[0]) + 1, int(high[0]) - size[0] + 1), size[0]))
        if int(high[0]) - size[0] > z_starts[-1]:
            z_starts.append(int(high[0]) - size[0])
        starts = []
        for z in z_starts:
            start = centred_start(np.array([z + size[0] / 2, centre[1], centre[2]]), size, shape)
            if not starts or not np.array_equal(start, starts[-1]):
                starts.append(start)
        return starts

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, start = self.windows[index]
        return self.reader.read(case_id, start, labeled=True)
