"""Patch sampling from the store: batch contract, symmetric padding, foreground oversampling, DDP sharding, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _store_phantom import write_case
from torch.utils.data import DataLoader

from vertseg.data.config import DataConfig
from vertseg.data.patches import RandomPatches, ValidationPatches, valid_start_range, window_slices
from vertseg.data.preprocess import prepare_case
from vertseg.data.readers import discover_cases, load_case
from vertseg.data.store import VertStore, build_manifest, init_store, write_case as store_case, write_manifest
from vertseg.labels import C1_L5

CONFIG = DataConfig(spacing_mm=2.0, patch_size=(32, 16, 16), chunk_size=(16, 16, 16))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two labeled training cases, one labeled validation case and one unlabeled case, written without Ray."""
    folder = tmp_path_factory.mktemp("phantoms")
    root = folder / "store.zarr"
    init_store(root, CONFIG)
    specs = {"a": ("RAS", "training", "labeled"), "b": ("PIR", "training", "labeled"),
             "v": ("LPS", "validation", "labeled"), "u": ("RAS", "training", "unlabeled")}
    for name, (codes, split, pool) in specs.items():
        write_case(folder / "raw" / name, name, codes, (1.5, 1.5, 1.5), seed=ord(name))
        (source,) = discover_cases([folder / "raw" / name])
        source = type(source)(**{**source.__dict__, "split": split})
        prepared = prepare_case(load_case(source), CONFIG, pool)
        prepared.attrs["source_hash"] = name
        store_case(root, name, CONFIG, prepared.image_hu, prepared.labels, prepared.foreground, prepared.attrs)
    write_manifest(root, build_manifest(root, CONFIG, []))
    return root


def test_window_helpers_pad_symmetrically():
    low, high = valid_start_range((8, 10, 4), (20, 6, 4))
    np.testing.assert_array_equal(low, [0, -2, 0])
    np.testing.assert_array_equal(high, [12, -2, 0])
    src, dst = window_slices(np.array([-2, 3, 0]), (8, 10, 4), (20, 6, 4))
    assert src == (slice(0, 6), slice(3, 6), slice(0, 4)) and dst == (slice(2, 8), slice(0, 3), slice(0, 4))


def test_store_reader_lists_and_reads_windows(store):
    vs = VertStore(store, CONFIG.hu_window)
    assert vs.cases(split="training", pool="labeled") == ["a", "b"] and vs.cases(pool="unlabeled") == ["u"]
    window = (slice(3, 9), slice(0, 5), slice(2, 4))
    image = vs.read_image("a", window)
    assert image.shape == (6, 5, 2) and image.dtype == np.float32 and 0.0 <= image.min() <= image.max() <= 1.0
    np.testing.assert_allclose(image, np.clip((vs.read_hu("a", window) + 500.0) / 2000.0, 0, 1))
    freq = vs.class_frequencies(C1_L5.verse_labels)
    assert freq.shape == (25,) and freq[0] > 0 and (freq[20:25] > 0).all() and freq[1:20].sum() == 0
    with pytest.raises(Exception, match="unlabeled"):
        vs.read_labels("u")


def test_labeled_sample_follows_the_batch_contract(store):
    stream = RandomPatches(store, CONFIG.model_copy(update={"foreground_oversample": 1.0}), samples_per_epoch=6, seed=1)
    batch = next(iter(DataLoader(stream, batch_size=3)))
    assert batch["image"].shape == (3, 1, 32, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 1, 32, 16, 16) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["labels"].shape == (3, 32, 16, 16) and batch["labels"].dtype == torch.int64
    assert batch["centroids"].shape == (3, 24, 3) and batch["centroids"].dtype == torch.float32
    assert torch.equal(batch["mask"][:, 0] > 0, batch["labels"] > 0)
    assert (batch["mask"].flatten(1).sum(1) > 0).all(), "foreground oversampling 1.0 must hit the spine every time"
    for b in range(3):
        present = torch.nonzero(~torch.isnan(batch["centroids"][b, :, 0])).flatten()
        for k in present.tolist():
            z, y, x = batch["centroids"][b, k].round().long().clamp(min=0).tolist()
            assert batch["labels"][b, min(z, 31), min(y, 15), min(x, 15)] == k + 1
        assert set(batch["labels"][b].unique().tolist()) - {0} <= {k + 1 for k in range(19, 24)}


def test_unlabeled_stream_yields_images_only(store):
    stream = RandomPatches(store, CONFIG, pool="unlabeled", samples_per_epoch=2)
    sample = next(iter(stream))
    assert set(sample) == {"image", "case_id", "start"} and sample["image"].shape == (1, 32, 16, 16)


def _keys(stream) -> list[tuple[str, tuple[int, ...]]]:
    return [(s["case_id"], tuple(s["start"].tolist())) for s in stream]


def test_ranks_shard_and_runs_are_reproducible(store):
    ranks = [RandomPatches(store, CONFIG, samples_per_epoch=16, seed=7, rank=r, world_size=2) for r in range(2)]
    first = [_keys(r) for r in ranks]
    assert [len(k) for k in first] == [8, 8] and first[0] != first[1]
    assert first == [_keys(r) for r in ranks], "same seed, epoch and rank must replay the same patches"
    ranks[0].set_epoch(1)
    assert _keys(ranks[0]) != first[0]
    single = RandomPatches(store, CONFIG, samples_per_epoch=16, seed=7)
    loaded = [(c, tuple(s.tolist())) for b in DataLoader(single, batch_size=4, num_workers=2) for c, s in zip(b["case_id"], b["start"])]
    again = [(c, tuple(s.tolist())) for b in DataLoader(single, batch_size=4, num_workers=2) for c, s in zip(b["case_id"], b["start"])]
    assert len(loaded) == 16 and loaded == again and len(set(loaded)) > 8


def test_volume_smaller_than_patch_is_padded_symmetrically(store):
    config = CONFIG.model_copy(update={"patch_size": (32, 40, 16), "foreground_oversample": 0.0})
    vs = VertStore(store)
    depth_y = vs.shape("a")[1]
    sample = next(iter(RandomPatches(store, config, samples_per_epoch=1, case_ids=["a"])))
    pad = 40 - depth_y
    assert sample["start"][1] == -(pad // 2)
    column = sample["image"][0, :, :, :].sum(dim=(0, 2))
    assert (column[: pad // 2] == 0).all() and (column[pad // 2 + depth_y:] == 0).all() and (column[pad // 2: pad // 2 + depth_y] > 0).all()


def test_validation_patches_tile_the_spine_deterministically(store):
    val = ValidationPatches(store, CONFIG)
    assert {c for c, _ in val.windows} == {"v"}
    low, high = VertStore(store).spine_box("v")
    starts = np.array([s for _, s in val.windows])
    assert starts[0, 0] <= low[0] and starts[-1, 0] + 32 >= high[0]
    assert [tuple(s) for s in starts] == [tuple(s) for _, s in ValidationPatches(store, CONFIG).windows]
    sample = val[0]
    assert sample["labels"].shape == (32, 16, 16) and sample["mask"].sum() > 0


def test_stream_pickles_without_open_files(store):
    import pickle

    stream = RandomPatches(store, CONFIG, samples_per_epoch=2, seed=3)
    first = _keys(stream)
    clone = pickle.loads(pickle.dumps(stream))  # what a spawn-started loader worker receives
    assert _keys(clone) == first


def test_validation_set_pickles_after_reading(store):
    import pickle

    val = ValidationPatches(store, CONFIG)
    sample = val[0]
    clone = pickle.loads(pickle.dumps(val))
    assert torch.equal(clone[0]["labels"], sample["labels"])
