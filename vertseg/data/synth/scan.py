"""One synthetic scan: a sampled spine seen through a random field of view, spacing and orientation, with blur and
noise. `make_phantom` is deterministic for its generator state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vertseg.data.synth.acquisition import acquire
from vertseg.data.synth.anatomy import Spine, Vertebra, sample_spine
from vertseg.data.synth.body import Body, sample_body
from vertseg.data.synth.grid import Grid
from vertseg.data.synth.render import render
from vertseg.data.synth.render_body import render_body
from vertseg.data.synth.tissues import sample_tissues

_CODE_VECTORS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
ORIENTATIONS = (
    ("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("L", "A", "S"), ("R", "P", "I"), ("A", "S", "L"),
    ("L", "P", "I"), ("P", "S", "R"),
)


@dataclass(frozen=True)
class SizePreset:
    """In-plane field of view, cranio-caudal coverage (mm), in-plane/slice spacing ranges (mm), voxel cap per axis."""

    fov_mm: tuple[float, float]
    length_mm: tuple[float, float]
    in_plane_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    max_voxels: int
    scene: str = "spine"  # "spine": the spine in a simple trunk; "body": clinical CT anatomy around it


FOV_OVERHANG = 0.3  # the field of view's centre may lie this share of its length beyond C1 or the last lumbar level
SIZES = {
    "small": SizePreset((120.0, 136.0), (170.0, 200.0), (1.9, 2.2), (1.9, 2.6), 96),
    "medium": SizePreset((150.0, 220.0), (220.0, 420.0), (0.8, 1.5), (1.0, 3.0), 192),
    "large": SizePreset((170.0, 350.0), (260.0, 700.0), (0.5, 1.0), (0.5, 3.0), 384),
    # clinical CT: the whole body around the spine (organs, contrast vessels, ribs to the sternum, pelvis, ...),
    # per-case tissue values and scanner protocol (`body`, `tissues`, `acquisition`); see docs/synthetic-ct.md
    "ct": SizePreset((250.0, 500.0), (120.0, 700.0), (0.6, 1.0), (0.6, 5.0), 200, scene="body"),
}
CLINICAL_WHOLE_SECTION = 0.7  # share of clinical phantoms whose field of view is the whole body cross-section


@dataclass
class Phantom:
    hu: np.ndarray  # int16, (i, j, k)
    labels: np.ndarray  # uint8 VerSe labels, every rendered vertebra incl. those cut by the field of view
    affine: np.ndarray  # RAS
    axcodes: tuple[str, str, str]
    centroids_voxel: dict[int, np.ndarray]  # vertebral-body centroids of the visible vertebrae, (i, j, k)
    partial: tuple[int, ...]  # labels whose body is cut by the field of view
    spine: Spine

    def labels_without_partial(self) -> np.ndarray:
        """VerSe-style mask: vertebrae cut by the field of view are not annotated."""
        out = self.labels.copy()
        if self.partial:
            out[np.isin(out, self.partial)] = 0
        return out


def _orientation_matrix(codes: tuple[str, str, str], rng: np.random.Generator, oblique_deg: float) -> np.ndarray:
    axes = np.array([_CODE_VECTORS[c] for c in codes], dtype=np.float64).T  # columns = axis directions
    if oblique_deg <= 0:
        return axes
    angles = np.radians(rng.uniform(-oblique_deg, oblique_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    return rot @ axes


def _coverage(spine: Spine, rng: np.random.Generator, preset: SizePreset) -> tuple[float, float, np.ndarray]:
    """Cranio-caudal length and centre of a field of view, and the spine's (x, y) at that centre.

    The centre is uniform over C1-L5 widened by `FOV_OVERHANG` of its length at both ends, so every level, the
    cervical spine included, is in full view about equally often (neck, chest, abdomen and whole-spine protocols);
    centred on the spine's middle instead, C1 was in view in 15 % of medium scans and T9 in 70 %.
    """
    centres = np.stack([v.centre for v in spine.vertebrae])
    levels_z = [v.centre[2] for v in spine.labeled]
    length = rng.uniform(*preset.length_mm)
    z_mid = rng.uniform(min(levels_z) - FOV_OVERHANG * length, max(levels_z) + FOV_OVERHANG * length)
    level = np.interp(z_mid, centres[::-1, 2], np.arange(len(centres))[::-1])
    spine_xy = np.array([np.interp(level, np.arange(len(centres)), centres[:, k]) for k in (0, 1)])
    return float(length), float(z_mid), spine_xy


def sample_grid(spine: Spine, rng: np.random.Generator, preset: SizePreset, codes: tuple[str, str, str]) -> Grid:
    """A spine-centred field of view over part of the spine (it may start or stop mid-spine) in the given
    orientation (`_coverage` places it along the spine)."""
    length, z_mid, spine_xy = _coverage(spine, rng, preset)
    centre = np.array([spine_xy[0] + rng.normal(0, 8), spine_xy[1] - 20 + rng.normal(0, 8), z_mid])
    return _oriented_grid(centre, rng.uniform(*preset.fov_mm), length, codes, preset, rng)


def sample_clinical_grid(spine: Spine, body: Body, rng: np.random.Generator, preset: SizePreset,
                         codes: tuple[str, str, str]) -> Grid:
    """A clinical field of view: mostly the whole body cross-section (chest, abdomen, neck CT), sometimes a
    spine-centred reconstruction (as many VerSe scans and spine protocols are)."""
    length, z_mid, spine_xy = _coverage(spine, rng, preset)
    if rng.random() < CLINICAL_WHOLE_SECTION:
        rx, ry, back = (float(a[0]) for a in body.trunk.at(np.array([z_mid])))
        centre = np.array([spine_xy[0] + rng.normal(0, 10), spine_xy[1] - back + ry + rng.normal(0, 10), z_mid])
        fov = float(np.clip(2.0 * max(rx, ry) * rng.uniform(1.05, 1.3), *preset.fov_mm))
    else:
        centre = np.array([spine_xy[0] + rng.normal(0, 8), spine_xy[1] - 20 + rng.normal(0, 8), z_mid])
        fov = rng.uniform(100.0, 220.0)
    return _oriented_grid(centre, fov, length, codes, preset, rng)


def _oriented_grid(centre: np.ndarray, fov: float, length: float, codes: tuple[str, str, str], preset: SizePreset,
                   rng: np.random.Generator) -> Grid:
    """The voxel grid of a field of view: axis codes (sometimes oblique), in-plane and slice spacing."""
    sagittal = rng.random() < 0.2  # some scans are acquired sagittally: the thick axis is left-right
    thick_world_axis = 0 if sagittal else 2
    direction = _orientation_matrix(codes, rng, oblique_deg=6.0 if rng.random() < 0.3 else 0.0)
    in_plane = rng.uniform(*preset.in_plane_mm)
    thick = rng.uniform(*preset.slice_mm)
    spacing, shape = np.empty(3), np.empty(3, dtype=int)
    for axis in range(3):
        world_axis = int(np.argmax(np.abs(direction[:, axis])))
        extent = length if world_axis == 2 else fov
        step = thick if world_axis == thick_world_axis else in_plane
        step = max(step, extent / preset.max_voxels)
        spacing[axis], shape[axis] = step, max(int(round(extent / step)), 8)
    matrix = direction * spacing
    origin = centre - matrix @ ((shape - 1) / 2.0)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = matrix, origin
    return Grid(tuple(int(n) for n in shape), affine)


def body_in_view(vertebra: Vertebra, grid: Grid) -> bool:
    """Whether both end plates of the vertebral body lie inside the grid (VerSe annotates only such vertebrae)."""
    half = vertebra.h / 2 * vertebra.frame[:, 2]
    ends = grid.to_index(np.stack([vertebra.centre + half, vertebra.centre - half]))
    return bool(np.all(ends >= -0.5) and np.all(ends <= np.asarray(grid.shape) - 0.5))


def make_phantom(
    rng: np.random.Generator,
    size: str = "small",
    codes: tuple[str, str, str] | None = None,
    *,
    l6: bool | None = None,
    t13: bool | None = None,
    fracture: bool | None = None,
    variant_rate: float = 0.1,
) -> Phantom:
    """Sample anatomy, geometry and image formation for one scan."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    variants = {
        "l6": l6 if l6 is not None else bool(rng.random() < variant_rate),
        "t13": t13 if t13 is not None else bool(rng.random() < variant_rate / 2),
        "fracture": fracture if fracture is not None else bool(rng.random() < variant_rate),
    }
    spine = sample_spine(rng, **variants)
    codes = codes or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    preset = SIZES[size]
    if preset.scene == "body":
        body = sample_body(spine, rng)
        tissues = sample_tissues(rng)
        grid = sample_clinical_grid(spine, body, rng, preset, codes)
        while not any(body_in_view(v, grid) for v in spine.labeled):  # a field of view past the spine's ends
            grid = sample_clinical_grid(spine, body, rng, preset, codes)  # (legs, head) would be an empty mask
        hu, labels, core = render_body(spine, body, tissues, grid)
        hu = acquire(hu, core, grid, tissues, rng)
    else:
        grid = sample_grid(spine, rng, preset, codes)
        hu, labels = render(spine, grid, rng)
        spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
        hu = ndimage.gaussian_filter(hu, sigma=np.clip(0.9 / spacing, 0.35, 0.9), mode="nearest")
        noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, hu.shape).astype(np.float32), 0.6)
        hu += noise * (rng.uniform(10.0, 35.0) / max(float(noise.std()), 1e-6))
        hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist()) - {0}
    visible, partial = {}, []
    for vertebra in spine.labeled:
        if vertebra.label not in present:
            continue
        if body_in_view(vertebra, grid):
            visible[vertebra.label] = grid.to_index(vertebra.centre[None])[0]
        else:
            partial.append(vertebra.label)
    return Phantom(hu, labels, grid.affine, tuple(codes), visible, tuple(partial), spine)
