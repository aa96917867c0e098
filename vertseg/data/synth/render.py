"""Rasterise a sampled spine and its surroundings into a HU volume and a VerSe label map on a Grid.

Soft tissue is painted first (air, fat, muscle, lungs, table), bone and discs are merged with np.maximum so their
order does not matter, and labels go to the first (most cranial) vertebra claiming a voxel. Everything is
vectorised over the voxels of each structure's bounding box.
"""

from __future__ import annotations

import numpy as np

from vertseg.data.synth.anatomy import Spine, Vertebra
from vertseg.data.synth.grid import Grid
from vertseg.data.synth.shapes import capsule, ellipsoid, elliptic_annulus, superellipse_cylinder

AIR, FAT, MUSCLE, LUNG, DISC, TABLE = -1000.0, -100.0, 45.0, -850.0, 90.0, 250.0
CORTEX_MM = 1.5


def render(spine: Spine, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and label (uint8) volumes in the grid's (i, j, k) order."""
    hu = np.full(grid.shape, AIR, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    _soft_tissue(spine, grid, hu, rng)
    for upper, lower in zip(spine.vertebrae[:-1], spine.vertebrae[1:]):
        if upper.kind != "c1":
            _disc(upper, lower, grid, hu)
    for vertebra in spine.vertebrae:
        _vertebra(vertebra, spine, grid, hu, labels)
        if vertebra.rib_arc > 0:
            _ribs(vertebra, spine, grid, hu)
    return hu, labels


def _spine_profile(spine: Spine, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spine x, y and level index (float) as functions of world z, by interpolation along the centroids."""
    centres = np.stack([v.centre for v in spine.vertebrae])
    order = np.argsort(centres[:, 2])
    zs = centres[order, 2]
    index = np.arange(len(centres), dtype=np.float64)[order]
    return np.interp(z, zs, centres[order, 0]), np.interp(z, zs, centres[order, 1]), np.interp(z, zs, index)


def _soft_tissue(spine: Spine, grid: Grid, hu: np.ndarray, rng: np.random.Generator) -> None:
    """Trunk (neck narrower), subcutaneous fat, lungs beside the thoracic spine, a few organ blobs, the table.

    Painted slab by slab along the last array axis so memory stays bounded on large grids.
    """
    levels = [v.label for v in spine.vertebrae]
    z_of_level = np.array([v.centre[2] for v in spine.vertebrae])
    blobs = []
    for _ in range(int(rng.integers(2, 6))):  # organs / bowel gas / contrast away from the spine
        offset = np.array([rng.normal(0, 0.4), rng.uniform(0.3, 1.6), rng.uniform(-1, 1)])
        level_at = rng.uniform(0, len(levels) - 1)
        radii = np.array([rng.uniform(10, 40), rng.uniform(10, 30), rng.uniform(15, 50)])
        value = float(rng.choice([-700.0, 20.0, 160.0]))
        blobs.append((offset, float(np.interp(level_at, np.arange(len(levels)), z_of_level)), radii, value))
    t_levels = [i for i, v in enumerate(spine.vertebrae) if 8 <= v.label <= 18]
    first_thoracic = levels.index(8)
    # flat table: the patient lies supine on it, just behind the most posterior skin of the back
    table_top = min(float(v.centre[1]) for v in spine.vertebrae) - 65.0 * spine.scale - 8.0
    for box, world in grid.slabs():
        x, y, z = world[..., 0], world[..., 1], world[..., 2]
        sx, sy, level = _spine_profile(spine, z)
        neck = np.clip((first_thoracic - 0.5 - level) / 2.0, 0.0, 1.0)  # 1 in the neck, 0 from T1 down
        rx = spine.thorax[0] * (1 - neck) + 60.0 * spine.scale * neck
        ry = spine.thorax[1] * (1 - neck) + 55.0 * spine.scale * neck
        back = 65.0 * spine.scale * (1 - neck) + 50.0 * spine.scale * neck  # body centroid to skin of the back
        cy = sy - back + ry
        out = hu[box]
        r = ((x - sx) / rx) ** 2 + ((y - cy) / ry) ** 2
        inner = ((x - sx) / np.maximum(rx - spine.fat, 5)) ** 2 + ((y - cy) / np.maximum(ry - spine.fat, 5)) ** 2
        out[r <= 1.0] = FAT
        inside = inner <= 1.0
        out[inside] = MUSCLE
        if t_levels:
            top, bottom = spine.vertebrae[t_levels[0]].centre[2], spine.vertebrae[t_levels[-1]].centre[2]
            half, mid = max((top - bottom) / 2.0, 10.0), (top + bottom) / 2.0
            for side in (-1.0, 1.0):
                lung = (
                    ((x - sx - side * 0.5 * rx) / (0.38 * rx)) ** 2
                    + ((y - cy - 0.05 * ry) / (0.7 * ry)) ** 2
                    + ((z - mid) / half) ** 2
                )
                out[(lung <= 1.0) & inside] = LUNG
        for offset, vz, radii, value in blobs:
            blob = (
                ((x - sx - offset[0] * rx) / radii[0]) ** 2
                + ((y - sy - offset[1] * 40.0) / radii[1]) ** 2
                + ((z - vz - offset[2] * 40.0) / radii[2]) ** 2
            )
            out[(blob <= 1.0) & inside & (out > LUNG)] = value
        table = (y < table_top) & (y > table_top - 8.0) & (np.abs(x - sx) < 1.5 * rx)
        out[table] = TABLE


def _local(grid: Grid, box, centre: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return ((grid.world(box) - centre) @ frame).astype(np.float32)


def _bone(hu: np.ndarray, box, inside: np.ndarray, value: float | np.ndarray) -> None:
    region = hu[box]
    np.maximum(region, np.where(inside, value, region), out=region)


def _vertebra(v: Vertebra, spine: Spine, grid: Grid, hu: np.ndarray, labels: np.ndarray,
              bone_hu: tuple[float, float] | None = None, cortex_mm: float = CORTEX_MM,
              core: np.ndarray | None = None) -> None:
    """Paint one vertebra (cortex over cancellous core) and its label; `core` (if given) marks the cancellous voxels."""
    reach_u = v.canal[0] + v.arch + v.transverse + 10.0
    reach_v = v.b + 2 * v.canal[1] + v.arch + v.spinous[0] + 10.0
    box = grid.box((-reach_u, -reach_v, -v.h - 25.0), (reach_u, v.b + 12.0, v.h + 25.0), v.centre, v.frame)
    if box is None:
        return
    p = _local(grid, box, v.centre, v.frame)
    if v.kind == "c1":
        sdf = _atlas(p, v)
    else:
        sdf = np.minimum(_body(p, v), _posterior(p, v))
        if v.kind == "c2":
            dens = capsule(p, (0, 0.5, v.h / 2 - 2), (0, 0.5, v.h / 2 + 16 * spine.scale), 5.0 * spine.scale)
            sdf = np.minimum(sdf, dens)
    solid = sdf <= 0
    cortical, cancellous = bone_hu or spine.bone_hu
    _bone(hu, box, solid, np.where(sdf <= -cortex_mm, cancellous, cortical).astype(np.float32))
    if core is not None:
        core[box] |= sdf <= -cortex_mm
    if v.label:
        region = labels[box]
        region[solid & (region == 0)] = v.label


def _body(p: np.ndarray, v: Vertebra) -> np.ndarray:
    """Superelliptic body with cupped endplates; a wedge fracture lowers the anterior height."""
    r2 = (p[..., 0] / v.a) ** 2 + (p[..., 1] / v.b) ** 2
    half_h = v.h / 2 - 1.0 * np.clip(1 - r2, 0, 1)
    if v.compression:
        half_h = half_h * (1 - v.compression * np.clip((p[..., 1] / v.b + 1) / 2, 0, 1))
    return superellipse_cylinder(p, v.a, v.b, half_h)


def _posterior(p: np.ndarray, v: Vertebra) -> np.ndarray:
    """Pedicles + laminae (a ring round the canal), spinous and transverse processes, articular processes."""
    cu, cv = v.canal
    centre_v = -(v.b + cv - 1.0)
    lift = 0.1 * v.h
    arch_p = p - np.array([0.0, 0.0, lift], dtype=p.dtype)
    ring = elliptic_annulus(arch_p, centre_v, (cu, cv), v.arch, 0.3 * v.h)
    ring = np.maximum(ring, p[..., 1] + v.b * 0.6)
    back = centre_v - cv - v.arch * 0.5
    length, angle = v.spinous
    tip = (0.0, back - length * np.cos(np.radians(angle)), lift - length * np.sin(np.radians(angle)))
    radius = 3.5 if v.kind == "cervical" else 4.0 if v.kind == "thoracic" else 5.0
    sdf = np.minimum(ring, capsule(p, (0, back, lift), tip, radius))
    if v.kind == "lumbar":  # hatchet-shaped lumbar spinous process
        drop = 0.25 * v.h
        sdf = np.minimum(sdf, capsule(p, (0, back, lift - drop), (tip[0], tip[1], tip[2] - drop), radius))
    side_u = cu + v.arch * 0.5
    tp_back = -12.0 if v.kind == "thoracic" else -3.0
    tp_radius = 3.0 if v.kind == "cervical" else 4.0
    for sign in (-1.0, 1.0):
        start = (sign * side_u, centre_v, lift)
        end = (sign * (side_u + v.transverse), centre_v + tp_back, lift)
        sdf = np.minimum(sdf, capsule(p, start, end, tp_radius))
        facet = capsule(p, (sign * side_u, centre_v, -0.45 * v.h), (sign * side_u, centre_v, 0.6 * v.h), 4.5)
        sdf = np.minimum(sdf, facet)
    return sdf


def _atlas(p: np.ndarray, v: Vertebra) -> np.ndarray:
    """C1: a ring (anterior and posterior arch) with two lateral masses and transverse processes, no body."""
    s = v.canal[0] / 12.0  # the case scale (canal width is 12 mm at scale 1)
    sdf = elliptic_annulus(p, -6.0 * s, (16.0 * s, 14.0 * s), 5.0 * s, 4.5 * s)
    for sign in (-1.0, 1.0):
        sdf = np.minimum(sdf, ellipsoid(p, (sign * 14 * s, -2 * s, 0), (7 * s, 9 * s, 8 * s)))
        sdf = np.minimum(sdf, capsule(p, (sign * 20 * s, -2 * s, 0), (sign * 36 * s, -4 * s, 0), 4 * s))
    return sdf


def _disc(upper: Vertebra, lower: Vertebra, grid: Grid, hu: np.ndarray, value: float = DISC) -> None:
    centre = (upper.centre + lower.centre) / 2
    axis = upper.centre - lower.centre
    gap = float(np.linalg.norm(axis))
    frame = (upper.frame + lower.frame) / 2
    frame, _ = np.linalg.qr(frame)
    frame = frame * np.sign(np.diag(frame))  # keep QR from flipping axes
    a, b = 0.95 * min(upper.a, lower.a), 0.95 * min(upper.b, lower.b)
    if a <= 0 or b <= 0:
        return
    box = grid.box((-a, -b, -gap / 2), (a, b, gap / 2), centre, frame)
    if box is None:
        return
    p = _local(grid, box, centre, frame)
    _bone(hu, box, superellipse_cylinder(p, a, b, gap / 2) <= 0, value)


def _ribs(v: Vertebra, spine: Spine, grid: Grid, hu: np.ndarray) -> None:
    """A pair of ribs from the transverse processes round the thorax, sloping down, as capsule chains."""
    rx, ry = spine.thorax[0] - spine.fat - 12.0, spine.thorax[1] - spine.fat - 12.0
    taper = 0.65 if v.label == 8 else 1.0
    back = v.centre + v.frame[:, 1] * -(v.b + 2 * v.canal[1] + 6.0)
    centre = back + np.array([0.0, ry * taper, 0.0])
    start_angle = 0.35
    angles = np.linspace(start_angle, start_angle + v.rib_arc * (np.pi - start_angle), 18)
    drop = np.tan(np.radians(30.0)) * 0.5 * ry * (angles - start_angle)
    radius = 4.5 * spine.scale
    cortical = spine.bone_hu[0] * 0.75
    for sign in (-1.0, 1.0):
        points = np.stack(
            [centre[0] + sign * rx * taper * np.sin(angles), centre[1] - ry * taper * np.cos(angles), centre[2] - drop],
            axis=1,
        )
        root = np.array([sign * (v.canal[0] + v.arch + v.transverse * 0.7), -(v.b + v.canal[1] + 8.0), 0.1 * v.h])
        points = np.vstack([v.centre + v.frame @ root, points])  # the rib starts at the transverse process
        for start, end in zip(points[:-1], points[1:]):
            box = grid.aabb(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
            if box is None:
                continue
            _bone(hu, box, capsule(grid.world(box), start, end, radius) <= 0, cortical)
