"""Clinical-CT phantoms (`vertseg synth --size ct`): the body around the spine that real scans show and a network
must not call a vertebra, per-case tissue values, a clinical field of view; only vertebrae are labelled."""

from __future__ import annotations

import numpy as np
import pytest

from vertseg.data.synth import make_phantom
from vertseg.data.synth.acquisition import acquire
from vertseg.data.synth.anatomy import sample_spine
from vertseg.data.synth.body import RIBBED, sample_body
from vertseg.data.synth.grid import Grid
from vertseg.data.synth.render_body import render_body
from vertseg.data.synth.scan import SIZES, Phantom
from vertseg.data.synth.tissues import sample_tissues


@pytest.fixture(scope="module")
def chest() -> Phantom:
    """A whole-body section from T5 to L3 at 2.5 mm: the field of view placed by hand, the rest as `make_phantom`."""
    rng = np.random.default_rng(3)
    spine = sample_spine(rng)
    body = sample_body(spine, rng)
    tissues = sample_tissues(rng)
    centres = {v.label: v.centre for v in spine.labeled}
    top, bottom = centres[12][2] + 20.0, centres[22][2] - 20.0
    middle = np.array([centres[16][0], centres[16][1] + 40.0, 0.5 * (top + bottom)])
    shape = np.array([160, 160, int((top - bottom) / 2.5)])
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    affine[:3, 3] = middle - 2.5 * (shape - 1) / 2.0
    grid = Grid(tuple(int(n) for n in shape), affine)
    hu, labels, core = render_body(spine, body, tissues, grid)
    hu = acquire(hu, core, grid, tissues, rng)
    return Phantom(hu, labels, affine, ("R", "A", "S"), {}, (), spine)


def test_clinical_phantom_is_deterministic_and_fits_its_voxel_budget():
    a = make_phantom(np.random.default_rng(5), "ct")
    b = make_phantom(np.random.default_rng(5), "ct")
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    assert max(a.hu.shape) <= SIZES["ct"].max_voxels + 1 and a.hu.dtype == np.int16


def test_only_vertebrae_are_labelled_among_much_other_bone(chest):
    hu, labels = chest.hu, chest.labels
    assert set(np.unique(labels)) - {0} <= set(range(1, 29))
    bone_outside = np.count_nonzero((hu > 350) & (labels == 0))
    assert bone_outside > 0.5 * np.count_nonzero(labels)  # ribs, sternum, scapulae, pelvis ... are not labelled
    assert np.count_nonzero(hu < -700) > 0.05 * hu.size  # air around the body and in the lungs


def test_lungs_sit_in_the_chest_beside_the_thoracic_spine(chest):
    spacing = np.linalg.norm(chest.affine[:3, :3], axis=0)
    t8 = np.argwhere(chest.labels == 15)
    z = int(round(t8[:, 2].mean()))
    plane = chest.hu[:, :, z]
    centre_x = t8[:, 0].mean()
    left, right = plane[: int(centre_x - 40 / spacing[0])], plane[int(centre_x + 40 / spacing[0]):]
    assert (left < -700).mean() > 0.1 and (right < -700).mean() > 0.1  # both lungs at T8
    l3 = np.argwhere(chest.labels == 22)
    if l3.size:
        below = chest.hu[:, :, int(round(l3[:, 2].mean()))]
        assert (below < -700).mean() < (plane < -700).mean()  # the abdomen has (almost) no lung


def test_ribs_come_from_thoracic_vertebrae_and_the_iliac_crests_reach_the_lower_lumbar_spine():
    rng = np.random.default_rng(0)
    spine = sample_spine(rng)
    body = sample_body(spine, rng)
    levels = {v.label: v for v in spine.labeled}
    ribs = [s for s in body.solids if s.kind == "tube" and s.material == "rib_marrow" and len(s.points) > 10]
    heads = [min(levels, key=lambda k: np.linalg.norm(levels[k].centre - r.points[0])) for r in ribs]
    assert sorted(set(heads)) == [k for k in RIBBED if k in levels]  # T1-T12, two each; no lumbar or cervical rib
    assert all(heads.count(k) == 2 for k in set(heads))
    wings = [s for s in body.solids if s.kind == "ellipsoid" and s.rotation is not None and s.material == "rib_marrow"
             and s.radii[0] < 15 and s.radii[1] > 50]
    assert len(wings) == 2
    crest = max(float(w.points[2] + w.radii[2]) for w in wings)
    assert levels[24].centre[2] - 40 < crest < levels[23].centre[2] + 30  # near the L4-L5 level
    sacrum = [v for v in spine.vertebrae if v.kind == "sacral"][0]
    assert all(w.points[2] < sacrum.centre[2] + 40 for w in wings)


def test_tissue_values_vary_between_cases_within_ct_ranges():
    tissues = [sample_tissues(np.random.default_rng(seed)) for seed in range(60)]
    phases = {t.phase for t in tissues}
    assert phases == {"none", "arterial", "venous"}
    arterial = [t.artery for t in tissues if t.phase == "arterial"]
    plain = [t.artery for t in tissues if t.phase == "none"]
    assert min(arterial) > 200 > max(plain)  # contrast makes the aorta as bright as bone
    cancellous = [t.cancellous for t in tissues]
    assert min(cancellous) < 140 and max(cancellous) > 200  # osteoporotic and dense bodies
    assert all(-1024 <= t.air < -980 and -130 < t.fat < -60 and t.cortical > t.cancellous for t in tissues)


def test_a_clinical_field_of_view_always_holds_a_whole_vertebra():
    """Seed [7, 7] placed its field of view below the sacrum: L4, L5 and an L6 were cut and the VerSe mask was empty,
    which preprocessing refuses. The field of view is drawn again until a vertebral body is in it."""
    phantom = make_phantom(np.random.default_rng([7, 7]), "ct", variant_rate=0.25)
    assert phantom.centroids_voxel and phantom.labels_without_partial().any()
