"""Prediction files on the ORIGINAL image grid: labelmap (NIfTI + Slicer/ITK-SNAP label tables, or DICOM-SEG),
VerSe centroid JSON, per-vertebra JSON/CSV, with `--statistics` the statistics JSON/CSV, and with `--per-vertebra`
one binary mask per vertebra.

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
from vertseg.data.readers.geometry import axcodes
from vertseg.data.readers.label_formats import label_table_extension
from vertseg.io import atomic_path, atomic_write_json, atomic_write_text
from vertseg.inference.statistics import BODY_RADIUS_FRACTION, STATISTICS_FIELDS, VERTEBRA_REGION
from vertseg.inference.vertebrae import VERTEBRA_FIELDS, Vertebra
from vertseg.labels import LABEL_FORMATS, VERSE_NAMES

if TYPE_CHECKING:
    from vertseg.inference.cases import LoadedScan

@dataclass(frozen=True)
class OutputOptions:
    """What `vertseg predict` writes per case besides the always-written centroid, table and QC files.

    `labels`: numbering of the written labelmap, VerSe (1-28) or TotalSegmentator v2 (`totalseg`, mapped by name;
    L6, T13 and coccyx have no TotalSegmentator id and are left out, noted in the case record).
    `roi_subset`: VerSe labels of the only vertebrae written (`--roi-subset`); the whole spine is still predicted,
    as identification reads the whole sequence. `per_vertebra`: also one binary mask file per vertebra.
    """

    output_type: Literal["nifti", "dicom-seg"] = "nifti"
    labels: Literal["verse", "totalseg"] = "verse"
    statistics: bool = False
    roi_subset: tuple[int, ...] | None = None
    per_vertebra: bool = False

    def writes(self, label: int) -> bool:
        """Whether the outputs carry this VerSe label: any, or only those of the ROI subset."""
        return self.roi_subset is None or label in self.roi_subset

    def extra_outputs(self) -> dict[str, str]:
        """Output key -> file name suffix (after `<case>_`); `seg` replaces the NIfTI for DICOM-SEG."""
        names = {"seg": "seg.dcm"} if self.output_type == "dicom-seg" else {
            "slicer_colour_table": "seg.ctbl", "itksnap_labels": "seg_itksnap.txt"}
        if self.statistics:
            names |= {"statistics_json": "statistics.json", "statistics_csv": "statistics.csv"}
        return names


def write_labelmap(path: Path, labelmap_zyx: np.ndarray, image: sitk.Image, source: Path | None,
                   table: dict[int, str] | None = None) -> None:
    """uint8 labelmap with the input's geometry: the NIfTI header itself when the input is a NIfTI file. `table`
    ({value: structure name}) goes into the header as the label-table extension TotalSegmentator writes, so the
    file names its own values (vertseg evaluate, TotalSegmentator's tools and viewers read it)."""
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
            out.header.extensions.clear()
        else:
            label_image = sitk.GetImageFromArray(labelmap_zyx)
            label_image.CopyInformation(image)
            sitk.WriteImage(label_image, str(tmp), useCompression=True)
            if table is None:
                return
            out = nib.load(str(tmp))
            out = nib.Nifti1Image(np.asarray(out.dataobj), out.affine, out.header)
        if table is not None:
            out.header.extensions.append(nib.nifti1.Nifti1Extension(0, label_table_extension(table)))
        nib.save(out, str(tmp))


def write_centroids(path: Path, vertebrae: list[Vertebra], image: sitk.Image) -> None:
    """VerSe centroid JSON in voxel coordinates of the original image, with its own axis codes as `direction`."""
    write_centroids_json(path, {v.label: v.centroid_ijk for v in vertebrae}, axcodes(image))


def write_vertebra_tables(json_path: Path, csv_path: Path, vertebrae: list[Vertebra], extra: dict,
                          numbering: "LabelNumbering | None" = None) -> None:
    numbering = numbering or LabelNumbering.of("verse")
    rows = [{**v.row(), "map_value": numbering.value(v.label)} for v in vertebrae]
    write_rows(json_path, csv_path, rows, VERTEBRA_FIELDS, {**extra, "labelmap_numbering": numbering.name})


def write_rows(json_path: Path, csv_path: Path, rows: list[dict], fields: tuple[str, ...], extra: dict) -> None:
    """The same rows as JSON (`{**extra, "vertebrae": rows}`) and as CSV with the columns `fields`."""
    atomic_write_json(json_path, {**extra, "vertebrae": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buffer.getvalue())


@dataclass(frozen=True)
class LabelNumbering:
    """How the written labelmap numbers vertebrae (`--labels`): VerSe 1-28 or TotalSegmentator v2 ids, with the
    names its header table carries. Tables and statistics keep the VerSe `label` and add the labelmap's value
    (`map_value`), so every row can be found in the file."""

    name: str
    lut: np.ndarray  # VerSe label -> written value
    structures: dict[int, str]  # written value -> structure name

    @classmethod
    def of(cls, labels: str) -> "LabelNumbering":
        fmt = LABEL_FORMATS["verse" if labels == "verse" else "totalseg_v2"]
        return cls(fmt.name, fmt.from_verse_lut() if labels != "verse" else np.arange(256, dtype=np.uint8),
                   fmt.structures)

    def value(self, label: int) -> int:
        return int(self.lut[label])

    def table(self, exported: np.ndarray) -> dict[int, str]:
        return {int(v): self.structures[int(v)] for v in np.unique(exported) if v and int(v) in self.structures}

    def structure(self, label: int) -> str:
        """Name of a VerSe label in this numbering ('L1' or 'vertebrae_L1'); a vertebra TotalSegmentator has no id
        for (L6, T13) is named in its pattern."""
        value = self.value(label)
        if value in self.structures:
            return self.structures[value]
        return f"vertebrae_{VERSE_NAMES[label]}"


def write_vertebra_masks(folder: Path, labelmap_zyx: np.ndarray, scan: LoadedScan, numbering: LabelNumbering) -> None:
    """`folder/<name>.nii.gz`, one uint8 0/1 mask per vertebra of the labelmap (TotalSegmentator's one file per
    structure). The folder is replaced as a whole, so a mask of an earlier run never stays beside this run's."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for label in np.unique(labelmap_zyx[labelmap_zyx > 0]):
            write_labelmap(tmp / f"{numbering.structure(int(label))}.nii.gz", labelmap_zyx == label, scan.reference,
                           scan.nifti_source)


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
    numbering = LabelNumbering.of(options.labels if options.output_type == "nifti" else "verse")
    if options.output_type == "dicom-seg":
        from vertseg.inference.dicom_seg import series_files, write_dicom_seg

        source = scan.job.source
        if source is None or not Path(source.image).is_dir():
            raise ValueError(f"{scan.job.origin}: DICOM-SEG output needs a DICOM series input to reference")
        notes += write_dicom_seg(paths["seg"], labelmap_zyx, series_files(Path(source.image), source.series_uid),
                                 extra.get("model"))
    else:
        from vertseg.inference.colour_tables import write_colour_tables

        exported, notes = export_labels(labelmap_zyx, options.labels)
        write_labelmap(paths["seg"], exported, scan.reference, scan.nifti_source, numbering.table(exported))
        write_colour_tables(paths["slicer_colour_table"], paths["itksnap_labels"], options.labels)
    write_centroids(paths["ctd"], vertebrae, scan.reference)
    write_vertebra_tables(paths["vertebrae_json"], paths["vertebrae_csv"], vertebrae, extra, numbering)
    if options.per_vertebra:
        write_vertebra_masks(paths["per_vertebra"], labelmap_zyx, scan, numbering)
    if statistics is not None:
        about = {"case_id": extra["case_id"], "input": extra["input"],
                 "body_region": f"label voxels within {BODY_RADIUS_FRACTION} x the equivalent-sphere radius of the "
                                "vertebra around its body centroid, HU on the 1 mm store frame",
                 "vertebra_region": VERTEBRA_REGION, "centroid_frame": "RAS mm"}
        rows = [{**row, "map_value": numbering.value(row["label"])} for row in statistics]
        write_rows(paths["statistics_json"], paths["statistics_csv"], rows, STATISTICS_FIELDS,
                   {**about, "labelmap_numbering": numbering.name})
    return notes
