"""Rasterise a spine inside its `Body` with one case's `Tissues`: HU, VerSe labels and the cancellous-bone mask.

Order: the trunk outline and the abdominal cavity, abdominal organs, the lungs above the diaphragm (which cut the
organs' tops as the dome does), mediastinum and vessels, then bone and metal merged by maximum, then discs and
vertebrae (only vertebrae are labelled). Every structure is evaluated on its own bounding box, the trunk slab by
slab, so memory stays bounded on large grids.
"""

from __future__ import annotations

import numpy as np

from vertseg.data.synth.anatomy import Spine
from vertseg.data.synth.body import Body, Solid
from vertseg.data.synth.grid import Grid
from vertseg.data.synth.render import _disc, _spine_profile, _vertebra
from vertseg.data.synth.shapes import capsule, ellipsoid
from vertseg.data.synth.tissues import Tissues

LUNG_LAYER = 6  # solids below this layer lie under the lungs (abdominal organs), the rest over them
MAX_MERGED = ("metal", "calcification")  # painted by maximum like bone


def render_body(spine: Spine, body: Body, tissues: Tissues, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (float32), labels (uint8) and cancellous-bone mask (bool) in the grid's (i, j, k) order."""
    hu = np.full(grid.shape, tissues.air, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    core = np.zeros(grid.shape, dtype=bool)
    _slabs(spine, body, tissues, grid, hu, lungs=False)
    soft = sorted((s for s in body.solids if not s.is_bone and s.material not in MAX_MERGED), key=lambda s: s.layer)
    for solid in soft:
        if solid.layer < LUNG_LAYER:
            _paint(solid, grid, hu, tissues)
    _slabs(spine, body, tissues, grid, hu, lungs=True)
    for solid in soft:
        if solid.layer >= LUNG_LAYER:
            _paint(solid, grid, hu, tissues)
    if body.table_mm > 0:
        _table(spine, body, tissues, grid, hu)
    for solid in body.solids:
        if solid.is_bone or solid.material in MAX_MERGED:
            _paint(solid, grid, hu, tissues)
    for upper, lower in zip(spine.vertebrae[:-1], spine.vertebrae[1:]):
        if upper.kind != "c1":
            _disc(upper, lower, grid, hu, tissues.disc)
    bone = (tissues.cortical, tissues.cancellous)
    for vertebra in spine.vertebrae:
        _vertebra(vertebra, spine, grid, hu, labels, bone_hu=bone, cortex_mm=tissues.cortex_mm, core=core)
    return hu, labels, core


def _sdf(solid: Solid, p: np.ndarray) -> np.ndarray:
    if solid.kind == "tube":
        raise ValueError("tubes are painted segment by segment")
    q = p - solid.points.astype(p.dtype)
    if solid.rotation is not None:
        q = q @ solid.rotation.astype(p.dtype)
    d = ellipsoid(q, (0.0, 0.0, 0.0), solid.radii)
    if solid.kind == "shell":
        d = np.abs(d + solid.thickness / 2) - solid.thickness / 2
        if solid.hole_mm > 0:
            d = np.where(np.hypot(q[..., 0], q[..., 1]) < solid.hole_mm, np.float32(1.0), d)
    return d


def _pieces(solid: Solid, grid: Grid):
    """(box, signed distance on the box) for each part of a solid: one for an ellipsoid, one per tube segment."""
    if solid.kind == "tube":
        for a, b, ra, rb in zip(solid.points[:-1], solid.points[1:], solid.radii[:-1], solid.radii[1:]):
            radius = 0.5 * (ra + rb)
            box = grid.aabb(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
            if box is not None:
                yield box, capsule(grid.world(box).astype(np.float32), a, b, radius)
        return
    lo, hi = solid.bounds()
    box = grid.aabb(lo, hi)
    if box is not None:
        yield box, _sdf(solid, grid.world(box).astype(np.float32))


def _paint(solid: Solid, grid: Grid, hu: np.ndarray, tissues: Tissues) -> None:
    value = tissues[solid.material]
    if not np.isfinite(value):  # e.g. no oral contrast in this scan: the loop holds fluid instead
        value = tissues.bowel
    for box, d in _pieces(solid, grid):
        inside = d <= 0
        if not inside.any():
            continue
        region = hu[box]
        if solid.is_bone:
            shell = tissues[solid.cortex_material]
            values = np.where(d > -solid.cortex_mm, np.float32(shell), np.float32(value))
            np.maximum(region, np.where(inside, values, region), out=region)
        elif solid.material in MAX_MERGED:
            np.maximum(region, np.where(inside, np.float32(value), region), out=region)
        else:
            region[inside] = value


def _slabs(spine: Spine, body: Body, tissues: Tissues, grid: Grid, hu: np.ndarray, lungs: bool) -> None:
    """First pass: air, subcutaneous fat, muscle, the abdominal cavity's visceral fat. Second pass: the lungs."""
    trunk, lung = body.trunk, body.lungs
    for box, world in grid.slabs():
        x, y, z = world[..., 0], world[..., 1], world[..., 2]
        sx, sy, _ = _spine_profile(spine, z)
        rx, ry, back = trunk.at(z)
        cy = sy - back + ry
        inner_x, inner_y = np.maximum(rx - trunk.fat, 8.0), np.maximum(ry - trunk.fat, 8.0)
        out = hu[box]
        if not lungs:
            out[((x - sx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0] = tissues.fat
            inner = ((x - sx) / inner_x) ** 2 + ((y - cy) / inner_y) ** 2
            out[inner <= 1.0] = tissues.muscle
            wall = 12.0
            cavity = ((x - sx) / np.maximum(inner_x - wall, 5)) ** 2 + ((y - cy) / np.maximum(inner_y - wall, 5)) ** 2
            abdomen = (cavity <= 1.0) & (z < body.abdomen_top) & (z > body.pelvis_floor) & (y > sy + 5.0)
            out[abdomen] = tissues.visceral_fat
            continue
        if not np.any(z < lung.apex_z):
            continue
        ax, ay = np.maximum(inner_x - lung.wall_mm, 5.0), np.maximum(inner_y - lung.wall_mm, 5.0)
        taper = np.clip((lung.apex_z - z) / 45.0, 0.05, 1.0) ** 0.5  # the apices narrow to a dome
        ax, ay = ax * taper, ay * taper
        right = x > sx
        centre_x = sx + np.where(right, 0.5, -0.5) * ax
        r2 = ((x - centre_x) / (0.5 * ax)) ** 2 + ((y - cy) / ay) ** 2
        dome = np.where(right, lung.dome_z[0], lung.dome_z[1]) - lung.recess_mm * np.clip(r2, 0.0, 1.3)
        cavity = ((x - sx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
        half_width, half_depth = _body_size(spine, z)
        behind = np.clip(sy - half_depth - y, 0.0, None)  # depth behind the bodies' back walls
        width = np.where(y > sy + half_depth, 22.0 * spine.scale,  # in front: aorta, oesophagus, azygos
                         np.minimum(half_width + 3.0 + 0.8 * behind, 45.0 * spine.scale))
        mediastinum = np.abs(x - sx) < width  # the lungs touch the bodies' sides; behind them ribs and muscles
        out[cavity & (z < lung.apex_z) & (z > dome) & ~mediastinum] = tissues.lung


def _body_size(spine: Spine, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-depth of the vertebral bodies at height z (interpolated between levels)."""
    levels = [v for v in spine.vertebrae if v.a > 0]
    order = np.argsort([v.centre[2] for v in levels])
    zs = np.array([levels[i].centre[2] for i in order])
    return (np.interp(z, zs, [levels[i].a for i in order]), np.interp(z, zs, [levels[i].b for i in order]))


def _table(spine: Spine, body: Body, tissues: Tissues, grid: Grid, hu: np.ndarray) -> None:
    """A curved patient table (cradle) under the back, spanning the grid along z."""
    centre_x = float(np.mean([v.centre[0] for v in spine.vertebrae]))
    radius = 600.0
    for box, world in grid.slabs():
        x, y = world[..., 0], world[..., 1]
        distance = np.hypot(x - centre_x, y - (body.table_y + radius))  # circle centre above the table top
        slab = (distance >= radius) & (distance <= radius + body.table_mm) & (np.abs(x - centre_x) < 230.0)
        hu[box][slab] = tissues.table
