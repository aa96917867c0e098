"""`vertseg.predict`: label the vertebrae of one scan from Python (a notebook), without writing any file.

It runs the same steps as `vertseg predict` (`inference.runner.predict_store_frame`, `to_original`,
`inference.statistics`) and returns the labelmap as a nibabel image on the input's own grid plus one row per
vertebra (plain dicts, no pandas needed: `pandas.DataFrame(result.vertebrae)` works when pandas is installed).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

AFFINE_TOLERANCE = 1e-4


@dataclass
class Result:
    """`labelmap`: nibabel Nifti1Image (uint8; VerSe labels, or TotalSegmentator v2 ids with labels="totalseg") on
    the input's grid with its RAS affine. `vertebrae`: one dict per vertebra (`inference.statistics.STATISTICS_FIELDS`:
    name, volume_ml, body and whole-vertebra HU mean/median, RAS centroid, confidence, touches_border). `seconds`:
    time per step."""

    labelmap: Any
    vertebrae: list[dict]
    spine_box: dict
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.vertebrae]


def image_from_array(array: np.ndarray, affine: np.ndarray):
    """A (i, j, k) HU array with its nibabel RAS affine -> SimpleITK image (LPS direction, origin, spacing)."""
    import SimpleITK as sitk

    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got an array of shape {array.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the image has NaN or infinite voxels")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero voxel size: {spacing.tolist()}")
    direction = lps[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=AFFINE_TOLERANCE):
        raise ValueError("affine is sheared (axes not orthogonal); resample the image first")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def _checkpoint_or_default(checkpoint: str | Path | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    from vertseg.weights import Registry, RegistryError

    try:
        path, _ = Registry().default_checkpoint()
    except RegistryError as error:
        raise ValueError(f"the default model of the `vertseg weights` registry cannot be used ({error}); pass "
                         f"checkpoint=PATH") from None
    return path


def load(checkpoint: str | Path | None = None, *, fast: bool = False, device: str = "auto",
         overrides: list[str] | None = None):
    """A loaded network (`inference.predictor.Predictor`) to pass as `predict(..., checkpoint=...)` for many scans.

    `checkpoint`: a `vertseg train` checkpoint; None uses the registry's default model, else the bundled one.
    `fast`: the `--fast` settings. `device`: auto | cpu | cuda | mps. `overrides`: `section.key=value` inference
    settings, as `--set` on the command line."""
    from vertseg.inference.config import FAST_OVERRIDES
    from vertseg.inference.model_loading import load_model, resolve_device
    from vertseg.inference.predictor import Predictor

    settings = list(overrides or []) + (list(FAST_OVERRIDES) if fast else [])
    model, config, _ = load_model(_checkpoint_or_default(checkpoint), settings)
    return Predictor(model, config, resolve_device(device))


def _load_scan(image, affine, predictor, unpack_dir: Path):
    """(LoadedScan, RAS affine of the input grid) for a path, a nibabel image, or an array + affine."""
    import nibabel as nib

    from vertseg.data.readers.geometry import affine_ras
    from vertseg.inference.cases import PredictJob, collect_jobs, load_job, scan_from_image

    window = tuple(predictor.config.data.hu_window)
    if isinstance(image, (str, Path)):
        if not Path(image).exists():
            raise FileNotFoundError(f"{image}: no such file or folder")
        jobs = collect_jobs([Path(image)], unpack_dir=unpack_dir)
        if len(jobs) != 1:
            raise ValueError(f"{image}: expected one scan, found {len(jobs)}; use `vertseg predict` for several")
        scan = load_job(jobs[0], predictor.spacing, window)
        if scan.nifti_source is not None:  # the labelmap keeps the NIfTI's own affine, as `vertseg predict` does
            return scan, nib.load(str(scan.nifti_source)).affine
        return scan, affine_ras(scan.reference)
    if isinstance(image, nib.spatialimages.SpatialImage):
        if affine is not None:
            raise ValueError("affine= is only for numpy arrays; a nibabel image carries its own")
        array, affine = np.asanyarray(image.dataobj), image.affine
        if array.ndim == 4 and array.shape[3] == 1:
            array = array[..., 0]
    elif isinstance(image, np.ndarray):
        if affine is None:
            raise ValueError("a numpy array needs affine= (its 4x4 nibabel RAS affine, array axes i, j, k)")
        array = image
    else:
        raise TypeError(f"expected a path, a nibabel image or a numpy array, got {type(image).__name__}")
    sitk_image = image_from_array(array, affine)
    return scan_from_image(PredictJob("image"), sitk_image, predictor.spacing, window), np.asarray(affine, float)


def predict(
    image,
    checkpoint=None,
    *,
    affine: np.ndarray | None = None,
    fast: bool = False,
    device: str = "auto",
    labels: Literal["verse", "totalseg"] = "verse",
    overrides: list[str] | None = None,
    roi_subset: str | list[str] | None = None,
) -> Result:
    """Segment and name the vertebrae of one CT scan (HU).

    `image`: a path (NIfTI, NRRD, MetaImage, DICOM series folder or .zip), a nibabel image, or a numpy array in
    nibabel axis order (i, j, k) with `affine` (4x4, RAS). `checkpoint`: a checkpoint path, None (the default model
    of the `vertseg weights` registry), or a network loaded once with `vertseg.api.load` (then `fast`, `device` and
    `overrides` were given to `load`). `labels`: numbering of the returned labelmap, VerSe or TotalSegmentator v2.
    `roi_subset`: only these vertebrae in the labelmap and rows ("T12,L1" or ["T12", "vertebrae_L1"]); the whole
    spine is still predicted, as identification reads the whole sequence.
    """
    import nibabel as nib

    from vertseg.inference.predictor import Predictor
    from vertseg.inference.runner import Timer, predict_store_frame, to_original, unfound_notes
    from vertseg.inference.statistics import vertebra_statistics
    from vertseg.inference.writers import export_labels
    from vertseg.labels import vertebra_labels

    if labels not in ("verse", "totalseg"):
        raise ValueError(f"labels must be 'verse' or 'totalseg', not {labels!r}")
    subset = None if roi_subset is None else vertebra_labels([roi_subset] if isinstance(roi_subset, str) else roi_subset)
    if isinstance(checkpoint, Predictor):
        if fast or device != "auto" or overrides:
            raise ValueError("fast, device and overrides belong to vertseg.api.load when a loaded network is passed")
        predictor = checkpoint
    else:
        predictor = load(checkpoint, fast=fast, device=device, overrides=overrides)
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="vertseg-predict-") as unpack_dir:
        with timer.step("load"):
            scan, ras_affine = _load_scan(image, affine, predictor, Path(unpack_dir))
        prediction = predict_store_frame(predictor, scan, timer)
    with timer.step("postprocess"):
        whole = to_original(scan, prediction, predictor.config.inference.label_resampling)
        original = whole.subset(subset)
        rows = vertebra_statistics(original.vertebrae, original.labels, prediction.labels, scan.hu,
                                   prediction.centroids_zyx, predictor.spacing, scan.original_hu)
        exported, notes = export_labels(original.labels, labels)
        notes = unfound_notes(subset, whole.vertebrae) + notes
        labelmap = nib.Nifti1Image(np.ascontiguousarray(exported.transpose(2, 1, 0), dtype=np.uint8), ras_affine)
    seconds = {step: round(value, 4) for step, value in timer.seconds.items()}
    return Result(labelmap, rows, prediction.box.to_dict(), seconds, notes)
