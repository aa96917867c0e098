"""File-level checks that SimpleITK's NIfTI reader skips: it reads a truncated .nii.gz as zeros and turns NaN into 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _expected_nifti_bytes(image) -> int:
    header = image.header
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return int(image.dataobj.offset) + voxels * header.get_data_dtype().itemsize


def nifti_problem(path: Path | str) -> str | None:
    """None for a sound NIfTI file, else what is wrong (truncated/corrupt gzip, size mismatch, NaN/inf voxels)."""
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(path)
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for broken headers
        return f"not a readable NIfTI file ({type(error).__name__}: {error})"
    expected = _expected_nifti_bytes(image)
    if path.name.endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            stored = int.from_bytes(handle.read(4), "little")  # gzip ISIZE: uncompressed length mod 2**32
        if stored != expected % 2**32:
            return f"truncated or corrupt gzip stream (expected {expected} bytes uncompressed, trailer says {stored})"
    elif path.stat().st_size < expected:
        return f"truncated file ({path.stat().st_size} of {expected} bytes)"
    if np.issubdtype(image.get_data_dtype(), np.floating):
        values = np.asarray(image.dataobj)
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            return f"{bad} voxels are NaN or infinite"
    return None
