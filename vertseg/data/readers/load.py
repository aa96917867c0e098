"""Read one case: image, mask converted to VerSe labels, JSON centroids in physical LPS mm; validate on the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vertseg.data.errors import CaseError
from vertseg.data.integrity import nifti_problem
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
    """One image file through SimpleITK, after the checks its NIfTI reader skips (`integrity.nifti_problem`: it reads
    a truncated .nii.gz as zeros and NaN as 0), so predict, preprocess and evaluate refuse the same files."""
    import SimpleITK as sitk

    if not Path(path).exists():
        raise CaseError(path, "file does not exist")
    if Path(path).name.lower().endswith((".nii", ".nii.gz")):
        problem = nifti_problem(path)
        if problem is not None:
            raise CaseError(path, problem)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise CaseError(path, f"cannot read image ({_first_line(error)})") from None
    return image


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
    check_ct(path, _header_spacing(path) or tuple(image.GetSpacing()), tuple(image.GetSize()), values)
    return image


SPACING_RANGE_MM = (0.05, 20.0)  # a CT voxel is never outside this; header spacing outside it is a broken header
MIN_EXTENT_MM = 10.0  # under half a vertebral body along an axis: a single slice or a sliver, not a spine CT
HU_RANGE = (-4000.0, 40000.0)  # beyond this the values are not Hounsfield units (scaled, or another modality)


def check_ct(path: Path, spacing_mm: tuple[float, ...], size: tuple[int, ...], values: np.ndarray) -> None:
    """Refuse what no spine CT is: implausible voxel spacing, an axis too short to hold a vertebra, values that are
    not Hounsfield units. Each would otherwise give a labelmap of invented vertebrae."""
    for axis, step in enumerate(spacing_mm):
        if not (np.isfinite(step) and SPACING_RANGE_MM[0] <= step <= SPACING_RANGE_MM[1]):
            raise CaseError(path, f"voxel spacing {step:g} mm along axis {axis} is not a CT spacing "
                                  f"({SPACING_RANGE_MM[0]:g}-{SPACING_RANGE_MM[1]:g} mm): a broken header?")
    extents = [n * step for n, step in zip(size, spacing_mm)]
    if min(extents) < MIN_EXTENT_MM:
        raise CaseError(path, f"the image covers only {min(extents):.1f} mm along axis {int(np.argmin(extents))} "
                              f"(size {tuple(size)}): too little to hold a vertebra (at least {MIN_EXTENT_MM:g} mm)")
    if values.size:
        low, high = float(values.min()), float(values.max())
        if low < HU_RANGE[0] or high > HU_RANGE[1]:
            raise CaseError(path, f"values {low:g}..{high:g} are not Hounsfield units (expected within "
                                  f"{HU_RANGE[0]:g}..{HU_RANGE[1]:g}): rescale slope/intercept missing or applied twice?")


def _header_spacing(path: Path) -> tuple[float, ...] | None:
    """A NIfTI file's own voxel sizes as stored (ITK and nibabel both replace a zero pixdim by 1 mm), else None."""
    if not path.is_file() or not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    import gzip

    import nibabel as nib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = nib.Nifti1Header.from_fileobj(handle, check=False)
    except (OSError, ValueError, nib.spatialimages.HeaderDataError):  # NIfTI-2 and the like: ITK's spacing stands
        return None
    return tuple(abs(float(z)) for z in header["pixdim"][1:4])


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
