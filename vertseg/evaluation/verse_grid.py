"""The grid and centroid frame of the official VerSe evaluation (github.com/anjany/verse, `utils/evaluate.ipynb`).

The official notebook reslices prediction and ground truth with `resample_nib(msk, (1, 1, 1), order=0)`: new shape
`rint(shape * zooms / spacing)`, affine `nibabel.affines.rescale_affine` (keeps the world position of the voxel at
`shape / 2`), values by `nibabel.processing.resample_from_to` with nearest neighbour. On a 2 mm axis this grid puts
every other new voxel half-way between two old ones, so which old slice it copies is decided by round-off: centres
of mass move by a few tenths of a mm, enough to turn a 19.8 mm hit into a 20.02 mm miss. It is reproduced here
with the same nibabel calls, except that the outside is filled with 0 (the notebook's cval=-1024 makes padding
foreground once a mask is cast to bool).

Centroids live in voxel coordinates of that grid, rounded to 0.1 as `calc_centroids` (centre of mass) and
`rescale_centroids` (annotated points: `index * zooms / spacing`) round them; distances are taken between those.
"""

from __future__ import annotations

import numpy as np

from vertseg.evaluation.case import mask_centroids

CENTROID_DECIMALS = 1  # calc_centroids(decimals=1) and rescale_centroids round to 0.1 voxel


def iso_grid(shape, affine: np.ndarray, zooms, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the official isotropic grid (`resample_nib`) for an image of `shape`/`affine`."""
    import nibabel as nib

    scale = np.asarray(zooms, dtype=np.float64) / spacing_mm
    new_shape = tuple(int(n) for n in np.rint(np.asarray(shape) * scale).astype(int))
    return new_shape, nib.affines.rescale_affine(np.asarray(affine, np.float64), tuple(shape), (spacing_mm,) * 3,
                                                 new_shape)


def reslice_nearest(labels: np.ndarray, affine: np.ndarray, zooms, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Labelmap (NIfTI array order, RAS `affine`) on the official isotropic grid; outside = 0."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    target = iso_grid(labels.shape, affine, zooms, spacing_mm)
    resliced = resample_from_to(nib.Nifti1Image(np.asarray(labels, np.uint8), affine), target, order=0, cval=0)
    return np.asarray(resliced.dataobj, dtype=np.uint8), target[1]


def rescale_points(voxels: dict[int, np.ndarray], zooms, spacing_mm: float) -> dict[int, np.ndarray]:
    """Annotated voxel positions on the native grid -> voxel coordinates of the isotropic grid (`rescale_centroids`)."""
    scale = np.asarray(zooms, dtype=np.float64) / spacing_mm
    return {label: np.round(np.asarray(v, np.float64) * scale, CENTROID_DECIMALS) for label, v in voxels.items()}


def centres_of_mass(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Voxel centre of mass of every label, rounded as `calc_centroids` rounds it."""
    return {label: np.round(c, CENTROID_DECIMALS) for label, c in mask_centroids(labels, np.eye(4)).items()}
