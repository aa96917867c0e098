"""DICOM series with their slice positions checked.

ITK stacks a series at the spacing (last - first position) / (slices - 1): one missing slice turns a 2.0 mm series
into 2.111 mm and shifts every slice after the gap, a duplicated file squeezes it, and nothing is said. Before a
series is accepted, each slice's ImagePositionPatient is projected on the slice normal; uneven steps (gaps) are
refused with the files on either side, or resampled onto a uniform grid when the caller allows it; duplicate
positions and gantry tilt are always refused (no resampling can say which of two slices is right).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vertseg.data.errors import CaseError

STEP_TOLERANCE = 0.01  # a step may differ from the series' step by 1% (scanners round positions to ~1e-3 mm)
MIN_TOLERANCE_MM = 1e-3
TILT_TOLERANCE_VOXELS = 0.5  # in-plane drift of the slice origins, in pixels, beyond which the stack is sheared
_POSITION, _ORIENTATION = "0020|0032", "0020|0037"


@dataclass(frozen=True)
class SliceLayout:
    """Slice files sorted along the normal, their positions on it (mm) and the series step."""

    files: tuple[str, ...]
    offsets: np.ndarray  # (n,) ascending positions along `normal`
    orientation: np.ndarray  # (6,) ImageOrientationPatient: row then column direction cosines
    origins: np.ndarray  # (n, 3) ImagePositionPatient of the sorted slices
    step_mm: float  # the median step: the spacing a uniform series would have

    @property
    def normal(self) -> np.ndarray:
        return _normal(self.orientation)

    def direction(self) -> tuple[float, ...]:
        """ITK direction (row-major 3x3) whose columns are the row, column and normal directions."""
        return tuple(np.column_stack([self.orientation[:3], self.orientation[3:], self.normal]).ravel().tolist())

    @property
    def tolerance_mm(self) -> float:
        return max(STEP_TOLERANCE * self.step_mm, MIN_TOLERANCE_MM)

    def duplicates(self) -> list[int]:
        """Indices k where slices k and k+1 share one position."""
        return [int(k) for k in np.flatnonzero(np.diff(self.offsets) < self.tolerance_mm)]

    def uneven(self) -> list[int]:
        """Indices k where the step from slice k to k+1 differs from the series step (a gap or an extra slice)."""
        steps = np.diff(self.offsets)
        bad = (np.abs(steps - self.step_mm) > self.tolerance_mm) & (steps >= self.tolerance_mm)
        return [int(k) for k in np.flatnonzero(bad)]

    def in_plane_drift_mm(self) -> float:
        """Largest in-plane offset of a slice origin from the first slice's normal line (gantry tilt)."""
        moved = self.origins - self.origins[0]
        along = np.outer(moved @ self.normal, self.normal)
        return float(np.max(np.linalg.norm(moved - along, axis=1)))


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def slice_layout(files: list[str], positions: np.ndarray, orientation: np.ndarray) -> SliceLayout:
    """Sort slices along the normal of their shared orientation (row, column cosines) and find the series step."""
    orientation = np.asarray(orientation, float)
    offsets = np.asarray(positions, float) @ _normal(orientation)
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    steps = np.diff(offsets)
    distinct = steps[steps >= MIN_TOLERANCE_MM]
    step = float(np.median(distinct)) if distinct.size else 0.0
    return SliceLayout(tuple(files[k] for k in order), offsets, orientation, np.asarray(positions, float)[order], step)


def _name(path: str) -> str:
    return Path(path).name


def _listing(items: list[str], limit: int = 3) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _step_text(layout: SliceLayout, k: int) -> str:
    step = layout.offsets[k + 1] - layout.offsets[k]
    missing = int(round(step / layout.step_mm)) - 1
    kind = f"a gap of about {missing} missing slice(s)" if missing >= 1 else "an uneven step"
    return f"{kind}: {step:.3f} mm from {_name(layout.files[k])} to {_name(layout.files[k + 1])}"


def layout_problem(layout: SliceLayout, pixel_mm: float, allow_irregular: bool) -> str | None:
    """What makes the series unusable as read (None when it is usable, resampled or not)."""
    files, offsets = layout.files, layout.offsets
    duplicates = layout.duplicates()
    if duplicates:
        pairs = [f"{_name(files[k])} and {_name(files[k + 1])} at {offsets[k]:.3f} mm" for k in duplicates]
        return (f"{len(duplicates)} pair(s) of slices share one position along the slice normal: {_listing(pairs)} "
                "(a copied file, or two series under one series UID); remove the extra files")
    drift = layout.in_plane_drift_mm()
    if drift > TILT_TOLERANCE_VOXELS * pixel_mm:
        return (f"slice origins drift {drift:.2f} mm in-plane from {_name(files[0])} to the last slice "
                "(gantry tilt); the slices do not stack into a rectangular grid")
    uneven = layout.uneven()
    if uneven and not allow_irregular:
        steps = [_step_text(layout, k) for k in uneven]
        return (f"slice positions are not evenly spaced (the series steps {layout.step_mm:.3f} mm): {_listing(steps)}; "
                f"allow irregular series (--allow-irregular) to resample onto a uniform {layout.step_mm:.3f} mm grid")
    return None


def _header(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """ImagePositionPatient, ImageOrientationPatient and the smallest pixel spacing of one slice file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    values = []
    for tag, count in ((_POSITION, 3), (_ORIENTATION, 6)):
        text = reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else ""
        try:
            numbers = np.array([float(v) for v in text.strip().split("\\")], dtype=float)
        except ValueError:
            numbers = np.zeros(0)
        if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
            name = "ImagePositionPatient" if tag == _POSITION else "ImageOrientationPatient"
            raise CaseError(path, f"slice has no usable {name} ({text.strip()!r}); it cannot be placed in the series")
        values.append(numbers)
    return values[0], values[1], float(min(reader.GetSpacing()[:2]))


def _read_layout(folder: Path, files: list[str]) -> tuple[SliceLayout, float]:
    """The layout of a series' slice files and their in-plane pixel size (mm)."""
    headers = [_header(f) for f in files]
    orientation = headers[0][1]
    for path, (_, other, _) in zip(files, headers):
        if not np.allclose(other, orientation, atol=1e-4):
            raise CaseError(folder, f"slices {_name(files[0])} and {_name(path)} have different orientations "
                                    f"({orientation.tolist()} vs {other.tolist()})")
    return slice_layout(files, np.stack([h[0] for h in headers]), orientation), headers[0][2]


def resample_slices(array: np.ndarray, offsets: np.ndarray, step_mm: float) -> tuple[np.ndarray, float]:
    """Slices (k, j, i) at ascending `offsets` -> linearly interpolated slices on a uniform grid from the first to
    the last offset; the step is the one closest to `step_mm` that ends exactly on the last slice."""
    extent = float(offsets[-1] - offsets[0])
    count = int(round(extent / step_mm)) + 1
    step = extent / (count - 1)
    targets = offsets[0] + step * np.arange(count)
    below = np.clip(np.searchsorted(offsets, targets, side="right") - 1, 0, len(offsets) - 2)
    weight = (targets - offsets[below]) / (offsets[below + 1] - offsets[below])
    out = np.empty((count,) + array.shape[1:], dtype=np.float32)
    for m, (k, w) in enumerate(zip(below, weight)):
        out[m] = (1.0 - w) * array[k] + w * array[k + 1]
    if np.issubdtype(array.dtype, np.integer):
        limits = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), limits.min, limits.max)
    return out.astype(array.dtype), step


def unreadable_slices(folder: Path, in_series: set[str]) -> list[Path]:
    """Files of `folder` (names not in `in_series`) that carry the DICOM signature ('DICM' after the 128-byte preamble) but belong to no
    series GDCM could parse: damaged slices, not unrelated files."""
    out = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name in in_series:
            continue
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                out.append(path)
    return out


def read_dicom_series(folder: Path, series_uid: str | None = None, allow_irregular: bool = False):
    """One series of a folder as a SimpleITK image on a uniform grid; CaseError naming the files otherwise.

    ITK's own errors (unreadable pixel data) propagate as RuntimeError for the caller to word.
    """
    import SimpleITK as sitk

    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    uid = series_uid if series_uid is not None else (uids[0] if uids else None)
    if uid is None or uid not in uids:
        raise CaseError(folder, "no DICOM series found" if not uids else f"series {uid!r} not in folder")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    listed = {Path(f).name for u in uids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), u)}
    dropped = unreadable_slices(folder, listed)
    if dropped:  # GDCM leaves a damaged file out of every series: it would read as a missing slice
        raise CaseError(folder, f"{len(dropped)} DICOM file(s) cannot be read (truncated or corrupt): "
                                f"{_listing([_name(str(p)) for p in dropped])}; copy them again from the source")
    reader = sitk.ImageSeriesReader()
    if len(files) < 2:  # a single (possibly multi-frame) file: its geometry comes from its own header
        reader.SetFileNames(files)
        return reader.Execute()
    layout, pixel_mm = _read_layout(folder, files)
    problem = layout_problem(layout, pixel_mm, allow_irregular)
    if problem is not None:
        raise CaseError(folder, problem)
    reader.SetFileNames(list(layout.files))
    image = reader.Execute()  # an uneven series makes ITK warn about "non uniform sampling": resampled below
    if not layout.uneven():
        return image
    values, step = resample_slices(sitk.GetArrayFromImage(image), layout.offsets, layout.step_mm)
    uniform = sitk.GetImageFromArray(values)
    uniform.SetSpacing((*image.GetSpacing()[:2], step))
    uniform.SetOrigin(tuple(float(v) for v in layout.origins[0]))
    uniform.SetDirection(layout.direction())
    return uniform
