"""The case records every reader yields and preprocessing consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vertseg.data.case_ids import check_case_id

Split = str  # "training" | "validation" | "test" | "unlabeled" | "" (unknown)


@dataclass(frozen=True)
class CaseSource:
    """Where one scan lives on disk; cheap to build, nothing is read yet.

    `image` is a NIfTI file or a DICOM series folder (None for mask-only samples); `mask` and `centroids` are
    optional. `patient_id` groups scans of one person across datasets (VerSe'19 and '20 share ids).
    `label_format` names the label convention of the mask (`vertseg.labels.LABEL_FORMAT_CHOICES`, or "structures").
    """

    case_id: str
    patient_id: str
    dataset: str
    split: Split
    image: Path | None
    mask: Path | None = None
    centroids: Path | None = None
    label_format: str = "verse"
    series_uid: str | None = None  # DICOM only: which series of the `image` folder ("" = the only, unnamed one)
    allow_irregular: bool = False  # DICOM only: resample uneven slice positions instead of refusing the series

    def __post_init__(self) -> None:
        check_case_id(self.case_id, self.image or self.mask)

    @property
    def labeled(self) -> bool:
        return self.mask is not None


@dataclass
class Case:
    """A loaded scan. Images are SimpleITK images (physical frame LPS, as ITK defines it).

    `centroids_lps` maps VerSe label -> vertebral-body centroid in physical LPS millimetres, from the
    dataset's centroid file (mask centres of mass are computed separately and kept apart).
    """

    source: CaseSource
    image: "object"  # SimpleITK.Image (CT, HU) or None for mask-only samples
    mask: "object | None" = None  # SimpleITK.Image (VerSe labels) or None
    centroids_lps: dict[int, np.ndarray] = field(default_factory=dict)
