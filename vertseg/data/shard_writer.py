"""Write a whole array into the shard files of a Zarr v3 array whose metadata zarr-python created.

zarr-python encodes a sharded array through its async codec pipeline, about a millisecond of Python per inner
chunk; every case is written once, and that pipeline took more of preprocessing than resampling did
(`vertseg bench data`). This writer makes the same files: each inner chunk's blosc frame (chunks holding only
the fill value are left out, as zarr-python leaves them out), then the shard index and its crc32c.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from vertseg.data.chunks import EMPTY, read_layout

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _encoder(blosc: dict | None):
    """chunk -> stored bytes, with the array's own blosc settings (or raw bytes)."""
    if blosc is None:
        return lambda chunk: chunk.tobytes()
    from numcodecs import blosc as codec

    cname, level, shuffle = blosc["cname"].encode(), int(blosc["clevel"]), _SHUFFLE[blosc["shuffle"]]
    return lambda chunk: codec.compress(chunk, cname, level, shuffle, int(blosc.get("blocksize", 0)))


def write_shards(path: Path, data: np.ndarray) -> None:
    """Store `data` (the array's full shape and dtype) in the array at `path`, which holds no chunk yet."""
    import google_crc32c

    layout = read_layout(path)
    if data.shape != layout.shape or data.dtype != layout.dtype:
        raise ValueError(f"{path}: array is {layout.shape} {layout.dtype}, data is {data.shape} {data.dtype}")
    grid = tuple(-(-n // c) for n, c in zip(layout.shape, layout.chunk))
    padded = np.full([g * c for g, c in zip(grid, layout.chunk)], layout.fill, layout.dtype)
    padded[tuple(slice(0, n) for n in data.shape)] = data  # edge chunks are stored whole, padded with the fill value
    cells = padded.reshape([v for g, c in zip(grid, layout.chunk) for v in (g, c)])
    chunk_axes = tuple(range(1, 2 * len(grid), 2))
    written = (cells != layout.fill).any(axis=chunk_axes)
    cells = cells.transpose(tuple(range(0, 2 * len(grid), 2)) + chunk_axes)  # (grid..., chunk...)
    encode = _encoder(layout.blosc)
    per_shard = layout.per_shard
    for key in itertools.product(*(range(-(-g // p)) for g, p in zip(grid, per_shard))):
        index = np.full(per_shard + (2,), EMPTY, "<u8")
        frames, offset = [], 0
        for local in itertools.product(*map(range, per_shard)):
            position = tuple(k * p + i for k, p, i in zip(key, per_shard, local))
            if all(i < g for i, g in zip(position, grid)) and written[position]:
                frame = encode(np.ascontiguousarray(cells[position]))
                index[local] = (offset, len(frame))
                frames.append(frame)
                offset += len(frame)
        if frames:
            table = index.tobytes()
            if layout.index_crc32c:
                table += google_crc32c.value(table).to_bytes(4, "little")
            shard = path / "c" / Path(*map(str, key))
            shard.parent.mkdir(parents=True, exist_ok=True)
            shard.write_bytes(b"".join(frames) + table)
