"""Vertebra label conventions: the VerSe table, regions, reporting protocols and label converters.

Everything in vertseg speaks VerSe labels on disk (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6,
26 sacrum, 27 coccyx, 28 T13). Networks speak *class indices* 0..K (0 = background) of a
protocol; `Protocol` converts in both directions so no other module hard-codes the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

VERSE_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 6)},
    25: "L6",
    26: "S",
    27: "Co",
    28: "T13",
}
NAME_TO_VERSE: dict[str, int] = {name: label for label, name in VERSE_NAMES.items()}
MAX_VERSE_LABEL = 28
L6, SACRUM, COCCYX, T13 = 25, 26, 27, 28

REGIONS: dict[str, tuple[int, ...]] = {
    "cervical": tuple(range(1, 8)),
    "thoracic": tuple(range(8, 20)) + (T13,),
    "lumbar": tuple(range(20, 25)) + (L6,),
}


def region_of(verse_label: int) -> str | None:
    """Anatomical region of a VerSe label (transitional vertebrae belong to the region they extend)."""
    for region, labels in REGIONS.items():
        if verse_label in labels:
            return region
    return None


def anatomical_rank(verse_label: int) -> float:
    """Cranio-caudal position of a label: T13 sits between T12 and L1, L6 between L5 and the sacrum."""
    if verse_label == T13:
        return 19.5
    return float(verse_label)


class TransitionalPolicy(str, Enum):
    """What to do with L6 and T13 when converting ground truth to a protocol's classes.

    `keep`: own classes (extended protocol only). `merge`: L6 -> L5 and T13 -> T12, the count stays
    anatomical for the C1-L5 report. `ignore`: the voxels become background (excluded from training).
    """

    keep = "keep"
    merge = "merge"
    ignore = "ignore"


@dataclass(frozen=True)
class Protocol:
    """A set of identification classes. Class 0 is background; class k >= 1 maps to `verse_labels[k-1]`."""

    name: str
    verse_labels: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """Vertebra classes K, without background."""
        return len(self.verse_labels)

    def class_of(self, verse_label: int) -> int:
        return self.verse_labels.index(verse_label) + 1

    def verse_of(self, class_index: int) -> int:
        return self.verse_labels[class_index - 1]

    def class_lut(self, policy: TransitionalPolicy = TransitionalPolicy.merge) -> np.ndarray:
        """Lookup table VerSe label (0..255) -> class index; labels outside the protocol map to 0."""
        lut = np.zeros(256, dtype=np.uint8)
        for k, label in enumerate(self.verse_labels, start=1):
            lut[label] = k
        if policy is TransitionalPolicy.merge:
            if L6 not in self.verse_labels and 24 in self.verse_labels:
                lut[L6] = self.class_of(24)
            if T13 not in self.verse_labels and 19 in self.verse_labels:
                lut[T13] = self.class_of(19)
        return lut

    def verse_lut(self) -> np.ndarray:
        """Lookup table class index -> VerSe label."""
        return np.array((0,) + self.verse_labels, dtype=np.uint8)


C1_L5 = Protocol("c1_l5", tuple(range(1, 25)))
EXTENDED = Protocol("extended", tuple(range(1, 20)) + (T13,) + tuple(range(20, 26)))
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (C1_L5, EXTENDED)}


def apply_policy(verse_labelmap: np.ndarray, protocol: Protocol, policy: TransitionalPolicy) -> np.ndarray:
    """Map a VerSe labelmap onto the labels a protocol can report (still VerSe labels, uint8).

    Sacrum and coccyx are not vertebra targets and always become 0.
    """
    to_verse = protocol.verse_lut()[protocol.class_lut(policy)].astype(np.uint8)  # one table: one pass over the volume
    return to_verse[verse_labelmap.astype(np.uint8, copy=False)]


# Spine rows of TotalSegmentator's multilabel `total` task, copied from wasserth/TotalSegmentator,
# totalsegmentator/map_to_binary.py: `class_map["total_v1"]` (releases 1.x, 104 classes) and `class_map["total"]`
# (releases 2.x, 117 classes). The two versions number the same vertebra differently (v1 27 = T8, v2 27 = L5), so a
# mask is only ever converted through these names. Other ids are organs, muscles, vessels and ribs: not read.
TOTALSEG_V1_SPINE: dict[int, str] = {
    18: "vertebrae_L5", 19: "vertebrae_L4", 20: "vertebrae_L3", 21: "vertebrae_L2", 22: "vertebrae_L1",
    23: "vertebrae_T12", 24: "vertebrae_T11", 25: "vertebrae_T10", 26: "vertebrae_T9", 27: "vertebrae_T8",
    28: "vertebrae_T7", 29: "vertebrae_T6", 30: "vertebrae_T5", 31: "vertebrae_T4", 32: "vertebrae_T3",
    33: "vertebrae_T2", 34: "vertebrae_T1", 35: "vertebrae_C7", 36: "vertebrae_C6", 37: "vertebrae_C5",
    38: "vertebrae_C4", 39: "vertebrae_C3", 40: "vertebrae_C2", 41: "vertebrae_C1", 92: "sacrum",
}
TOTALSEG_V2_SPINE: dict[int, str] = {
    25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3", 30: "vertebrae_L2",
    31: "vertebrae_L1", 32: "vertebrae_T12", 33: "vertebrae_T11", 34: "vertebrae_T10", 35: "vertebrae_T9",
    36: "vertebrae_T8", 37: "vertebrae_T7", 38: "vertebrae_T6", 39: "vertebrae_T5", 40: "vertebrae_T4",
    41: "vertebrae_T3", 42: "vertebrae_T2", 43: "vertebrae_T1", 44: "vertebrae_C7", 45: "vertebrae_C6",
    46: "vertebrae_C5", 47: "vertebrae_C4", 48: "vertebrae_C3", 49: "vertebrae_C2", 50: "vertebrae_C1",
}
TOTALSEG_V1_CLASSES, TOTALSEG_V2_CLASSES = 104, 117
# CTSpine1K (MIRACLE-Center/CTSpine1K): 1-24 are C1-L5 as in VerSe, 25 is L6.
CTSPINE1K_NAMES: dict[int, str] = {**{i: VERSE_NAMES[i] for i in range(1, 25)}, 25: "L6"}

_STRUCTURE_ALIASES = {"S1": SACRUM, "SACRUM": SACRUM, "COCCYX": COCCYX}


def verse_label_of(structure: str) -> int | None:
    """VerSe label of a structure name ('L1', 'vertebrae_L1', 'sacrum', 'vertebrae_S1'); None when not spine."""
    name = structure.strip()
    for prefix in ("vertebrae_", "vertebra_"):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    upper = name.upper()
    if upper in _STRUCTURE_ALIASES:
        return _STRUCTURE_ALIASES[upper]
    return NAME_TO_VERSE.get(upper if upper != "CO" else "Co")


VERTEBRA_LABELS = frozenset(label for labels in REGIONS.values() for label in labels)  # what predict can label


def vertebra_labels(names: list[str]) -> tuple[int, ...]:
    """VerSe labels of vertebra names ('T12', 'L1', or TotalSegmentator's 'vertebrae_L1'; commas or blanks
    separate several), in anatomical order; ValueError naming the first unknown one (sacrum and coccyx too: no
    model labels them)."""
    labels = set()
    for name in (part for text in names for part in text.replace(",", " ").split()):
        label = verse_label_of(name)
        if label not in VERTEBRA_LABELS:
            raise ValueError(f"unknown vertebra {name!r}: give C1-C7, T1-T13, L1-L6, or TotalSegmentator names "
                             "such as vertebrae_L1")
        labels.add(label)
    if not labels:
        raise ValueError("no vertebra named: give names such as T12,L1,L2")
    return tuple(sorted(labels, key=anatomical_rank))


@dataclass(frozen=True)
class LabelFormat:
    """A mask convention: raw value -> structure name for its spine rows; `largest` bounds the whole table."""

    name: str
    largest: int
    structures: dict[int, str]
    open_ended: bool = False  # later releases append structures after `largest` (never vertebrae): read as background

    def to_verse_lut(self) -> np.ndarray:
        """Raw value (0..255) -> VerSe label, looked up by structure name; non-spine values map to 0."""
        return names_to_verse_lut(self.structures)

    def to_verse(self, labelmap: np.ndarray) -> np.ndarray:
        return self.to_verse_lut()[labelmap.astype(np.uint8)]

    def from_verse_lut(self) -> np.ndarray:
        """VerSe label (0..255) -> this format's value, by name (0 where it has no row)."""
        lut = np.zeros(256, dtype=np.uint8)
        for raw in sorted(self.structures):  # the first row of a name wins: v2 sacrum (25) over vertebrae_S1 (26)
            label = verse_label_of(self.structures[raw])
            if label is not None and not lut[label]:
                lut[label] = raw
        return lut

    def from_verse(self, verse_labelmap: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """VerSe labelmap -> this format (by name); also the VerSe labels it has no row for (written as 0)."""
        lut = self.from_verse_lut()
        present = np.unique(verse_labelmap)
        dropped = [int(v) for v in present if v and not lut[v]]
        return lut[verse_labelmap.astype(np.uint8)], dropped


def names_to_verse_lut(structures: dict[int, str]) -> np.ndarray:
    """Lookup table raw value -> VerSe label for any {value: structure name} table (NIfTI header tables too)."""
    lut = np.zeros(256, dtype=np.uint8)
    for raw, structure in structures.items():
        label = verse_label_of(structure)
        if label is not None and 0 < int(raw) < 256:
            lut[int(raw)] = label
    return lut


LABEL_FORMATS: dict[str, LabelFormat] = {
    fmt.name: fmt
    for fmt in (
        LabelFormat("verse", MAX_VERSE_LABEL, dict(VERSE_NAMES)),
        LabelFormat("ctspine1k", 25, CTSPINE1K_NAMES),
        LabelFormat("totalseg_v1", TOTALSEG_V1_CLASSES, TOTALSEG_V1_SPINE),
        # v2 releases after 2.0 append classes (costal cartilages, ...) above 117; the spine rows never moved
        LabelFormat("totalseg_v2", TOTALSEG_V2_CLASSES, TOTALSEG_V2_SPINE, open_ended=True),
    )
}
# Accepted on the command line: the formats above, and `totalsegmentator` = "TotalSegmentator, version from the
# file" (a label table in the NIfTI header, or ids only v2 has); refused when the file cannot tell.
TOTALSEG_ANY = "totalsegmentator"
LABEL_FORMAT_CHOICES = (*LABEL_FORMATS, TOTALSEG_ANY)
