"""Compiled window assembly for the shard reader: decode and copy every inner chunk of a window in one call.

A training patch touches dozens of small inner chunks; decoding them one Python call each cost as much as the
decoding itself (`vertseg bench data`). Here a numba kernel walks the chunks of the window and calls c-blosc2's
`blosc2_decompress` (which reads the blosc1 frames Zarr writes) straight on the memory-mapped shards.
The decoder is passed in as a ctypes function, so the kernel has no dynamic globals and numba caches it on disk.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path



@functools.cache
def blosc_decoder():
    """c-blosc2's `blosc2_decompress` from the `blosc2` wheel, or None where the library is not there."""
    try:
        import blosc2
    except ImportError:
        return None
    folder = Path(blosc2.__file__).parent / "lib"
    names = ("libblosc2.so", "libblosc2.dylib", "blosc2.dll", "libblosc2.dll")
    libraries = [folder / name for name in names if (folder / name).is_file()]
    try:
        library = ctypes.CDLL(str(libraries[0]))
    except (IndexError, OSError):
        return None
    library.blosc2_init()
    decompress = library.blosc2_decompress
    # Addresses travel as size_t: numba hands integers to size_t arguments, and pointers have its width.
    decompress.argtypes = [ctypes.c_size_t, ctypes.c_int32, ctypes.c_size_t, ctypes.c_int32]
    decompress.restype = ctypes.c_int
    return decompress


@functools.cache
def _kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def gather(decompress, out, start, chunk, addresses, nbytes, fill, buffer):
        """Fill `out` with the array from `start` on; returns the flat index of a chunk that does not decode,
        else -1. `addresses`/`nbytes`: per inner chunk its frame in memory, nbytes 0 for a chunk never written."""
        pointer = buffer.ctypes.data
        for iz in range(start[0] // chunk[0], (start[0] + out.shape[0] - 1) // chunk[0] + 1):
            z0, z1 = max(start[0], iz * chunk[0]), min(start[0] + out.shape[0], (iz + 1) * chunk[0])
            for iy in range(start[1] // chunk[1], (start[1] + out.shape[1] - 1) // chunk[1] + 1):
                y0, y1 = max(start[1], iy * chunk[1]), min(start[1] + out.shape[1], (iy + 1) * chunk[1])
                for ix in range(start[2] // chunk[2], (start[2] + out.shape[2] - 1) // chunk[2] + 1):
                    x0, x1 = max(start[2], ix * chunk[2]), min(start[2] + out.shape[2], (ix + 1) * chunk[2])
                    target = out[z0 - start[0]: z1 - start[0], y0 - start[1]: y1 - start[1], x0 - start[2]: x1 - start[2]]
                    size = nbytes[iz, iy, ix]
                    if size == 0:
                        target[...] = fill
                    elif decompress(addresses[iz, iy, ix], size, pointer, buffer.nbytes) != buffer.nbytes:
                        return (iz * nbytes.shape[1] + iy) * nbytes.shape[2] + ix
                    else:
                        target[...] = buffer[z0 - iz * chunk[0]: z1 - iz * chunk[0], y0 - iy * chunk[1]: y1 - iy * chunk[1],
                                             x0 - ix * chunk[2]: x1 - ix * chunk[2]]
        return -1

    return gather


def compiled_gather():
    """(kernel, decoder), or None where numba or c-blosc2 is missing (the reader then decodes chunk by chunk)."""
    decoder = blosc_decoder()
    if decoder is None:
        return None
    try:
        return _kernel(), decoder
    except ImportError:
        return None
