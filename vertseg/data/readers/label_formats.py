"""Masks of other conventions -> VerSe labels, always by structure NAME, never by arithmetic on the values.

A mask says what its values mean in one of three ways, tried in this order:
1. a label table in its own NIfTI header (the XML extension TotalSegmentator v2 writes with `--ml`);
2. a folder of per-structure binary files (`vertebrae_L1.nii.gz`, `sacrum.nii.gz`, ...: TotalSegmentator without
   `--ml`, and its dataset release);
3. the `label_format` of its case (`--label-format`, or the dataset layout: VerSe, CTSpine1K).
`totalsegmentator` without a version is accepted only when the file itself tells v1 from v2 (a header table, or an
id that only v2 has); otherwise the mask is refused, because v1 T8 and v2 L5 share one value.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from vertseg.data.errors import CaseError
from vertseg.data.readers.files import nifti_stem
from vertseg.labels import (
    LABEL_FORMAT_CHOICES,
    LABEL_FORMATS,
    TOTALSEG_ANY,
    TOTALSEG_V1_CLASSES,
    LabelFormat,
    names_to_verse_lut,
    verse_label_of,
)


def header_label_table(path: Path) -> dict[int, str] | None:
    """{value: structure name} from a NIfTI header label-table extension (CaretExtension XML); None without one."""
    if not Path(path).name.lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        extensions = nib.load(str(path)).header.extensions
    except (OSError, ValueError, EOFError):
        return None
    for extension in extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and b"<LabelTable>" in content:
            try:
                root = ElementTree.fromstring(content.decode("utf-8", "replace").strip().rstrip("\x00").strip())
            except ElementTree.ParseError as error:
                raise CaseError(path, f"unreadable label table in the NIfTI header ({error})") from None
            table = {int(e.get("Key")): (e.text or "").strip() for e in root.iter("Label") if e.get("Key") is not None}
            return table or None
    return None


def label_table_extension(table: dict[int, str]) -> bytes:
    """The CaretExtension XML label table TotalSegmentator v2 writes (and `header_label_table` reads) for
    {value: structure name}, as the content of a NIfTI header extension (code 0)."""
    from xml.sax.saxutils import escape

    rows = "".join(f'<Label Key="{value}" Red="1" Green="1" Blue="1" Alpha="1">{escape(name)}</Label>'
                   for value, name in sorted(table.items()))
    return ('<?xml version="1.0" encoding="UTF-8"?><CaretExtension><VolumeInformation Index="0"><LabelTable>'
            f"{rows}</LabelTable><VolumeType>Label</VolumeType></VolumeInformation></CaretExtension>").encode()


def resolve_format(path: Path, label_format: str, values: np.ndarray) -> LabelFormat:
    """The table to read `values` with; CaseError when the values cannot belong to it or the version is unknown."""
    if label_format not in LABEL_FORMAT_CHOICES:
        raise CaseError(path, f"unknown label format {label_format!r} (known: {', '.join(LABEL_FORMAT_CHOICES)})")
    high = int(values.max()) if values.size else 0
    if label_format == TOTALSEG_ANY:
        if high > TOTALSEG_V1_CLASSES:
            return LABEL_FORMATS["totalseg_v2"]
        raise CaseError(
            path,
            "TotalSegmentator v1 and v2 number vertebrae differently (v1 27 = T8, v2 27 = L5) and this mask has no "
            f"label table in its header nor an id above {TOTALSEG_V1_CLASSES}: name the version with "
            "--label-format totalseg_v1 or totalseg_v2",
        )
    fmt = LABEL_FORMATS[label_format]
    if high > fmt.largest and not (fmt.open_ended and high < 256):
        hint = ""
        if label_format == "verse":
            hint = " (a TotalSegmentator mask? pass --label-format totalseg_v1 or totalseg_v2)"
        ints = np.unique(values[values > fmt.largest]).astype(np.int64)
        raise CaseError(path, f"label values {ints[:10].tolist()} are outside the {label_format} table (0..{fmt.largest}){hint}")
    return fmt


def convert_mask_values(path: Path, values: np.ndarray, label_format: str) -> np.ndarray:
    """Raw integer mask values (any shape) -> VerSe labels (uint8), by the header table or the format's names."""
    if values.size and values.min() < 0:
        raise CaseError(path, f"negative label values {np.unique(values[values < 0])[:10].astype(np.int64).tolist()}")
    table = header_label_table(path)
    if table is not None:
        lut = names_to_verse_lut(table)
        if not lut.any():
            raise CaseError(path, "the label table in the NIfTI header names no vertebra")
        return lut[np.clip(values, 0, 255).astype(np.uint8)] * (values <= 255)
    fmt = resolve_format(path, label_format, values)
    return fmt.to_verse(values.astype(np.uint8))


def structure_files(folder: Path) -> dict[int, Path]:
    """VerSe label -> per-structure binary file in `folder` (`vertebrae_T8.nii.gz`, `sacrum.nii.gz`, ...)."""
    found: dict[int, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.name.lower().endswith((".nii", ".nii.gz")):
            continue
        label = verse_label_of(nifti_stem(path))
        is_spine_name = nifti_stem(path).lower().startswith(("vertebrae_", "vertebra_", "sacrum", "coccyx"))
        if label is None or not is_spine_name:
            continue
        if label in found:  # TotalSegmentator v2 writes both sacrum and vertebrae_S1
            continue
        found[label] = path
    return found


def read_structure_folder(folder: Path, read_image, same_grid) -> "object":
    """Combine per-structure binary masks into one VerSe labelmap (SimpleITK image); overlaps are an error."""
    import SimpleITK as sitk

    files = structure_files(folder)
    if not files:
        raise CaseError(folder, "no vertebrae_*.nii.gz / sacrum.nii.gz files in this folder")
    combined = None
    first = None
    for label, path in sorted(files.items()):
        image = read_image(path)
        if first is None:
            first, combined = image, np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
        else:
            difference = same_grid(first, image)
            if difference is not None:
                raise CaseError(path, f"does not match {files[min(files)]}: {difference}")
        values = sitk.GetArrayViewFromImage(image)
        if not np.isin(values, (0, 1)).all():
            raise CaseError(path, "a per-structure mask must be binary (0/1)")
        inside = values > 0
        clash = inside & (combined > 0)
        if clash.any():
            raise CaseError(path, f"{int(clash.sum())} voxels also belong to another structure file")
        combined[inside] = label
    out = sitk.GetImageFromArray(combined)
    out.CopyInformation(first)
    return out
