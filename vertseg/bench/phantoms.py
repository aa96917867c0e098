"""A small phantom store for benchmarks: `generate_dataset` NIfTI files -> the real preprocessing -> Zarr store."""

from __future__ import annotations

from pathlib import Path

from vertseg.data.config import DataConfig


def phantom_store(root: Path, n_cases: int, config: DataConfig, seed: int = 0, labeled_fraction: float = 1.0) -> Path:
    """Write `n_cases` small phantoms (VerSe 2020 layout, 60/20/20 split) and preprocess them into `root`."""
    from vertseg.data.preprocess import preprocess_case
    from vertseg.data.readers import discover_cases
    from vertseg.data.store import build_manifest, init_store, write_manifest
    from vertseg.data.synth.dataset import generate_dataset

    raw = root.parent / f"{root.name}-nifti"
    generate_dataset(raw, n_cases, "verse20", seed, "small", labeled_fraction=labeled_fraction, variant_rate=0.0,
                     multi_scan_rate=0.0, overwrite=True)
    init_store(root, config)
    failures = []
    for source in discover_cases([raw]):
        result = preprocess_case(source, config, root)
        if result["status"] == "failed":
            failures.append(result)
    write_manifest(root, build_manifest(root, config, failures))
    return root
