"""`generate_dataset`: many phantoms in one on-disk layout, deterministic by seed, plus a ground-truth record."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vertseg.data.synth.layouts import LAYOUTS, plan_cases, write_case
from vertseg.data.synth.scan import SIZES, make_phantom
from vertseg.io import atomic_write_json

DEFAULT_SPLITS = {"training": 0.6, "validation": 0.2, "test": 0.2}
RECORD_NAME = "synth.json"


def generate_dataset(
    out: Path | str,
    n_cases: int,
    layout: str = "verse20",
    seed: int = 0,
    size: str = "small",
    *,
    labeled_fraction: float = 1.0,
    splits: dict[str, float] | None = None,
    variant_rate: float = 0.1,
    multi_scan_rate: float = 0.2,
    first_id: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write `n_cases` phantoms under `out`; returns the image paths. Case i depends only on (seed, i).

    `synth.json` at the root records every case's split, visible and partial labels, variants and the
    world-frame (RAS) vertebral-body centroids, so tests can check readers and preprocessing against truth.
    A non-empty `out` is refused (stale cases would mix in) unless `overwrite` and it is an earlier synth output.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out = Path(out)
    _prepare(out, overwrite)
    first = first_id if first_id is not None else (500 if layout == "verse20" else 1)
    plan = plan_cases(layout, n_cases, seed, labeled_fraction, splits or DEFAULT_SPLITS, multi_scan_rate, first)
    paths, record = [], []
    for case in plan:
        rng = np.random.default_rng([seed, case.index])
        phantom = make_phantom(
            rng, size, variant_rate=variant_rate, t13=False if layout == "ctspine1k" else None
        )
        image = write_case(out, layout, case, phantom, rng)
        paths.append(image)
        record.append(
            {
                **asdict(case),
                "image": image.relative_to(out).as_posix(),
                "shape": list(phantom.hu.shape),
                "axcodes": list(phantom.axcodes),
                "affine_ras": phantom.affine.tolist(),
                "visible": sorted(phantom.centroids_voxel),
                "partial": sorted(phantom.partial),
                "variants": phantom.spine.variants,
                "centroids_ras": {str(v.label): v.centre.tolist() for v in phantom.spine.labeled},
            }
        )
    atomic_write_json(out / RECORD_NAME, {"layout": layout, "seed": seed, "size": size, "cases": record})
    return paths


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty; choose a new folder or overwrite an earlier synth output")
    if not (out / RECORD_NAME).exists():
        raise FileExistsError(f"{out} has no {RECORD_NAME}: not a synth output, refusing to delete it")
    shutil.rmtree(out)
