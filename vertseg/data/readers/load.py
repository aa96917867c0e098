"""Read one case: image, mask converted to VerSe labels, JSON centroids in physical LPS mm; validate on the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vertseg.data.errors import CaseError
from vertseg.data.readers.centroids import read_centroids_json, reorient_points
from vertseg.data.readers.dicom import read_dicom_series
from vertseg.data.readers.geometry import axcodes, same_grid, voxel_to_lps
from vertseg.data.types import Case, CaseSource
from vertseg.data.readers.label_formats import convert_mask_values, read_structure_folder
CENTROID_MARGIN_VOXELS = 5.0  # a JSON point further outside the grid than this means a wrong file or direction


def load_case(source: CaseSource) -> Case:
    """Load and validate a case; any problem raises CaseError naming the file."""
    if source.image is None and source.mask is None:
        raise CaseError(None, f"case {source.case_id} has neither an image nor a mask")
    image = read_image(source.image, source.series_uid, source.allow_irregular) if source.image is not None else None
    mask = None
    if source.mask is not None:
        mask = read_mask(source.mask, source.label_format, reference=image, reference_path=source.image)
    centroids = {}
    if source.centroids is not None:
        centroids = read_centroids_lps(source.centroids, image if image is not None else mask)
    return Case(source=source, image=image, mask=mask, centroids_lps=centroids)


def _read_sitk(path: Path):
    import SimpleITK as sitk

    if not Path(path).exists():
        raise CaseError(path, "file does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(path, f"cannot read image ({_first_line(error)})") from None
    _refuse_nifti_nans(Path(path))
    return image


def _refuse_nifti_nans(path: Path) -> None:
    """ITK's NIfTI reader turns NaN voxels into 0, so float NIfTI files are checked through nibabel."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        image = nib.load(path)
        if not np.issubdtype(image.get_data_dtype(), np.floating):
            return
        bad = int(np.count_nonzero(~np.isfinite(np.asanyarray(image.dataobj))))
    except (OSError, ValueError, EOFError) as error:
        raise CaseError(path, f"cannot read image ({error})") from None
    if bad:
        raise CaseError(path, f"{bad} voxels are NaN or infinite")


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "rror" in line or "annot" in line] or lines or ["unknown error"]
    return useful[-1][:300]


def _as_3d(image, path: Path):
    """Accept 3D images and 4D images with a single volume; refuse anything else."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(path, f"expected a scalar image, found {image.GetNumberOfComponentsPerPixel()} components")
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if image.GetDimension() != 3:
        raise CaseError(path, f"expected a 3D volume, found {image.GetDimension()}D of size {image.GetSize()}")
    if min(image.GetSize()) < 1:
        raise CaseError(path, f"empty volume of size {image.GetSize()}")
    return image


def read_image(path: Path, series_uid: str | None = None, allow_irregular: bool = False):
    """CT volume (NIfTI file or DICOM series folder) as a SimpleITK image; NaNs are an error.

    A DICOM series with uneven slice positions is refused unless `allow_irregular` (then resampled; see dicom.py).
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        try:
            image = read_dicom_series(path, series_uid, allow_irregular)
        except RuntimeError as error:
            raise CaseError(path, f"cannot read DICOM series ({_first_line(error)})") from None
    else:
        image = _read_sitk(path)
    image = _as_3d(image, path)
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise CaseError(path, f"{bad} voxels are NaN or infinite")
    return image


def read_mask(path: Path, label_format: str = "verse", reference=None, reference_path: Path | None = None):
    """Label volume converted BY NAME to VerSe labels (uint8), on the same grid as `reference` when given.

    `path` is a label file (its header table, else `label_format`, says what the values mean) or a folder of
    per-structure binary files; see `vertseg.data.readers.label_formats`.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        mask = read_structure_folder(path, lambda p: _as_3d(_read_sitk(p), p), same_grid)
    else:
        mask = _as_3d(_read_sitk(path), path)
    if reference is not None:
        difference = same_grid(reference, mask)
        if difference is not None:
            raise CaseError(path, f"mask does not match its image {reference_path}: {difference}")
    values = sitk.GetArrayViewFromImage(mask)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            raise CaseError(path, "mask contains NaN or infinite values")
        if not np.array_equal(values, np.round(values)):
            raise CaseError(path, "mask has non-integer values (a probability map, or resampled with interpolation?)")
    labels = values.astype(np.uint8) if path.is_dir() else convert_mask_values(path, values, label_format)
    if not labels.any():
        raise CaseError(path, "empty mask: no vertebra labels")
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(mask)
    return out


def read_centroids_lps(path: Path, reference) -> dict[int, np.ndarray]:
    """JSON centroids -> physical LPS mm via the geometry of the image they were annotated on."""
    codes, points = read_centroids_json(path)
    image_codes = axcodes(reference)
    shape = tuple(reference.GetSize())
    points = reorient_points(points, codes or image_codes, image_codes, shape)
    if not points:
        return {}
    labels = sorted(points)
    voxels = np.stack([points[k] for k in labels])
    outside = (voxels < -0.5 - CENTROID_MARGIN_VOXELS) | (voxels > np.asarray(shape) - 0.5 + CENTROID_MARGIN_VOXELS)
    if outside.any():
        label = labels[int(np.argwhere(outside.any(axis=1))[0, 0])]
        where = points[label].tolist()
        raise CaseError(path, f"centroid of label {label} at voxel {where} lies outside the {shape} grid")
    physical = voxel_to_lps(voxels, reference)
    return {label: physical[n] for n, label in enumerate(labels)}


def mask_centres_lps(mask) -> dict[int, np.ndarray]:
    """Centre of mass of each label of a VerSe mask in physical LPS mm (distinct from vertebral-body centroids)."""
    import SimpleITK as sitk
    from scipy import ndimage

    array = sitk.GetArrayViewFromImage(mask)  # (k, j, i)
    labels = [int(v) for v in np.flatnonzero(np.bincount(array.ravel(), minlength=1)) if v]
    if not labels:
        return {}
    centres_kji = np.asarray(ndimage.center_of_mass(np.ones(array.shape, np.uint8), array, labels), dtype=np.float64)
    physical = voxel_to_lps(centres_kji[:, ::-1], mask)
    return {label: physical[n] for n, label in enumerate(labels)}
