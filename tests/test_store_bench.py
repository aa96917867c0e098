"""Pieces of `vertseg bench data` that decide what is compared: the nnU-Net Blosc2 sizing and the naive baseline."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np

from vertseg.bench.data import L1_BYTES, L3_BYTES, blosc2_params, naive_preprocess


def test_blosc2_blocks_fit_l1_and_chunks_fit_l3():
    chunks, blocks = blosc2_params((300, 250, 240), (128, 64, 64), 2)
    assert math.prod(blocks) * 2 <= 0.8 * L1_BYTES and math.prod(chunks) * 2 <= 0.8 * L3_BYTES
    assert all(c % b == 0 for c, b in zip(chunks, blocks)) and all(c <= 2 * p for c, p in zip(chunks, (128, 64, 64)))


def test_naive_baseline_resamples_to_the_target_spacing(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((10, 12, 8), np.int16), affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((10, 12, 8), np.uint8), affine), tmp_path / "seg.nii.gz")
    naive_preprocess(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", tmp_path, 1.0)
    assert np.load(tmp_path / "ct.nii.gz.npy").shape == (20, 24, 24)
    assert np.load(tmp_path / "seg.nii.gz.npy").shape == (20, 24, 24)
