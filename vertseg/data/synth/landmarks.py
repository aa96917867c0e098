"""Level-to-level centroid distances measured on the 80 VerSe 2019 training scans (packaged resource)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

N_LANDMARKS = 25  # C1..L5 then L6 (VerSe labels 1..25)


def parse_landmarks(text: str) -> dict[str, np.ndarray]:
    """`id, x0,y0,z0, ..., x24,y24,z24` rows -> {scan id: (25, 3) mm, NaN where absent}."""
    scans = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 1 + 3 * N_LANDMARKS:
            raise ValueError(f"landmarks line {line_no}: expected {1 + 3 * N_LANDMARKS} fields, found {len(fields)}")
        scans[fields[0]] = np.array([float(v) for v in fields[1:]], dtype=np.float64).reshape(N_LANDMARKS, 3)
    return scans


@lru_cache(maxsize=1)
def verse19_landmarks() -> dict[str, np.ndarray]:
    return parse_landmarks(resources.files("vertseg.resources").joinpath("verse19_landmarks.csv").read_text())


def distance_stats(scans: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per adjacent pair k -> k+1 (labels k+1, k+2): mean and std of the distance (mm) and the sample count."""
    points = np.stack(list(scans.values()))
    gaps = np.linalg.norm(points[:, 1:] - points[:, :-1], axis=2)
    counts = np.isfinite(gaps).sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(counts > 0, gaps, 0.0), axis=0)
        std = np.nanstd(np.where(counts > 0, gaps, 0.0), axis=0)
    return mean, std, counts


@lru_cache(maxsize=1)
def verse19_distance_stats() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return distance_stats(verse19_landmarks())
