"""Window reads straight from the shard files of a Zarr v3 array (sharding_indexed + blosc), memory-mapped.

zarr-python's generic read path costs ~0.1 ms of Python per chunk; a training patch touches dozens of inner
chunks, so the store's patch reads go through this lean reader instead, and blosc arrays through one compiled
call per window (`chunk_gather`). It reads only the layout that `vertseg.data.store` writes (and says so
otherwise); the arrays remain plain Zarr v3 for every other tool.
"""

from __future__ import annotations

import itertools
import json
import math
import mmap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vertseg.data.chunk_gather import compiled_gather

EMPTY = 2**64 - 1  # sharding index entry of an inner chunk that was never written (all fill value)


class UnsupportedLayout(ValueError):
    """The array is valid Zarr but not the sharded blosc layout this reader understands."""


class DamagedShard(ValueError):
    """A shard file the store wrote is missing, has another size, or does not decode (Zarr would read fill values)."""


@dataclass(frozen=True)
class ShardLayout:
    """What the reader and writer need from an array's zarr.json."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill: int | float
    shard: tuple[int, ...]
    chunk: tuple[int, ...]
    blosc: dict | None  # the blosc codec's configuration, None when chunks are stored raw
    index_crc32c: bool

    @property
    def per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard, self.chunk))

    @property
    def index_bytes(self) -> int:
        return 16 * math.prod(self.per_shard) + (4 if self.index_crc32c else 0)


def read_layout(path: Path) -> ShardLayout:
    """The layout of the array at `path`; UnsupportedLayout unless it is the sharded bytes(+blosc) layout."""
    meta = json.loads((path / "zarr.json").read_text())
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
        raise UnsupportedLayout(f"{path}: not a sharded array")
    sharding = codecs[0]["configuration"]
    inner = [c["name"] for c in sharding["codecs"]]
    index = [c["name"] for c in sharding.get("index_codecs", [])]
    endian = sharding["codecs"][0].get("configuration", {}).get("endian", "little")
    if inner[0] != "bytes" or inner[1:] not in ([], ["blosc"]) or endian != "little":
        raise UnsupportedLayout(f"{path}: inner codecs {inner} are not bytes(+blosc)")
    if index not in (["bytes"], ["bytes", "crc32c"]) or sharding.get("index_location", "end") != "end":
        raise UnsupportedLayout(f"{path}: unsupported shard index {index}")
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    if encoding["name"] != "default" or encoding.get("configuration", {}).get("separator", "/") != "/":
        raise UnsupportedLayout(f"{path}: unsupported chunk key encoding {encoding}")
    return ShardLayout(
        shape=tuple(meta["shape"]), dtype=np.dtype(meta["data_type"]), fill=meta["fill_value"],
        shard=tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), chunk=tuple(sharding["chunk_shape"]),
        blosc=sharding["codecs"][1]["configuration"] if inner[1:] else None, index_crc32c=index[-1] == "crc32c",
    )


def shard_sizes(path: Path | str) -> dict[str, int]:
    """{shard key ("0/1/0"): size in bytes} of every shard file of an array, as written."""
    root = Path(path) / "c"
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _blosc_decompress(data, out: np.ndarray) -> None:
    from numcodecs import blosc

    blosc.decompress(data, out)


class ShardedArrayReader:
    """Read (z, y, x) windows of one sharded Zarr v3 array, memory-mapped: 3-D blosc arrays through the compiled
    gather (every shard it touched stays mapped), others chunk by chunk with up to `max_open` shards mapped."""

    def __init__(self, path: Path | str, max_open: int = 64, expected: dict[str, int] | None = None,
                 compiled: bool = True) -> None:
        """`expected`: the shard sizes recorded when the array was written (`shard_sizes`); with them a missing,
        resized or undecodable shard is a `DamagedShard` error instead of a window of fill values. `compiled=False`
        keeps the chunk-by-chunk path (the reference the compiled one is tested against)."""
        self.path = Path(path)
        self.expected = expected
        layout = read_layout(self.path)
        self.shape, self.dtype, self.fill, self.compressed = layout.shape, layout.dtype, layout.fill, layout.blosc is not None
        self.shard, self.chunk, self.per_shard = layout.shard, layout.chunk, layout.per_shard
        self._index_bytes = layout.index_bytes
        self._open: OrderedDict[tuple[int, ...], tuple[memoryview, list, np.ndarray] | None] = OrderedDict()
        self._max_open = max_open
        self._buffer = np.empty(self.chunk, self.dtype)
        self._gather = compiled_gather() if compiled and self.compressed and len(self.shape) == 3 else None
        if self._gather is not None:
            grid = tuple(-(-n // c) for n, c in zip(self.shape, self.chunk))
            self._addresses = np.zeros(grid, np.uint64)  # per inner chunk: its blosc frame in the mapped shard
            self._nbytes = np.zeros(grid, np.int32)  # 0: never written (fill value), or its shard not mapped yet
            self._mapped: dict[tuple[int, ...], tuple | None] = {}  # holds the maps the addresses point into

    @property
    def compiled(self) -> bool:
        """Whether windows are assembled by the compiled gather."""
        return self._gather is not None

    def _shard(self, key: tuple[int, ...]) -> tuple[memoryview, list] | None:
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        name = "/".join(map(str, key))
        path = self.path / "c" / name
        entry = None
        if self.expected is not None:
            self._check(path, name)
        if path.exists():
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            index = np.frombuffer(mapped, "<u8", count=2 * int(np.prod(self.per_shard)),
                                  offset=len(mapped) - self._index_bytes).reshape(*self.per_shard, 2)
            entry = (memoryview(mapped), index.tolist(), index)  # nested lists: cheaper lookups than numpy scalars
        self._open[key] = entry
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return entry

    def _check(self, path: Path, name: str) -> None:
        size = path.stat().st_size if path.exists() else None
        if size == self.expected.get(name):
            return
        if name not in self.expected:
            raise DamagedShard(f"shard {name} of {self.path} was not written with the case (store edited by hand?)")
        what = "is missing" if size is None else f"has {size} bytes, {self.expected[name]} were written"
        raise DamagedShard(f"shard {name} of {self.path} {what}")

    def read(self, window: tuple[slice, ...]) -> np.ndarray:
        """The array under `window` (slices with non-negative start/stop inside the shape, step 1)."""
        bounds = [(s.start or 0, self.shape[d] if s.stop is None else s.stop) for d, s in enumerate(window)]
        bounds += [(0, n) for n in self.shape[len(bounds):]]
        for (lo, hi), n in zip(bounds, self.shape):
            if not 0 <= lo <= hi <= n:
                raise IndexError(f"window {window} is outside {self.path} of shape {self.shape}")
        out = np.empty([hi - lo for lo, hi in bounds], self.dtype)
        if self._gather is not None:
            return self._read_compiled(bounds, out)
        ranges = [range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0) for (lo, hi), c in zip(bounds, self.chunk)]
        for index in itertools.product(*ranges):
            src, dst = [], []
            for i, (lo, hi), c in zip(index, bounds, self.chunk):
                c0 = i * c
                a, b = max(lo, c0), min(hi, c0 + c)
                src.append(slice(a - c0, b - c0))
                dst.append(slice(a - lo, b - lo))
            out[tuple(dst)] = self._chunk(index)[tuple(src)]
        return out

    def _read_compiled(self, bounds: list[tuple[int, int]], out: np.ndarray) -> np.ndarray:
        if out.size == 0:
            return out
        for key in itertools.product(*(range(lo // s, (hi - 1) // s + 1) for (lo, hi), s in zip(bounds, self.shard))):
            if key not in self._mapped:
                self._map(key)
        kernel, decoder = self._gather
        start = np.array([lo for lo, _ in bounds], np.int64)
        failed = kernel(decoder, out, start, self.chunk, self._addresses, self._nbytes, self.dtype.type(self.fill),
                        self._buffer)
        if failed >= 0:
            index = tuple(int(i) for i in np.unravel_index(failed, self._nbytes.shape))
            raise DamagedShard(f"chunk {index} of {self.path} does not decode")
        return out

    def _map(self, key: tuple[int, ...]) -> None:
        """Enter one shard's chunk frames into the address table; the map stays open while the reader lives."""
        entry = self._mapped[key] = self._shard(key)
        if entry is None:
            return
        mapped, _, index = entry
        cells = tuple(slice(k * p, min((k + 1) * p, n)) for k, p, n in zip(key, self.per_shard, self._nbytes.shape))
        index = index[tuple(slice(0, c.stop - c.start) for c in cells)]
        written = index[..., 0] != EMPTY
        base = np.uint64(np.frombuffer(mapped, np.uint8).ctypes.data)
        self._addresses[cells] = np.where(written, index[..., 0] + base, 0)
        self._nbytes[cells] = np.where(written, index[..., 1], 0)

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        entry = self._shard(tuple(i // p for i, p in zip(index, self.per_shard)))
        if entry is not None:
            mapped, table, _ = entry
            for i, p in zip(index, self.per_shard):
                table = table[i % p]
            offset, nbytes = table
            if offset != EMPTY:
                raw = mapped[offset: offset + nbytes]
                if self.compressed:
                    try:
                        _blosc_decompress(raw, self._buffer)
                    except Exception as error:  # noqa: BLE001 - numcodecs raises RuntimeError / ValueError
                        raise DamagedShard(f"chunk {index} of {self.path} does not decode ({error})") from None
                else:
                    self._buffer[...] = np.frombuffer(raw, self.dtype).reshape(self.chunk)
                return self._buffer
        self._buffer.fill(self.fill)
        return self._buffer
