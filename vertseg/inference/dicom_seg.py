"""DICOM-SEG output (highdicom) referencing the source CT series, one segment per predicted vertebra.

Segments carry the vertebra's name as label, its SNOMED CT code (C1..L5 vertebra, sacrum, coccyx; plain
"vertebra" for L6/T13) and the colour of the NIfTI colour tables, so PACS viewers and 3D Slicer show anatomy, not
numbers; the algorithm identification names vertseg, its version and the weights (checkpoint or ONNX file name
and sha256 prefix, as `Predictor.weights`), and the SEG's manufacturer model name names the weights file. Frames
follow the source slices: the labelmap must lie on the series' own grid, slice k = the k-th file of `series_files`
(SimpleITK's order).

Anonymised series often have emptied Study/Series/SOP Instance UIDs. SOP Instance and Class UIDs are then taken from
each file's meta header; an empty Study or Series UID is replaced by one derived from the Frame of Reference, and
the case record says so (the SEG then only matches this copy of the series).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vertseg.inference.colour_tables import verse_colour
from vertseg.io import atomic_path
from vertseg.labels import VERSE_NAMES


def series_files(folder: Path, series_uid: str | None) -> list[Path]:
    """Files of one DICOM series in the slice order SimpleITK reads them (slice k of the volume = file k)."""
    import SimpleITK as sitk

    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    uid = series_uid if series_uid is not None else (uids[0] if uids else None)
    if uid is None or uid not in uids:
        raise ValueError(f"{folder}: no DICOM series {uid!r} to reference")
    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]


def _read_sources(files: list[Path]) -> tuple[list, list[str]]:
    import pydicom
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    notes: list[str] = []
    for source, path in zip(sources, files):
        meta = getattr(source, "file_meta", None)
        for attribute, meta_attribute in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                                          ("SOPClassUID", "MediaStorageSOPClassUID")):
            if not str(source.get(attribute, "")).strip():
                if meta is None or not str(meta.get(meta_attribute, "")).strip():
                    raise ValueError(f"{path}: no {attribute}; a DICOM-SEG cannot reference this slice")
                setattr(source, attribute, meta.get(meta_attribute))
    frame_of_reference = str(sources[0].get("FrameOfReferenceUID", "")).strip()
    if not frame_of_reference:
        raise ValueError(f"{files[0]}: no FrameOfReferenceUID; a DICOM-SEG needs one")
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not str(sources[0].get(attribute, "")).strip():
            uid = generate_uid(entropy_srcs=[attribute, frame_of_reference])
            for source in sources:
                setattr(source, attribute, uid)
            notes.append(f"source series has no {attribute} (anonymised?): used {uid}, derived from its frame of reference")
    return sources, notes


def _property_type(verse_label: int):
    from pydicom.sr.codedict import codes

    name = VERSE_NAMES[verse_label]
    if verse_label == 26:
        return codes.SCT.Sacrum
    if verse_label == 27:
        return codes.SCT.Coccyx
    return getattr(codes.SCT, f"{name}Vertebra", codes.SCT.Vertebra)


def _model_name(weights: dict[str, str] | None) -> str:
    """The SEG's Manufacturer's Model Name (at most 64 characters): vertseg and the weights file it ran."""
    file = (weights or {}).get("checkpoint") or (weights or {}).get("onnx")
    return f"vertseg {Path(file).stem}"[:64] if file else "vertseg vertebra segmentation"


def build_dicom_seg(labels_kji: np.ndarray, files: list[Path], weights: dict[str, str] | None = None):
    """A highdicom Segmentation of a VerSe labelmap on the grid of the series `files`; (dataset, notes).
    `weights` (`Predictor.weights`) become the algorithm's parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from vertseg import __version__

    sources, notes = _read_sources(files)
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if tuple(labels_kji.shape) != expected:
        raise ValueError(f"labelmap {labels_kji.shape} does not lie on the series grid {expected} (slices, rows, cols)")
    present = [int(v) for v in np.unique(labels_kji) if v]
    segment_of = np.zeros(256, dtype=np.uint8)
    segment_of[present] = np.arange(1, len(present) + 1)
    algorithm = hd.AlgorithmIdentificationSequence(name="vertseg", version=__version__,
                                                   family=codes.DCM.ArtificialIntelligence, source="vertseg",
                                                   parameters=dict(weights) if weights else None)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=VERSE_NAMES[label],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_property_type(label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*verse_colour(label)),  # the NIfTI colour tables' colours
        )
        for n, label in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_of[labels_kji],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="vertseg",
        manufacturer_model_name=_model_name(weights),
        software_versions=__version__,
        device_serial_number="0",
        series_description="vertseg vertebrae",
    )
    return seg, notes


def write_dicom_seg(path: Path, labels_kji: np.ndarray, files: list[Path],
                    weights: dict[str, str] | None = None) -> list[str]:
    """Write the DICOM-SEG atomically; returns notes for the case record (nothing is written without vertebrae)."""
    if not labels_kji.any():
        return ["no vertebra predicted: no DICOM-SEG written"]
    seg, notes = build_dicom_seg(labels_kji, files, weights)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return notes
