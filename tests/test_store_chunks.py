"""The lean shard reader returns exactly what zarr-python returns, for any window, codec and edge chunk."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from vertseg.data.chunks import ShardedArrayReader, UnsupportedLayout


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("compressors", [BloscCodec(cname="lz4hc", clevel=8, shuffle="shuffle"), None])
def test_windows_match_zarr_python(tmp_path, compressors, compiled):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, size=(45, 37, 29)).astype(np.int16)
    data[:20, :16, :] = -1024  # whole chunks of fill value are not stored
    array = zarr.create_array(str(tmp_path / "a"), data=data, shards=(16, 16, 16), chunks=(8, 8, 16),
                              compressors=compressors, fill_value=-1024)
    reader = ShardedArrayReader(tmp_path / "a", compiled=compiled)
    assert reader.shape == data.shape and reader.dtype == np.int16
    assert reader.compiled == (compiled and compressors is not None)  # blosc arrays: one compiled call per window
    for _ in range(40):
        lo = rng.integers(0, data.shape)
        hi = [rng.integers(low, n + 1) for low, n in zip(lo, data.shape)]
        window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        np.testing.assert_array_equal(reader.read(window), array[window])
    np.testing.assert_array_equal(reader.read(()), data)
    with pytest.raises(IndexError):
        reader.read((slice(0, 46),))


@pytest.mark.parametrize("dtype, fill, compressors", [
    (np.int16, -1024, BloscCodec(cname="lz4hc", clevel=5, shuffle="shuffle")),
    (np.uint8, 0, BloscCodec(cname="lz4hc", clevel=5, shuffle="bitshuffle")),
    (np.int16, -1024, None),
])
def test_the_lean_writer_makes_the_shards_zarr_python_makes(tmp_path, dtype, fill, compressors):
    """Same shard files, same sizes (frames and index), and zarr-python reads back the data, edge chunks and
    chunks of fill value (left out) included."""
    from vertseg.data.shard_writer import write_shards

    rng = np.random.default_rng(1)
    data = rng.integers(0, 200, size=(45, 37, 29)).astype(dtype)
    data[:20, :16, :] = fill
    data[32:, :, 16:] = fill  # a whole edge shard of fill value: no file
    layout = dict(shards=(16, 16, 16), chunks=(8, 8, 16), compressors=compressors, fill_value=fill)
    zarr.create_array(str(tmp_path / "zarr"), data=data, **layout)
    zarr.create_array(str(tmp_path / "lean"), shape=data.shape, dtype=data.dtype, **layout)
    write_shards(tmp_path / "lean", data)

    def shard_files(name):
        return {p.relative_to(tmp_path / name).as_posix(): p.stat().st_size for p in (tmp_path / name).rglob("c/*/*/*")}

    assert shard_files("lean") == shard_files("zarr")
    assert "c/2/0/1" not in shard_files("lean")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "lean"), mode="r")[...], data)
    with pytest.raises(ValueError, match="data is"):
        write_shards(tmp_path / "lean", data[:-1])


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


def _written_case(tmp_path):
    """One phantom case preprocessed into a store, with its source (to preprocess again)."""
    from _store_phantom import write_case
    from vertseg.config import build_config
    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.store import build_manifest, init_store, write_manifest
    from vertseg.data.types import CaseSource

    write_case(tmp_path / "src", "sub-a", spacing=(2.0, 2.0, 2.0))
    config = build_config({}, ["data.spacing_mm=2.0", "data.chunk_size=[16,16,16]", "data.shard_size=[32,32,32]"]).data
    store = tmp_path / "s.zarr"
    init_store(store, config)
    source = CaseSource("sub-a", "sub-a", "verse", "training", tmp_path / "src" / "sub-a.nii.gz",
                        tmp_path / "src" / "sub-a_seg.nii.gz")
    assert preprocess_case(source, config, store)["status"] == "written"
    write_manifest(store, build_manifest(store, config, []))
    return store, source, config


def _shards(store, name):
    return sorted(p for p in (store / "cases" / "sub-a" / name / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["missing image", "truncated image", "missing labels"])
def test_a_lost_or_damaged_shard_is_an_error_naming_case_and_array_and_preprocess_repairs_it(tmp_path, damage):
    """Zarr reads a missing chunk as its fill value: an image of air (no vertebrae) or labels of background,
    silently. The store records every shard's size at write time, so reads, `vertseg inspect` and `vertseg
    preprocess` see the damage."""
    from typer.testing import CliRunner

    from vertseg.cli.main import app
    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.store import StoreError, VertStore

    store, source, config = _written_case(tmp_path)
    name = damage.split()[1]
    before = VertStore(store).read_labels("sub-a")
    victim = max(_shards(store, name), key=lambda p: p.stat().st_size)  # the shard holding most of the spine
    if damage.startswith("missing"):
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    reader = VertStore(store)
    with pytest.raises(StoreError, match=rf"case 'sub-a', array '{name}': shard .* (is missing|has \d+ bytes)"):
        reader.read_labels("sub-a") if name == "labels" else reader.read_image("sub-a")
    result = CliRunner().invoke(app, ["inspect", str(store)])
    assert result.exit_code == 1 and f"{name} shard" in result.output and "damaged" in result.output
    assert preprocess_case(source, config, store)["status"] == "written"  # not "skipped": the case is rewritten
    np.testing.assert_array_equal(VertStore(store).read_labels("sub-a"), before)
    assert CliRunner().invoke(app, ["inspect", str(store)]).exit_code == 0


def test_a_shard_that_does_not_decode_names_its_file(tmp_path):
    store, _, _ = _written_case(tmp_path)
    from vertseg.data.store import StoreError, VertStore

    victim = max(_shards(store, "image"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[:64] = bytes(64)  # same size, first chunk's blosc header zeroed
    victim.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="case 'sub-a', array 'image': chunk .* does not decode"):
        VertStore(store).read_image("sub-a")
