"""The lean shard reader returns exactly what zarr-python returns, for any window, codec and edge chunk."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from vertseg.data.chunks import ShardedArrayReader, UnsupportedLayout


@pytest.mark.parametrize("compressors", [BloscCodec(cname="lz4hc", clevel=8, shuffle="shuffle"), None])
def test_windows_match_zarr_python(tmp_path, compressors):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, size=(45, 37, 29)).astype(np.int16)
    data[:20, :16, :] = -1024  # whole chunks of fill value are not stored
    array = zarr.create_array(str(tmp_path / "a"), data=data, shards=(16, 16, 16), chunks=(8, 8, 16),
                              compressors=compressors, fill_value=-1024)
    reader = ShardedArrayReader(tmp_path / "a")
    assert reader.shape == data.shape and reader.dtype == np.int16
    for _ in range(40):
        lo = rng.integers(0, data.shape)
        hi = [rng.integers(low, n + 1) for low, n in zip(lo, data.shape)]
        window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        np.testing.assert_array_equal(reader.read(window), array[window])
    np.testing.assert_array_equal(reader.read(()), data)
    with pytest.raises(IndexError):
        reader.read((slice(0, 46),))


def test_unsharded_arrays_are_refused(tmp_path):
    zarr.create_array(str(tmp_path / "plain"), data=np.zeros((4, 4), np.uint8), chunks=(2, 2))
    with pytest.raises(UnsupportedLayout):
        ShardedArrayReader(tmp_path / "plain")


def test_store_refuses_other_settings_and_bad_shards(tmp_path):
    from vertseg.data.config import DataConfig
    from vertseg.data.store import StoreError, init_store

    init_store(tmp_path / "s.zarr", DataConfig())
    init_store(tmp_path / "s.zarr", DataConfig())  # same settings: reopening is fine
    with pytest.raises(StoreError, match="another --out"):
        init_store(tmp_path / "s.zarr", DataConfig(codec="zstd"))
    with pytest.raises(StoreError, match="multiple"):
        init_store(tmp_path / "t.zarr", DataConfig(chunk_size=(48, 32, 32)))
