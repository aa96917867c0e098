"""Sequence-decoder benchmark on label sequences built from the real VerSe 2019 centroids.

Each simulated case takes the real vertebral-body centroids (mm) of one VerSe 2019 training scan, cuts a random
field of view, and gives every vertebra noisy class probabilities from a level-confusion model: logits
-beta |c - a| + sigma * noise around the vertebra's apparent class a (neighbouring levels are the usual confusion).
Scenarios add the failure modes of section 1: heavy noise with gross errors, a duplicated label, a vertebra the
segmentation missed, and a sixth lumbar vertebra (which a C1-L5 model sees as L5).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from vertseg.labels import C1_L5, L6
from vertseg.postprocess.sequence import decode_dp, decode_paper

CSV_LEVELS = tuple(range(1, 25)) + (L6,)  # landmark columns: C1..L5, L6 (x, y, z mm each)
SCENARIOS = ("partial_fov", "noisy", "duplicate", "missing", "l6")
DECODERS = ("argmax", "paper", "dp", "dp_gaps", "dp_l6", "dp_gaps_l6")


def load_landmarks(path: Path | str | None = None) -> dict[str, np.ndarray]:
    """Scan id -> (25, 3) centroids in mm (rows C1..L5, L6; NaN where absent)."""
    if path is None:
        text = resources.files("vertseg.resources").joinpath("verse19_landmarks.csv").read_text()
    else:
        text = Path(path).read_text()
    scans = {}
    for number, line in enumerate(text.strip().splitlines(), start=1):
        fields = line.strip().split(",")
        if len(fields) != 1 + 3 * len(CSV_LEVELS):
            expected = 1 + 3 * len(CSV_LEVELS)
            raise ValueError(f"{path or 'verse19_landmarks.csv'} line {number}: expected {expected} fields, got {len(fields)}")
        scans[fields[0]] = np.array([float(v) for v in fields[1:]]).reshape(len(CSV_LEVELS), 3)
    return scans


def longest_run(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VerSe labels and centroids of the longest run of consecutive present levels."""
    present = ~np.isnan(points[:, 0])
    best, start = (0, 0), None
    for i, flag in enumerate(np.r_[present, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            best = max(best, (i - start, start), key=lambda run: run[0])
            start = None
    length, first = best
    return np.asarray(CSV_LEVELS[first:first + length]), points[first:first + length]


@dataclass(frozen=True)
class SimulatedCase:
    truth: np.ndarray  # VerSe labels, superior first
    probs: np.ndarray  # (N, 24) C1-L5 class probabilities
    centroids_mm: np.ndarray  # (N, 3)


def confusion_probs(apparent: np.ndarray, rng: np.random.Generator, beta: float, sigma: float) -> np.ndarray:
    """Softmax of -beta |c - a| + sigma * N(0, 1) over the 24 classes, for apparent classes a (1..24)."""
    classes = np.arange(1, 25)
    logits = -beta * np.abs(classes[None, :] - apparent[:, None]) + sigma * rng.standard_normal((apparent.size, 24))
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def simulate(points: np.ndarray, scenario: str, rng: np.random.Generator) -> SimulatedCase | None:
    """One simulated case for a scan, or None when the scan cannot host the scenario."""
    labels, xyz = longest_run(points)
    if scenario != "l6":
        keep = labels != L6
        labels, xyz = labels[keep], xyz[keep]
    else:
        if 24 not in labels:
            return None
        if L6 not in labels:  # a sixth lumbar vertebra one step below L5
            labels, xyz = np.r_[labels, L6], np.vstack([xyz, xyz[-1] + (xyz[-1] - xyz[-2])])
    minimum = 5 if scenario in ("missing", "l6") else 3
    if labels.size < minimum:
        return None
    length = int(rng.integers(minimum, labels.size + 1))
    start = labels.size - length if scenario == "l6" else int(rng.integers(0, labels.size - length + 1))
    labels, xyz = labels[start:start + length], xyz[start:start + length]
    apparent = np.where(labels == L6, 24, labels).astype(np.int64)
    sigma = 2.0 if scenario == "noisy" else 1.0
    if scenario == "noisy":
        gross = rng.random(apparent.size) < 0.15
        apparent = np.clip(apparent + gross * rng.choice([-3, -2, -1, 1, 2, 3], apparent.size), 1, 24)
    probs = confusion_probs(apparent, rng, beta=2.5, sigma=sigma)
    if scenario == "duplicate":
        i = int(rng.integers(0, labels.size - 1))
        j = i + 1 if rng.random() < 0.5 else i
        other = i if j == i + 1 else i + 1
        probs[j] = confusion_probs(np.array([apparent[other]]), rng, beta=2.5, sigma=0.5)[0]
    if scenario == "missing":
        drop = int(rng.integers(1, labels.size - 1))
        keep = np.arange(labels.size) != drop
        labels, xyz, probs = labels[keep], xyz[keep], probs[keep]
    return SimulatedCase(labels, probs, xyz)


def run_decoder(name: str, case: SimulatedCase) -> np.ndarray:
    if name == "argmax":
        return np.asarray(C1_L5.verse_labels)[np.argmax(case.probs, axis=1)]
    if name == "paper":
        return decode_paper(case.probs, C1_L5).labels
    gaps = case.centroids_mm if "gaps" in name else None
    return decode_dp(case.probs, C1_L5, allow_l6=name.endswith("l6"), centroids_mm=gaps).labels


def benchmark(repeats: int = 10, seed: int = 0, landmarks: dict[str, np.ndarray] | None = None
              ) -> dict[str, dict[str, tuple[float, float, int]]]:
    """scenario -> decoder -> (vertebra accuracy, case accuracy (all levels right), number of cases)."""
    rng = np.random.default_rng(seed)
    scans = landmarks if landmarks is not None else load_landmarks()
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for scenario in SCENARIOS:
        cases = [c for _ in range(repeats) for points in scans.values() if (c := simulate(points, scenario, rng)) is not None]
        table[scenario] = {}
        for decoder in DECODERS:
            right = [run_decoder(decoder, c) == c.truth for c in cases]
            vertebra = float(np.mean(np.concatenate(right))) if right else float("nan")
            whole = float(np.mean([r.all() for r in right])) if right else float("nan")
            table[scenario][decoder] = (vertebra, whole, len(cases))
    return table
