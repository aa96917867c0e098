"""Patch streams for training: labeled / unlabeled pools (with the labeled-fraction split of Table 2) per rank."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vertseg.config import VertsegConfig
from vertseg.data.patches import RandomPatches, ValidationPatches
from vertseg.data.store import VertStore
from vertseg.labels import PROTOCOLS


def split_labeled(case_ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Table 2 note: keep `fraction` of the labeled cases (seeded choice, at least one); the rest become unlabeled."""
    ids = sorted(case_ids)
    keep = max(1, int(round(fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    kept = sorted(ids[i] for i in order[:keep])
    return kept, sorted(set(ids) - set(kept))


class Interleave(IterableDataset):
    """Several patch streams drawn in a seeded order proportional to their lengths (one epoch = their sum)."""

    def __init__(self, streams: list[RandomPatches], seed: int) -> None:
        self.streams, self.seed = streams, seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for stream in self.streams:
            stream.set_epoch(epoch)

    def __iter__(self):
        iterators = [iter(s) for s in self.streams]
        choice = np.concatenate([np.full(len(s), i) for i, s in enumerate(self.streams)])
        np.random.default_rng([self.seed, getattr(self, "epoch", 0)]).shuffle(choice)
        for i in choice:
            yield next(iterators[i])


@dataclass
class TrainingData:
    """Per-rank loaders and the label counts behind the class-frequency weights."""

    labeled: DataLoader
    unlabeled: DataLoader | None
    validation: DataLoader | None
    class_counts: torch.Tensor

    def set_epoch(self, epoch: int) -> None:
        for loader in (self.labeled, self.unlabeled):
            if loader is not None:
                loader.dataset.set_epoch(epoch)

    def labeled_batches(self) -> Iterator[dict]:
        return _endless(self.labeled)

    def unlabeled_batches(self) -> Iterator[dict] | None:
        return _endless(self.unlabeled) if self.unlabeled is not None else None


def _endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def build_training_data(
    config: VertsegConfig,
    store: Path,
    unlabeled_store: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    loader_workers: int = 0,
    uses_unlabeled: bool = True,
) -> TrainingData:
    """Labeled stream from the store's labeled training cases; unlabeled stream from the store's unlabeled pool, the
    held-back labeled fraction and `unlabeled_store` (all cases). Each rank reads a disjoint, seeded shard."""
    data, train = config.data, config.train
    main = VertStore(store, data.hu_window)
    labeled_ids, held_back = split_labeled(main.cases(split="training", pool="labeled"), train.labeled_fraction, train.seed)
    if not labeled_ids:
        raise ValueError(f"{store} has no labeled training cases")
    iters = train.schedule.iterations_per_epoch
    per_epoch = lambda batch: iters * batch * world_size  # noqa: E731
    common = dict(config=data, seed=train.seed, rank=rank, world_size=world_size)
    labeled = RandomPatches(store, pool="labeled", case_ids=labeled_ids, samples_per_epoch=per_epoch(train.optim.labeled_batch_size), **common)
    streams: list[RandomPatches] = []
    if uses_unlabeled and train.optim.unlabeled_batch_size > 0:
        sources = [(store, main.cases(pool="unlabeled")), (store, held_back)]
        if unlabeled_store is not None:
            sources.append((unlabeled_store, VertStore(unlabeled_store, data.hu_window).cases()))
        sources = [(path, ids) for path, ids in sources if ids]
        total = sum(len(ids) for _, ids in sources)
        budget = per_epoch(train.optim.unlabeled_batch_size)
        for path, ids in sources:
            share = max(world_size, int(round(budget * len(ids) / total)))
            streams.append(RandomPatches(path, pool="unlabeled", case_ids=ids, samples_per_epoch=share,
                                         hidden_labels=True, **common))
    kwargs = dict(num_workers=loader_workers, pin_memory=torch.cuda.is_available(), persistent_workers=loader_workers > 0)
    labeled_loader = DataLoader(labeled, batch_size=train.optim.labeled_batch_size, **kwargs)
    unlabeled_loader = (
        DataLoader(Interleave(streams, train.seed), batch_size=train.optim.unlabeled_batch_size, **kwargs) if streams else None
    )
    validation_ids = main.cases(split="validation", pool="labeled")
    validation = None
    if validation_ids:
        shard = validation_ids[rank::world_size] or validation_ids[:1]
        validation = DataLoader(ValidationPatches(store, data, case_ids=shard), batch_size=train.optim.labeled_batch_size)
    verse_labels = PROTOCOLS[data.protocol].verse_labels
    counts = torch.as_tensor(main.class_frequencies(verse_labels)[1:], dtype=torch.float64)
    return TrainingData(labeled_loader, unlabeled_loader, validation, counts)
