"""A tiny phantom store for the training tests, built through the real preprocessing path (NIfTI -> Zarr store)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from vertseg.config import build_config
from vertseg.data.preprocess import preprocess_case
from vertseg.data.store import build_manifest, init_store, write_manifest
from vertseg.data.synth.scan import make_phantom
from vertseg.data.types import CaseSource

TINY = [
    "model.base_width=4",
    "data.patch_size=[32,16,16]",
    "data.spacing_mm=4.0",
    "data.chunk_size=[32,32,32]",
    "train.optim.labeled_batch_size=2",
    "train.optim.unlabeled_batch_size=2",
    "train.methods.ua_mt_passes=2",
]


def make_store(root: Path, splits: dict[str, int], seed: int = 0, spacing_mm: float = 4.0) -> Path:
    """Write `splits` = {"training": n, "validation": m, "unlabeled": u} phantom cases into `root` (a store)."""
    config = build_config({}, TINY + [f"data.spacing_mm={spacing_mm}"]).data
    rng = np.random.default_rng(seed)
    nifti = root.parent / f"{root.name}-nifti"
    nifti.mkdir(parents=True, exist_ok=True)
    init_store(root, config)
    for split, count in splits.items():
        for i in range(count):
            phantom = make_phantom(rng, "small", l6=False, t13=False, fracture=False)
            case_id = f"ph-{split}-{i}"
            image = nifti / f"{case_id}_ct.nii.gz"
            nib.save(nib.Nifti1Image(phantom.hu, phantom.affine), image)
            labeled = split != "unlabeled"
            mask = None
            if labeled:
                mask = nifti / f"{case_id}_msk.nii.gz"
                nib.save(nib.Nifti1Image(phantom.labels_without_partial(), phantom.affine), mask)
            source = CaseSource(case_id, case_id, "phantom", "training" if split == "unlabeled" else split, image, mask)
            result = preprocess_case(source, config, root, "labeled" if labeled else "unlabeled")
            assert result["status"] == "written", result
    write_manifest(root, build_manifest(root, config, []))
    return root
