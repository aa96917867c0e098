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
    lut = protocol.class_lut(policy)
    return protocol.verse_lut()[lut[verse_labelmap.astype(np.uint8)]]


def from_totalsegmentator(labelmap: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 `total` task -> VerSe: ids 27..50 are L5..C1, so VerSe = 51 - id; 26 (S1) -> sacrum."""
    lut = np.zeros(256, dtype=np.uint8)
    ids = np.arange(27, 51)
    lut[ids] = 51 - ids
    lut[25] = SACRUM
    lut[26] = SACRUM
    return lut[labelmap.astype(np.uint8)]


def from_ctspine1k(labelmap: np.ndarray) -> np.ndarray:
    """CTSpine1K -> VerSe: 1-24 are C1-L5 as in VerSe, 25 is L6; anything else is not a vertebra target."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1:26] = np.arange(1, 26)
    return lut[labelmap.astype(np.uint8)]
