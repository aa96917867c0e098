"""Prediction files on the ORIGINAL image grid: labelmap (NIfTI + Slicer/ITK-SNAP label tables, or DICOM-SEG),
VerSe centroid JSON, per-vertebra JSON/CSV, and with `--statistics` the statistics JSON/CSV.

A NIfTI input keeps its own header and affine byte for byte (nibabel); any other input (DICOM, NRRD, MetaImage)
gets a NIfTI with the SimpleITK geometry of the image. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from vertseg.data.readers.centroids import write_centroids_json
from vertseg.data.readers.files import is_nifti
from vertseg.data.readers.geometry import affine_lps, axcodes
from vertseg.io import atomic_path, atomic_write_json, atomic_write_text
from vertseg.labels import LABEL_FORMATS, VERSE_NAMES, region_of

if TYPE_CHECKING:
    from vertseg.inference.cases import LoadedScan

VERTEBRA_FIELDS = (
    "label", "name", "region", "voxels", "volume_ml", "confidence",
    "centroid_x", "centroid_y", "centroid_z", "centroid_lps_x", "centroid_lps_y", "centroid_lps_z",
)


@dataclass(frozen=True)
class OutputOptions:
    """What `vertseg predict` writes per case besides the always-written centroid, table and QC files.

    `labels`: numbering of the written labelmap, VerSe (1-28) or TotalSegmentator v2 (`totalseg`, mapped by name;
    L6, T13 and coccyx have no TotalSegmentator id and are left out, noted in the case record).
    """

    output_type: Literal["nifti", "dicom-seg"] = "nifti"
    labels: Literal["verse", "totalseg"] = "verse"
    statistics: bool = False

    def extra_outputs(self) -> dict[str, str]:
        """Output key -> file name suffix (after `<case>_`); `seg` replaces the NIfTI for DICOM-SEG."""
        names = {"seg": "seg.dcm"} if self.output_type == "dicom-seg" else {
            "slicer_colour_table": "seg.ctbl", "itksnap_labels": "seg_itksnap.txt"}
        if self.statistics:
            names |= {"statistics_json": "statistics.json", "statistics_csv": "statistics.csv"}
        return names


@dataclass(frozen=True)
class Vertebra:
    """One predicted vertebra; the centroid is a continuous voxel index (i, j, k) of the original image."""

    label: int
    voxels: int
    volume_ml: float
    confidence: float
    centroid_ijk: tuple[float, float, float]
    centroid_lps: tuple[float, float, float]

    def row(self) -> dict:
        return {
            "label": self.label,
            "name": VERSE_NAMES[self.label],
            "region": region_of(self.label) or "",
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 3),
            "confidence": None if np.isnan(self.confidence) else round(self.confidence, 4),
            **{f"centroid_{a}": round(v, 2) for a, v in zip("xyz", self.centroid_ijk)},
            **{f"centroid_lps_{a}": round(v, 2) for a, v in zip("xyz", self.centroid_lps)},
        }


def vertebrae_on_grid(
    labelmap_zyx: np.ndarray, image: sitk.Image, confidence: dict[int, float], centroids_lps: dict[int, np.ndarray]
) -> list[Vertebra]:
    """Volume of every label of an original-grid labelmap (no per-voxel loop) with its predicted body centroid
    (`centroids_lps`, LPS mm; the label's centre of mass where none is given)."""
    flat = labelmap_zyx.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=256)
    present = [int(k) for k in np.flatnonzero(counts) if k > 0]
    if not present:
        return []
    nonzero = np.flatnonzero(flat)
    ids = flat[nonzero]
    zyx = np.unravel_index(nonzero, labelmap_zyx.shape)
    means = [np.bincount(ids, weights=c.astype(np.float64), minlength=256) / np.maximum(counts, 1) for c in zyx]
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    affine = affine_lps(image)
    out = []
    for label in present:
        if label in centroids_lps:
            lps = np.asarray(centroids_lps[label], dtype=np.float64)
            ijk = np.linalg.solve(affine[:3, :3], lps - affine[:3, 3])
        else:
            ijk = np.array([means[2][label], means[1][label], means[0][label]])
            lps = affine[:3, :3] @ ijk + affine[:3, 3]
        out.append(Vertebra(label, int(counts[label]), counts[label] * voxel_ml, float(confidence.get(label, np.nan)),
                            tuple(float(v) for v in ijk), tuple(float(v) for v in lps)))
    return out


def write_labelmap(path: Path, labelmap_zyx: np.ndarray, image: sitk.Image, source: Path | None) -> None:
    """uint8 VerSe labelmap with the input's geometry: the NIfTI header itself when the input is a NIfTI file."""
    labelmap_zyx = np.ascontiguousarray(labelmap_zyx, dtype=np.uint8)
    if tuple(labelmap_zyx.shape[::-1]) != tuple(image.GetSize()):
        raise ValueError(f"labelmap shape {labelmap_zyx.shape} does not match the image size {image.GetSize()} (x, y, z)")
    with atomic_path(path) as tmp:
        if source is not None and source.is_file() and is_nifti(source):
            original = nib.load(str(source))
            header = original.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            out = nib.Nifti1Image(labelmap_zyx.transpose(2, 1, 0), original.affine, header)
            out.set_qform(original.get_qform(), int(original.header["qform_code"]))
            out.set_sform(original.get_sform(), int(original.header["sform_code"]))
            nib.save(out, str(tmp))
        else:
            label_image = sitk.GetImageFromArray(labelmap_zyx)
            label_image.CopyInformation(image)
            sitk.WriteImage(label_image, str(tmp), useCompression=True)


def write_centroids(path: Path, vertebrae: list[Vertebra], image: sitk.Image) -> None:
    """VerSe centroid JSON in voxel coordinates of the original image, with its own axis codes as `direction`."""
    write_centroids_json(path, {v.label: v.centroid_ijk for v in vertebrae}, axcodes(image))


def write_vertebra_tables(json_path: Path, csv_path: Path, vertebrae: list[Vertebra], extra: dict) -> None:
    write_rows(json_path, csv_path, [v.row() for v in vertebrae], VERTEBRA_FIELDS, extra)


def write_rows(json_path: Path, csv_path: Path, rows: list[dict], fields: tuple[str, ...], extra: dict) -> None:
    """The same rows as JSON (`{**extra, "vertebrae": rows}`) and as CSV with the columns `fields`."""
    atomic_write_json(json_path, {**extra, "vertebrae": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())


def export_labels(labelmap_zyx: np.ndarray, labels: str) -> tuple[np.ndarray, list[str]]:
    """A VerSe labelmap in the requested output numbering, and notes naming what it could not carry."""
    if labels == "verse":
        return labelmap_zyx, []
    exported, dropped = LABEL_FORMATS["totalseg_v2"].from_verse(labelmap_zyx)
    notes = [f"{', '.join(VERSE_NAMES[v] for v in dropped)} written as 0: no TotalSegmentator v2 id"] if dropped else []
    return exported, notes


def write_case_outputs(paths: dict[str, Path], scan: LoadedScan, labelmap_zyx: np.ndarray, vertebrae: list[Vertebra],
                       extra: dict, options: OutputOptions, statistics: list[dict] | None) -> list[str]:
    """Every file of one case except the QC image; returns notes for the case record."""
    notes: list[str] = []
    if options.output_type == "dicom-seg":
        from vertseg.inference.dicom_seg import series_files, write_dicom_seg

        source = scan.job.source
        if source is None or not Path(source.image).is_dir():
            raise ValueError(f"{scan.job.origin}: DICOM-SEG output needs a DICOM series input to reference")
        notes += write_dicom_seg(paths["seg"], labelmap_zyx, series_files(Path(source.image), source.series_uid))
    else:
        from vertseg.inference.colour_tables import write_colour_tables

        exported, notes = export_labels(labelmap_zyx, options.labels)
        write_labelmap(paths["seg"], exported, scan.reference, scan.nifti_source)
        write_colour_tables(paths["slicer_colour_table"], paths["itksnap_labels"], options.labels)
    write_centroids(paths["ctd"], vertebrae, scan.reference)
    write_vertebra_tables(paths["vertebrae_json"], paths["vertebrae_csv"], vertebrae, extra)
    if statistics is not None:
        from vertseg.inference.statistics import STATISTICS_FIELDS, BODY_RADIUS_FRACTION

        about = {"case_id": extra["case_id"], "input": extra["input"],
                 "body_region": f"label voxels within {BODY_RADIUS_FRACTION} x the equivalent-sphere radius of the "
                                "vertebra around its body centroid, HU on the 1 mm store frame",
                 "centroid_frame": "RAS mm"}
        write_rows(paths["statistics_json"], paths["statistics_csv"], statistics, STATISTICS_FIELDS, about)
    return notes
