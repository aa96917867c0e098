"""Label/colour tables written next to every NIfTI labelmap, so viewers show vertebra names, not numbers.

`<case>_seg.ctbl` is a 3D Slicer colour table (`index name R G B A`, 0-255; load it with the labelmap, or pick it as
the labelmap's colour node) and `<case>_seg_itksnap.txt` an ITK-SNAP label description file (Segmentation > Import
Label Descriptions). Rows follow the numbering actually written (`--labels verse|totalseg`).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

from vertseg.io import atomic_write_text
from vertseg.labels import LABEL_FORMATS, VERSE_NAMES, region_of, verse_label_of

_REGION_HUE = {"cervical": 0.0, "thoracic": 0.28, "lumbar": 0.58}  # red-orange, green, blue-violet
_SEQUENCE_INDEX = {label: n for n, label in enumerate(range(1, 8))} | {label: n for n, label in enumerate(range(8, 20))} \
    | {28: 12} | {label: n for n, label in enumerate(range(20, 26))}


def verse_colour(verse_label: int) -> tuple[int, int, int]:
    """A colour per VerSe label: hue by region, stepping along it, lightness alternating so neighbours differ."""
    region = region_of(verse_label)
    if region is None:  # sacrum, coccyx
        return (230, 200, 150) if verse_label == 26 else (200, 170, 120)
    step = _SEQUENCE_INDEX[verse_label]
    hue = (_REGION_HUE[region] + 0.018 * step) % 1.0
    lightness = 0.42 if step % 2 == 0 else 0.62
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, 0.85)
    return round(red * 255), round(green * 255), round(blue * 255)


def label_rows(labels: str) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, RGB) of every spine label of an output numbering: `verse` or `totalseg` (TotalSegmentator v2)."""
    if labels == "verse":
        return [(label, name, verse_colour(label)) for label, name in sorted(VERSE_NAMES.items())]
    structures = LABEL_FORMATS["totalseg_v2"].structures
    return [(raw, name, verse_colour(verse_label_of(name))) for raw, name in sorted(structures.items())]


def slicer_colour_table(labels: str) -> str:
    rows = label_rows(labels)
    lines = [f"# Color table file vertseg ({labels} labels)", f"# {len(rows) + 1} values", "0 Background 0 0 0 0"]
    lines += [f"{value} {name} {r} {g} {b} 255" for value, name, (r, g, b) in rows]
    return "\n".join(lines) + "\n"


def itksnap_label_description(labels: str) -> str:
    header = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        f"# written by vertseg ({labels} labels)",
        "################################################",
        f"{0:5d} {0:5d} {0:4d} {0:4d} {0.0:8.2f} {0:2d} {0:2d}    \"Clear Label\"",
    ]
    rows = [f"{value:5d} {r:5d} {g:4d} {b:4d} {1.0:8.2f} {1:2d} {1:2d}    \"{name}\""
            for value, name, (r, g, b) in label_rows(labels)]
    return "\n".join(header + rows) + "\n"


def write_colour_tables(slicer_path: Path, itksnap_path: Path, labels: str) -> None:
    atomic_write_text(slicer_path, slicer_colour_table(labels))
    atomic_write_text(itksnap_path, itksnap_label_description(labels))
