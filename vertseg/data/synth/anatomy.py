"""A sampled spine: which levels exist, where each vertebral body sits, its local frame and its dimensions.

World frame is RAS mm (+x right, +y anterior, +z superior). Each vertebra has an orthonormal frame
(u lateral towards +x, v anterior, w superior along the spine). Level-to-level distances are drawn from the
VerSe 2019 statistics; the sagittal profile bends per level (cervical lordosis, thoracic kyphosis, lumbar
lordosis, sacral kyphosis) with per-case amplitudes, plus a mild lateral (scoliotic) wave.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vertseg.data.synth.landmarks import verse19_distance_stats
from vertseg.labels import L6, T13

# Vertebral body half-width (lateral) and half-depth (AP), mm, for C1..L5 (C1 has no body: ring radii instead).
_BODY_A = [0, 8, 8.5, 9, 9.5, 10.5, 11.5]  # C1-C7
_BODY_A += [13, 13.5, 13.5, 13.5, 14, 14.5, 15, 15.5, 16.5, 17.5, 19, 20]  # T1-T12
_BODY_A += [21, 22, 23, 24, 25]  # L1-L5
_BODY_B = [0, 7.5, 7.5, 7.8, 8, 8, 8.5]
_BODY_B += [9, 9.5, 10.5, 11.5, 12, 12.5, 13, 13.5, 14, 14.5, 15, 15.5]
_BODY_B += [16, 16.5, 17, 17, 17]
# Intervertebral disc height below each level (mm).
_DISC = {"cervical": 4.5, "thoracic": 5.5, "lumbar": 9.5}
# Sagittal bend at each level (degrees per level, + = kyphotic): lordosis C2-C7, kyphosis T2-T12, lordosis L1-L5.
_BEND = {"cervical": -7.0, "thoracic": 4.0, "lumbar": -9.0}
SACRAL_SEGMENTS = 5
# Fraction of the posterior-to-anterior thoracic arc that each rib T1..T12 covers (floating ribs are short).
RIB_ARC = [0.45, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.65, 0.6, 0.55, 0.35, 0.25]


@dataclass(frozen=True)
class Vertebra:
    label: int  # VerSe label; 0 for sacral segments (bone, not a target)
    kind: str  # "c1", "c2", "cervical", "thoracic", "lumbar", "sacral"
    centre: np.ndarray  # vertebral-body centroid, world RAS mm (C1: centre of the ring's lateral masses)
    frame: np.ndarray  # (3, 3) columns u, v, w
    a: float  # body half-width
    b: float  # body half-depth
    h: float  # body height
    canal: tuple[float, float]  # canal half-axes (lateral, AP)
    arch: float  # arch thickness
    spinous: tuple[float, float]  # length, downward angle (deg)
    transverse: float  # transverse process length
    rib_arc: float = 0.0  # > 0: ribs attach here, covering this fraction of the arc
    compression: float = 0.0  # wedge fracture: relative anterior height loss


@dataclass
class Spine:
    vertebrae: list[Vertebra]
    scale: float
    thorax: tuple[float, float]  # trunk half-axes (lateral, AP) at the thorax, mm
    fat: float  # subcutaneous fat thickness, mm
    bone_hu: tuple[float, float]  # cortical, cancellous
    variants: dict[str, bool] = field(default_factory=dict)

    @property
    def labeled(self) -> list[Vertebra]:
        return [v for v in self.vertebrae if v.label]

    def centres(self) -> dict[int, np.ndarray]:
        """Vertebral-body centroids (world RAS mm) of the labeled vertebrae."""
        return {v.label: v.centre for v in self.labeled}


def level_sequence(l6: bool = False, t13: bool = False) -> list[int]:
    """VerSe labels of the vertebrae from C1 down to the last lumbar level."""
    labels = list(range(1, 20)) + ([T13] if t13 else []) + list(range(20, 25)) + ([L6] if l6 else [])
    return labels


def region(label: int) -> str:
    if label <= 7:
        return "cervical"
    if label <= 19 or label == T13:
        return "thoracic"
    return "lumbar"


def _table_index(label: int) -> int:
    """Row of the per-level tables: transitional vertebrae copy their neighbour (T13 ~ T12, L6 ~ L5)."""
    return {T13: 18, L6: 23}.get(label, label - 1)


def _gap_stats(upper: int, lower: int) -> tuple[float, float]:
    """Mean/std distance between two adjacent levels from VerSe 2019, mapping transitional pairs onto neighbours."""
    mean, std, count = verse19_distance_stats()
    if upper == T13 or lower == T13:  # T12-T13 and T13-L1 resemble T12-L1
        index = 18
    elif upper == L6:  # L6 -> sacrum resembles L5 -> sacrum
        index = 22
    elif lower == L6:
        index = 23 if count[23] >= 3 else 22
    else:
        index = upper - 1
    return float(mean[index]), float(std[index])


def _frame(tangent: np.ndarray, roll: float) -> np.ndarray:
    """Orthonormal frame: w along the (superior) tangent, u towards +x, v = w x u (anterior); then axial roll."""
    w = tangent / np.linalg.norm(tangent)
    u = np.array([1.0, 0.0, 0.0]) - w[0] * w
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * u + s * v, -s * u + c * v, w], axis=1)


def sample_spine(
    rng: np.random.Generator, *, l6: bool = False, t13: bool = False, fracture: bool = False, scale: float | None = None
) -> Spine:
    """Draw one spine: distances from the real statistics, per-case curvature, sizes and bone density."""
    labels = level_sequence(l6=l6, t13=t13)
    scale = float(scale if scale is not None else np.clip(rng.normal(1.0, 0.07), 0.8, 1.2))
    gaps = []
    for upper, lower in zip(labels[:-1], labels[1:]):
        mean, std = _gap_stats(upper, lower)
        gaps.append(max(mean * scale + rng.normal(0.0, 0.5 * std), 0.6 * mean))
    l5_mean, l5_std = _gap_stats(23, 24)  # last lumbar -> sacrum resembles L4-L5
    sacral_gap = max(0.9 * l5_mean * scale + rng.normal(0.0, 0.5 * l5_std), 20.0)
    gaps.append(sacral_gap)
    gaps += [sacral_gap * 0.8**k for k in range(1, SACRAL_SEGMENTS)]

    amplitude = {r: rng.uniform(0.5, 1.4) for r in _BEND}
    kinds = [region(label) for label in labels] + ["sacral"] * SACRAL_SEGMENTS
    bends = np.array(
        [_BEND.get(kind, 15.0) * amplitude.get(kind, 1.0) + rng.normal(0.0, 1.5) for kind in kinds], dtype=np.float64
    )
    bends[:2] = 0.0  # C1/C2 follow the dens
    sagittal = np.cumsum(np.radians(bends[: len(gaps)]))
    lengths = np.asarray(gaps)
    n_spine = len(labels)
    sagittal -= np.average(sagittal[:n_spine - 1], weights=lengths[:n_spine - 1])  # whole spine roughly upright
    sagittal += np.radians(rng.normal(0.0, 3.0))
    wave = rng.normal(0.0, 4.0) * np.sin(np.linspace(0.0, 2.0 * np.pi, len(gaps)) + rng.uniform(0, 2 * np.pi))
    lateral = np.radians(wave + rng.normal(0.0, 1.0, len(gaps)))
    steps = np.stack([np.sin(lateral), np.sin(sagittal), -np.cos(sagittal) * np.cos(lateral)], axis=1)
    steps /= np.linalg.norm(steps, axis=1, keepdims=True)
    centres = np.vstack([np.zeros(3), np.cumsum(steps * lengths[:, None], axis=0)])
    centres -= centres[:n_spine].mean(axis=0)

    fractured = int(rng.integers(8, n_spine)) if fracture else -1
    cortical, cancellous = rng.uniform(700, 1100), rng.uniform(120, 280)
    vertebrae = []
    for i, (label, kind) in enumerate(zip(labels + [0] * SACRAL_SEGMENTS, kinds)):
        tangent = centres[max(i - 1, 0)] - centres[min(i + 1, len(centres) - 1)]
        frame = _frame(tangent, np.radians(rng.normal(0.0, 2.5)))
        if kind == "sacral":
            k = i - n_spine
            vertebrae.append(
                Vertebra(0, "sacral", centres[i], frame, 24 * scale * 0.8**k, 17 * scale * 0.8**k,
                         0.85 * gaps[i - 1] * 0.85, (7 * 0.85**k, 5 * 0.85**k), 4.0, (12 * 0.8**k, 10.0), 0.0)
            )
            continue
        row = _table_index(label)
        below = gaps[i] if i < len(gaps) else gaps[-1]
        above = gaps[i - 1] if i > 0 else below
        h = max(0.5 * (above + below) - _DISC[kind], 8.0 * scale)
        a, b = _BODY_A[row] * scale, _BODY_B[row] * scale
        if kind == "cervical":
            canal, arch, spinous, transverse = (12.0, 7.5), 4.0, ((28.0 if label == 7 else 16.0), 20.0), 9.0
        elif kind == "thoracic":
            steep = 55.0 if 11 <= label <= 16 else 35.0
            canal, arch, spinous, transverse = (8.5, 8.0), 5.0, (34.0, steep), 19.0
        else:
            canal, arch, spinous, transverse = (11.0, 9.0), 6.0, (30.0, 5.0), 24.0 if label != 20 else 18.0
        rib = RIB_ARC[label - 8] if 8 <= label <= 19 else (0.2 if label == T13 else 0.0)
        special = "c1" if label == 1 else "c2" if label == 2 else kind
        vertebrae.append(
            Vertebra(label, special, centres[i], frame, a, b, h, tuple(c * scale for c in canal), arch * scale,
                     (spinous[0] * scale, spinous[1]), transverse * scale, rib,
                     rng.uniform(0.25, 0.45) if i == fractured else 0.0)
        )
    thorax = (rng.uniform(130, 170) * scale, rng.uniform(95, 125) * scale)
    return Spine(
        vertebrae=vertebrae, scale=scale, thorax=thorax, fat=float(rng.uniform(6, 28)),
        bone_hu=(float(cortical), float(cancellous)),
        variants={"l6": l6, "t13": t13, "fracture": fracture},
    )

