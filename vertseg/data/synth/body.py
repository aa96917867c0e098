"""The body around a sampled spine, for phantoms that look like clinical CT rather than a spine in a cylinder.

Everything a real scan shows beside the vertebrae and a network must learn NOT to call a vertebra: the trunk's
outline (neck, shoulders, thorax, abdomen, pelvis), lungs above a domed diaphragm, the heart and contrast-filled
vessels that run along the spine (aorta, vena cava, iliac arteries), abdominal organs and bowel with gas or oral
contrast, psoas muscles, and bone: ribs that leave the costovertebral joints, wrap round the chest wall and end in
costal cartilage at the sternum (T1-T10; T11-T12 float), sternum, clavicles, scapulae, arms, sacral alae, iliac
wings whose crests reach L4-L5, hips and femora, the skull base and mandible above the neck, a curved table,
occasional pedicle screws. Sizes and positions are drawn per case around typical adult anatomy.

World frame as in `anatomy`: RAS mm (+x patient's right, +y anterior, +z superior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vertseg.data.synth.anatomy import Spine, Vertebra

RIBBED = range(8, 20)  # T1-T12 carry ribs (a T13 carries a short one)
TRUE_RIBS = 7  # T1-T7: cartilage straight to the sternum; T8-T10 join the costal margin; T11-T12 float


@dataclass(frozen=True)
class Solid:
    """One structure: a rotated ellipsoid or a tube (chain of capsules), its material and, for bone, its cortex.

    Soft tissue is painted over what lies beneath in `layer` order; bone (cortex_mm > 0) is merged by maximum.
    """

    kind: str  # "ellipsoid" | "tube" | "shell" (an ellipsoid's surface, `thickness` thick)
    material: str  # a `Tissues` field
    points: np.ndarray  # ellipsoid/shell: (3,) centre; tube: (n, 3) centre line
    radii: np.ndarray  # ellipsoid/shell: (3,) half-axes along `rotation`'s columns; tube: (n,) radius per point
    rotation: np.ndarray | None = None  # (3, 3) columns = the ellipsoid's axes in world coordinates
    cortex_mm: float = 0.0
    cortex_material: str = "compact"
    thickness: float = 0.0
    layer: int = 0
    hole_mm: float = 0.0  # shell only: open within this distance of its vertical axis (foramen magnum)

    @property
    def is_bone(self) -> bool:
        return self.cortex_mm > 0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "tube":
            r = float(np.max(self.radii))
            return self.points.min(axis=0) - r, self.points.max(axis=0) + r
        r = float(np.max(self.radii)) + self.thickness
        return self.points - r, self.points + r


@dataclass(frozen=True)
class Trunk:
    """The body's outline along z: half-axes (lateral, AP) and the distance from the spine to the skin of the back,
    interpolated between anchors at vertebral levels (world z ascending)."""

    z: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    back: np.ndarray
    fat: float

    def at(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.interp(z, self.z, self.rx), np.interp(z, self.z, self.ry), np.interp(z, self.z, self.back)


@dataclass(frozen=True)
class Lungs:
    apex_z: float  # top of both lungs
    dome_z: tuple[float, float]  # diaphragm dome height, (right, left)
    recess_mm: float  # how far the costophrenic recess reaches below the dome
    wall_mm: float  # chest wall (muscle + ribs) inside the fat


@dataclass(frozen=True)
class Body:
    trunk: Trunk
    lungs: Lungs
    abdomen_top: float  # world z: the abdominal cavity (visceral fat) lies below this ...
    pelvis_floor: float  # ... and above this
    solids: list[Solid]
    table_y: float  # world y of the table's top (it lies under the back)
    table_mm: float  # thickness; 0 = no table in the scan


def _by_label(spine: Spine) -> dict[int, Vertebra]:
    return {v.label: v for v in spine.vertebrae if v.label}


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _tube(material: str, points, radius, layer: int = 0, **bone) -> Solid:
    points = np.asarray(points, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(points),)).copy()
    return Solid("tube", material, points, radii, layer=layer, **bone)


def _ellipsoid(material: str, centre, radii, rotation=None, layer: int = 0, **bone) -> Solid:
    return Solid("ellipsoid", material, np.asarray(centre, dtype=np.float64), np.asarray(radii, dtype=np.float64),
                 None if rotation is None else np.asarray(rotation, dtype=np.float64), layer=layer, **bone)


def sample_body(spine: Spine, rng: np.random.Generator) -> Body:
    """The body of one patient around `spine`."""
    u = rng.uniform
    levels = _by_label(spine)
    s = spine.scale
    z_of = {label: float(v.centre[2]) for label, v in levels.items()}
    sacral = [v for v in spine.vertebrae if v.kind == "sacral"]
    s1 = sacral[0]
    last_lumbar = max(label for label in levels if label >= 20)
    last_thoracic = max(label for label in levels if 8 <= label <= 19 or label == 28)

    thorax = spine.thorax
    abdomen = (thorax[0] * u(0.9, 1.15), thorax[1] * u(0.95, 1.3))  # a round belly is common
    pelvis = (thorax[0] * u(1.0, 1.2), thorax[1] * u(0.85, 1.1))
    fat = spine.fat
    anchors = [  # (z, rx, ry, spine-to-back-skin)
        (z_of[1] + 60.0, 75.0 * s, 95.0 * s, 85.0 * s),  # head, above the atlas
        (z_of[1] + 15.0, 60.0 * s, 62.0 * s, 55.0 * s),
        (z_of[7], (62.0 + fat) * s, (55.0 + 0.5 * fat) * s, 55.0 * s),
        (z_of[8], thorax[0] * 0.95 + 25.0 * s, thorax[1] * 0.8, 70.0 * s),  # shoulders
        (z_of[13], thorax[0], thorax[1], 80.0 * s),
        (z_of[last_thoracic], thorax[0] * 1.02, thorax[1] * 1.05, 82.0 * s),
        (z_of[22], abdomen[0], abdomen[1], 78.0 * s),
        (float(s1.centre[2]), pelvis[0], pelvis[1], 85.0 * s),
        (float(sacral[-1].centre[2]) - 60.0, pelvis[0] * 1.05, pelvis[1] * 0.95, 70.0 * s),
    ]
    anchors.sort(key=lambda a: a[0])
    trunk = Trunk(*(np.array(column) for column in zip(*anchors)), fat=fat)

    dome = z_of[17] + u(-15.0, 20.0)  # T10 +- : right dome, the left one lower
    lungs = Lungs(apex_z=z_of[8] + u(15.0, 35.0), dome_z=(dome, dome - u(5.0, 25.0)), recess_mm=u(55.0, 85.0),
                  wall_mm=u(14.0, 24.0))
    solids: list[Solid] = []
    solids += _organs(spine, levels, z_of, rng)
    solids += _vessels(spine, levels, s1, rng)
    solids += _ribs_and_sternum(spine, levels, trunk, lungs, rng)
    arms_down = bool(rng.random() < 0.4)
    solids += _shoulders_and_arms(levels, z_of, trunk, arms_down, rng)
    solids += _pelvis(z_of, last_lumbar, sacral, rng)
    solids += _head(spine, levels, z_of, rng)
    if rng.random() < 0.06:
        solids += _fixation(levels, rng)
    back_skin = min(float(v.centre[1]) - float(trunk.at(np.array([v.centre[2]]))[2][0]) for v in spine.vertebrae)
    table_mm = u(5.0, 18.0) if rng.random() < 0.85 else 0.0
    return Body(trunk, lungs, dome - lungs.recess_mm * 0.5, float(sacral[-1].centre[2]) - 40.0, solids,
                back_skin - u(0.0, 25.0), table_mm)


def _organs(spine: Spine, levels: dict[int, Vertebra], z_of: dict[int, float], rng: np.random.Generator) -> list[Solid]:
    u = rng.uniform

    def axial(label: int) -> np.ndarray:
        return levels[label].centre

    out: list[Solid] = []
    liver_c = axial(19) + np.array([u(45, 80), u(40, 70), u(0, 25)])
    out.append(_ellipsoid("liver", liver_c, [u(70, 95), u(55, 80), u(65, 85)], _rotation_z(u(-0.3, 0.2)), layer=2))
    out.append(_ellipsoid("spleen", axial(18) + np.array([-u(70, 95), u(-10, 20), u(-10, 20)]),
                          [u(20, 30), u(40, 60), u(45, 65)], _rotation_z(u(0.3, 0.8)), layer=2))
    for side in (1.0, -1.0):  # kidneys beside L1-L2 (the right one lower), cortex around medulla
        centre = axial(21) + np.array([side * u(45, 62), u(0, 20), u(-15, 15) - (12 if side > 0 else 0)])
        tilt = _rotation_z(side * u(0.2, 0.6)) @ _rotation_x(u(-0.3, 0.3))
        radii = np.array([u(26, 34), u(22, 30), u(48, 62)])
        out.append(_ellipsoid("kidney_cortex", centre, radii, tilt, layer=3))
        out.append(_ellipsoid("kidney_medulla", centre, radii * 0.6, tilt, layer=4))
    stomach = axial(18) + np.array([-u(40, 80), u(70, 110), u(-10, 30)])
    out.append(_ellipsoid("bowel", stomach, [u(35, 55), u(25, 40), u(40, 70)], _rotation_z(u(-0.5, 0.5)), layer=3))
    out.append(_ellipsoid("air", stomach + np.array([0, 0, u(15, 30)]), [u(20, 35), u(15, 25), u(10, 20)], layer=4))
    centres_z = np.array([v.centre[2] for v in spine.vertebrae])
    oral = rng.random() < 0.5
    for _ in range(int(rng.integers(10, 24))):  # bowel loops from L1 down into the pelvis: fluid, gas, oral contrast
        z = u(float(centres_z[-1]), z_of[20])
        base = spine.vertebrae[int(np.argmin(np.abs(centres_z - z)))].centre
        centre = np.array([base[0] + u(-110, 110), base[1] + u(40, 140), z])
        material = "air" if rng.random() < 0.25 else ("oral_contrast" if oral and rng.random() < 0.5 else "bowel")
        bend = np.array([u(-30, 30), u(-15, 15), u(-30, 30)])
        out.append(_tube(material, [centre - bend, centre, centre + bend[::-1]], u(9, 22), layer=3))
    for side in (1.0, -1.0):  # psoas: grows from L1 to L5 beside the vertebral bodies
        points, radii = [], []
        for label in range(20, 25):
            if label in levels:
                v = levels[label]
                points.append(v.centre + v.frame @ np.array([side * (v.a + 4 + 3 * (label - 20)), -4.0, 0.0]))
                radii.append(6.0 + 4.0 * (label - 20) * spine.scale)
        if len(points) > 1:
            out.append(_tube("muscle", points, radii, layer=5))
    return out


def _vessels(spine: Spine, levels: dict[int, Vertebra], s1: Vertebra, rng: np.random.Generator) -> list[Solid]:
    """Heart, aorta (ascending, arch, descending left of the bodies, bifurcating at L4), vena cava, trachea."""
    u = rng.uniform
    out: list[Solid] = []
    t8 = levels[15].centre
    heart = t8 + np.array([-u(15, 40), u(60, 85), u(-25, 5)])
    heart_rot = _rotation_z(-u(0.3, 0.7)) @ _rotation_x(u(0.2, 0.5))
    radii = np.array([u(52, 66), u(42, 55), u(45, 60)]) * spine.scale
    out.append(_ellipsoid("visceral_fat", heart, radii + 6.0, heart_rot, layer=6))
    out.append(_ellipsoid("myocardium", heart, radii, heart_rot, layer=7))
    out.append(_ellipsoid("artery", heart + heart_rot @ np.array([-12.0, -5.0, 0.0]), radii * 0.55, heart_rot, layer=8))
    out.append(_ellipsoid("vein", heart + heart_rot @ np.array([18.0, 5.0, 5.0]), radii * 0.5, heart_rot, layer=8))

    aorta_r = u(11, 16) * spine.scale
    path = [heart + np.array([8.0, -10.0, 25.0]), levels[10].centre + np.array([-5.0, u(40, 55), 0.0])]
    for label in range(11, 25):
        if label not in levels:
            continue
        v = levels[label]
        side = -(v.a * 0.55 + aorta_r + 2.0) if label < 20 else -u(4, 12)
        path.append(v.centre + np.array([side, v.b + aorta_r * (0.4 if label < 20 else 1.0) + 2.0, 0.0]))
        if label == 23:
            break
    radii_path = np.linspace(aorta_r, aorta_r * 0.75, len(path))
    out.append(_tube("artery", path, radii_path, layer=9))
    fork = path[-1]
    for side in (1.0, -1.0):  # common and external iliac arteries
        iliac = [fork, fork + np.array([side * 35.0, 5.0, -35.0]), s1.centre + np.array([side * 70.0, 50.0, -70.0])]
        out.append(_tube("artery", iliac, aorta_r * 0.5, layer=9))
    if rng.random() < 0.4:  # calcified plaques in the aortic wall
        for _ in range(int(rng.integers(2, 10))):
            k = int(rng.integers(2, len(path)))
            offset = rng.normal(size=3)
            offset *= radii_path[k] / np.linalg.norm(offset)
            out.append(_ellipsoid("calcification", path[k] + offset, [u(1.5, 3.5)] * 3, layer=10))
    cava = [levels[label].centre + np.array([u(18, 26), levels[label].b + 12.0, 0.0])
            for label in (17, 19, 21, 23) if label in levels]
    out.append(_tube("vein", cava, u(9, 13), layer=9))

    trachea = [levels[3].centre + np.array([0.0, levels[3].b + 22.0, 0.0]),
               levels[7].centre + np.array([0.0, levels[7].b + 20.0, 0.0]),
               levels[11].centre + np.array([0.0, levels[11].b + 25.0, 0.0])]
    out.append(_tube("air", trachea, u(7, 10), layer=9))
    for side in (1.0, -1.0):
        out.append(_tube("air", [trachea[-1], trachea[-1] + np.array([side * 35.0, 10.0, -30.0])], 5.5, layer=9))
    esophagus = [p + np.array([-3.0, -14.0, 0.0]) for p in trachea[1:]] + [path[4] + np.array([12.0, 8.0, 0.0])]
    out.append(_tube("muscle", esophagus, 7.0, layer=9))
    return out


def _chest_wall(trunk: Trunk, lungs: Lungs, z: float, spine_xy: np.ndarray) -> tuple[float, float, float, float]:
    """(centre x, centre y, lateral, AP half-axes) of the ellipse the ribs follow at height z."""
    rx, ry, back = (float(a[0]) for a in trunk.at(np.array([z])))
    inset = trunk.fat + lungs.wall_mm * 0.5
    return float(spine_xy[0]), float(spine_xy[1] - back + ry), rx - inset, ry - inset


def _ribs_and_sternum(spine: Spine, levels: dict[int, Vertebra], trunk: Trunk, lungs: Lungs,
                      rng: np.random.Generator) -> list[Solid]:
    """Ribs from each thoracic vertebra: head at the body, tubercle at the transverse process, shaft round the
    chest wall sloping down, costal cartilage to the sternum; the sternum on the front wall from T2 to T10."""
    u = rng.uniform
    out: list[Solid] = []
    slope = np.tan(np.radians(u(15, 28)))
    ribbed = [label for label in list(RIBBED) + [28] if label in levels]
    sternum_y = {}
    for label in (9, 12, 16, 17):
        v = levels[label]
        cx, cy, _, ay = _chest_wall(trunk, lungs, float(v.centre[2]) - 30.0, v.centre)
        sternum_y[label] = (cx, cy + ay + lungs.wall_mm * 0.3, float(v.centre[2]) - 30.0)
    top, bottom = sternum_y[9], sternum_y[17]
    sternum = [np.array([top[0], top[1], top[2] + 15.0]), np.array(sternum_y[12]), np.array(sternum_y[16]),
               np.array([bottom[0], bottom[1] - 5.0, bottom[2]])]
    out.append(_ellipsoid("rib_marrow", sternum[0], [u(22, 30), 7.0, 22.0], layer=20, cortex_mm=1.5,
                          cortex_material="cortical"))
    out.append(_tube("rib_marrow", sternum[1:], u(12, 16), layer=20, cortex_mm=1.5, cortex_material="cortical"))
    for n, label in enumerate(ribbed, start=1):
        v = levels[label]
        rib_no = 13 if label == 28 else label - 7
        side_u = v.canal[0] + v.arch * 0.5
        radius = (3.5 if rib_no in (1, 11, 12, 13) else u(4.0, 5.2)) * spine.scale
        for sign in (-1.0, 1.0):
            head = v.centre + v.frame @ np.array([sign * v.a * 0.75, -v.b * 0.85, 0.35 * v.h])
            tubercle = v.centre + v.frame @ np.array([sign * (side_u + v.transverse * 0.9), -(v.b + 2 * v.canal[1]),
                                                      0.1 * v.h])
            cx, cy, ax, ay = _chest_wall(trunk, lungs, float(tubercle[2]), v.centre)
            if rib_no == 1:
                ax, ay = ax * 0.55, ay * 0.7
            start = np.arctan2(sign * (tubercle[0] - cx) / ax, -(tubercle[1] - cy) / ay)
            start = float(np.clip(start, 0.15, 1.2))
            reach = {11: 0.45, 12: 0.3, 13: 0.2}.get(rib_no, 0.85 if rib_no <= 10 else 0.5)
            end = start + reach * (np.pi - 0.35 - start)
            angles = np.linspace(start, end, 14)
            travelled = (angles - start) * 0.5 * (ax + ay)
            shaft = np.stack([cx + sign * ax * np.sin(angles), cy - ay * np.cos(angles),
                              tubercle[2] - slope * travelled * (1.3 if rib_no == 1 else 1.0)], axis=1)
            chain = np.vstack([head, tubercle, shaft])
            out.append(_tube("rib_marrow", chain, radius, layer=20, cortex_mm=1.2, cortex_material="cortical"))
            if rib_no <= 10:  # costal cartilage: true ribs to the sternum, 8-10 rise to the costal margin
                target = sternum[min(rib_no // 3 + 1, 3)] if rib_no <= TRUE_RIBS else sternum[3] + np.array(
                    [sign * 25.0 * (rib_no - 7), -5.0, -8.0 * (rib_no - 7)])
                target = target + np.array([sign * 12.0, 0.0, 0.0])
                out.append(_tube("cartilage", [shaft[-1], 0.5 * (shaft[-1] + target) + np.array([0, 8.0, 0]), target],
                                 radius * 0.9, layer=19))
    return out


def _shoulders_and_arms(levels: dict[int, Vertebra], z_of: dict[int, float], trunk: Trunk,
                        arms_down: bool, rng: np.random.Generator) -> list[Solid]:
    """Clavicles, scapulae on the back of the ribcage, humeral heads; with the arms down, the arms beside the trunk."""
    u = rng.uniform
    out: list[Solid] = []
    t1, t4 = levels[8], levels[11]
    rx, ry, back = (float(a[0]) for a in trunk.at(np.array([z_of[8]])))
    cy = float(t1.centre[1]) - back + ry
    for sign in (-1.0, 1.0):
        shoulder = np.array([t1.centre[0] + sign * (rx - 25.0), cy - ry * 0.25, z_of[8] + u(0, 20)])
        out.append(_ellipsoid("long_bone_marrow", shoulder, [u(20, 25)] * 3, layer=21, cortex_mm=2.0))
        medial = np.array([t1.centre[0] + sign * 18.0, cy + ry * 0.75, z_of[8] + u(5, 20)])
        middle = 0.5 * (medial + shoulder) + np.array([0.0, 18.0, 8.0])
        out.append(_tube("long_bone_marrow", [medial, middle, shoulder + np.array([0, 10.0, 12.0])], u(5, 7),
                         layer=21, cortex_mm=2.0))
        blade = np.array([t4.centre[0] + sign * u(70, 95), t4.centre[1] - u(40, 60), z_of[11] + u(-20, 10)])
        turn = _rotation_z(sign * u(0.35, 0.7))
        out.append(_ellipsoid("rib_marrow", blade, [u(40, 55), u(2.5, 4.0), u(60, 80)], turn, layer=21,
                              cortex_mm=1.0, cortex_material="cortical"))
        out.append(_tube("rib_marrow", [blade + np.array([-sign * 40.0, -4.0, 30.0]), shoulder + np.array([0, -15.0, 15.0])],
                         u(4, 6), layer=21, cortex_mm=1.0, cortex_material="cortical"))
        if arms_down:
            elbow = np.array([shoulder[0] + sign * u(20, 40), cy - ry * u(0.1, 0.4), z_of[21] + u(-20, 30)])
            wrist = elbow + np.array([sign * u(-10, 20), u(20, 80), -u(200, 250)])
            out.append(_tube("muscle", [shoulder, elbow, wrist], [u(40, 50), u(35, 45), u(25, 30)], layer=1))
            out.append(_tube("long_bone_marrow", [shoulder, elbow], u(10, 13), layer=21, cortex_mm=3.5))
            for offset in (-8.0, 8.0):
                out.append(_tube("long_bone_marrow", [elbow + np.array([offset, 0, 0]), wrist + np.array([offset, 0, 0])],
                                 u(5, 7), layer=21, cortex_mm=2.5))
    return out


def _pelvis(z_of: dict[int, float], last_lumbar: int, sacral: list[Vertebra], rng: np.random.Generator) -> list[Solid]:
    """Sacral alae, iliac wings flaring from the sacroiliac joints with their crests at L4-L5, acetabula, femoral
    heads and shafts, pubic rami."""
    u = rng.uniform
    s1 = sacral[0]
    out: list[Solid] = []
    crest = z_of[last_lumbar] + u(-10, 25)
    for sign in (-1.0, 1.0):
        ala = s1.centre + s1.frame @ np.array([sign * u(30, 40), -u(0, 8), -2.0])
        out.append(_ellipsoid("rib_marrow", ala, [u(18, 24), u(14, 20), u(16, 22)], layer=22, cortex_mm=1.5,
                              cortex_material="cortical"))
        wing_height = u(55, 75)
        wing = np.array([s1.centre[0] + sign * u(70, 90), s1.centre[1] + u(10, 35), crest - wing_height])
        flare = _rotation_z(sign * u(0.5, 0.9))
        out.append(_ellipsoid("rib_marrow", wing, [u(8, 12), u(55, 75), wing_height], flare, layer=22,
                              cortex_mm=1.8, cortex_material="cortical"))
        acetabulum = np.array([s1.centre[0] + sign * u(85, 105), s1.centre[1] + u(45, 70), float(s1.centre[2]) - u(75, 100)])
        out.append(_tube("rib_marrow", [ala + np.array([sign * 25.0, 0, -10.0]), acetabulum], u(16, 22), layer=22,
                         cortex_mm=1.8, cortex_material="cortical"))
        out.append(_ellipsoid("long_bone_marrow", acetabulum + np.array([sign * 8.0, 0, -5.0]), [u(21, 26)] * 3,
                              layer=22, cortex_mm=2.0))
        neck = acetabulum + np.array([sign * 45.0, -5.0, -35.0])
        out.append(_tube("long_bone_marrow", [acetabulum, neck, neck + np.array([sign * 5.0, 0, -200.0])], u(12, 15),
                         layer=22, cortex_mm=3.5))
        pubis = np.array([s1.centre[0] + sign * 12.0, s1.centre[1] + u(100, 130), acetabulum[2] - u(10, 30)])
        out.append(_tube("rib_marrow", [acetabulum, pubis], u(8, 11), layer=22, cortex_mm=1.5, cortex_material="cortical"))
        ischium = acetabulum + np.array([-sign * 15.0, -u(15, 30), -u(40, 55)])
        out.append(_tube("rib_marrow", [acetabulum, ischium, pubis + np.array([0, -10.0, -15.0])], u(9, 13), layer=22,
                         cortex_mm=1.5, cortex_material="cortical"))
    bladder = np.array([s1.centre[0], s1.centre[1] + u(90, 115), float(s1.centre[2]) - u(70, 100)])
    out.append(_ellipsoid("bladder", bladder, [u(25, 45), u(20, 35), u(20, 40)], layer=3))
    return out


def _head(spine: Spine, levels: dict[int, Vertebra], z_of: dict[int, float], rng: np.random.Generator) -> list[Solid]:
    """Skull base (a shell with the foramen magnum left open by the spinal canal), occipital condyles, mandible."""
    u = rng.uniform
    c1, c3 = levels[1], levels[3]
    s = spine.scale
    radii = np.array([70.0, 90.0, 75.0]) * s
    out = [Solid("shell", "compact", c1.centre + np.array([0.0, -u(0, 10) * s, radii[2] + u(10, 20)]), radii,
                 thickness=u(5, 9), cortex_mm=2.0, layer=23, hole_mm=17.0 * s)]
    for sign in (-1.0, 1.0):
        out.append(_ellipsoid("rib_marrow", c1.centre + np.array([sign * 14 * s, 0.0, 9.0]), [7.0, 9.0, 5.0],
                              layer=23, cortex_mm=1.5, cortex_material="cortical"))
    jaw = c3.centre[2] + u(-5, 10)
    mandible = [np.array([c1.centre[0] - 45 * s, c1.centre[1] + 20.0, z_of[1] + 15.0]),
                np.array([c1.centre[0] - 45 * s, c1.centre[1] + 30.0, jaw]),
                np.array([c1.centre[0], c1.centre[1] + 85.0 * s, jaw - 5.0]),
                np.array([c1.centre[0] + 45 * s, c1.centre[1] + 30.0, jaw]),
                np.array([c1.centre[0] + 45 * s, c1.centre[1] + 20.0, z_of[1] + 15.0])]
    out.append(_tube("rib_marrow", mandible, u(6, 8), layer=23, cortex_mm=2.5))
    return out


def _fixation(levels: dict[int, Vertebra], rng: np.random.Generator) -> list[Solid]:
    """Posterior instrumentation: pedicle screws into two to four adjacent bodies joined by rods."""
    candidates = [label for label in range(14, 25) if label in levels]
    count = int(rng.integers(2, 5))
    first = int(rng.integers(0, max(len(candidates) - count, 0) + 1))
    chosen = [levels[label] for label in candidates[first:first + count]]
    out: list[Solid] = []
    for sign in (-1.0, 1.0):
        heads = []
        for v in chosen:
            entry = v.centre + v.frame @ np.array([sign * (v.canal[0] + v.arch), -(v.b + 2 * v.canal[1] + 8.0), 0.1 * v.h])
            tip = v.centre + v.frame @ np.array([sign * v.a * 0.25, v.b * 0.4, 0.0])
            out.append(_tube("metal", [entry, tip], 3.0, layer=30))
            heads.append(entry + v.frame @ np.array([0.0, -6.0, 0.0]))
        out.append(_tube("metal", heads, 2.8, layer=30))
    return out
