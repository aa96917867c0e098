"""Spine phantoms: determinism, speed, anatomy drawn from the VerSe statistics, variants, geometry, CLI."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from vertseg.data.synth import RECORD_NAME, generate_dataset, make_phantom
from vertseg.data.synth.anatomy import level_sequence, sample_spine
from vertseg.data.synth.landmarks import distance_stats, parse_landmarks, verse19_distance_stats
from vertseg.data.synth.scan import SIZES, body_in_view, sample_grid
from vertseg.labels import L6, T13


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(np.random.default_rng([7, i]), "small") for i in range(4)]


def test_same_seed_same_phantom_and_cases_are_independent(tmp_path):
    """Case i depends only on (seed, i); the split plan may change with N (it keeps exact proportions)."""
    generate_dataset(tmp_path / "a", 1, "verse20", seed=5, multi_scan_rate=0)
    generate_dataset(tmp_path / "b", 2, "verse20", seed=5, multi_scan_rate=0)
    generate_dataset(tmp_path / "c", 1, "verse20", seed=5, multi_scan_rate=0)
    records = {k: json.loads((tmp_path / k / RECORD_NAME).read_text())["cases"] for k in "abc"}
    for case_a, case_b, case_c in zip(records["a"], records["b"], records["c"]):
        assert case_a["index"] == case_b["index"] and case_a["case_id"] == case_b["case_id"]
        assert case_a["centroids_ras"] == case_b["centroids_ras"] and case_a["affine_ras"] == case_b["affine_ras"]
        cases = zip("abc", (case_a, case_b, case_c))
        data = [np.asarray(nib.load(tmp_path / k / c["image"]).dataobj) for k, c in cases]
        assert np.array_equal(data[0], data[1]) and np.array_equal(data[0], data[2])
        assert case_a == case_c  # rerun with the same arguments: identical
    other = make_phantom(np.random.default_rng([6, 0]), "small")
    assert other.spine.centres()[other.spine.labeled[5].label].tolist() != (
        records["a"][0]["centroids_ras"][str(other.spine.labeled[5].label)]
    )


def test_small_case_renders_in_under_two_seconds():
    make_phantom(np.random.default_rng(0), "small")  # warm imports and caches
    start = time.process_time()  # CPU time of this process: robust to other jobs on the machine
    phantom = make_phantom(np.random.default_rng(1), "small")
    assert time.process_time() - start < 2.0
    assert max(phantom.hu.shape) <= SIZES["small"].max_voxels


def test_level_distances_follow_the_verse19_statistics():
    mean, std, count = verse19_distance_stats()
    assert count.sum() > 600 and 15 < mean[3] < 19 and 30 < mean[21] < 37  # C4-C5 ~17 mm, L2-L3 ~34 mm
    gaps = []
    for seed in range(20):
        spine = sample_spine(np.random.default_rng(seed))
        centres = np.stack([v.centre for v in spine.labeled])
        gaps.append(np.linalg.norm(centres[1:] - centres[:-1], axis=1))
    gaps = np.stack(gaps)  # (20, 23) for C1..L5
    z = np.abs(gaps.mean(axis=0) - mean[:23]) / std[:23]
    assert z.max() < 1.5, z
    assert gaps.std(axis=0).mean() > 0.5  # real spread, not a template


def test_spine_curvature_has_lordosis_and_kyphosis():
    spine = sample_spine(np.random.default_rng(3))
    c = {v.label: v.centre for v in spine.labeled}
    def bulge(top, middle, bottom):  # anterior (+y) offset of the middle level from the chord
        t = (c[middle][2] - c[top][2]) / (c[bottom][2] - c[top][2])
        return c[middle][1] - (c[top][1] + t * (c[bottom][1] - c[top][1]))
    assert bulge(2, 5, 7) > 0  # cervical lordosis: convex anteriorly
    assert bulge(8, 14, 19) < 0  # thoracic kyphosis: convex posteriorly
    assert bulge(20, 22, 24) > 0  # lumbar lordosis


def test_anatomy_centroids_sizes_ribs_and_not_a_threshold(phantoms):
    distances, bone_unlabeled, labeled_soft = [], [], []
    for phantom in phantoms:
        spacing = np.linalg.norm(phantom.affine[:3, :3], axis=0)
        for label, index in phantom.centroids_voxel.items():
            if label == 1:  # C1 has no body: its centroid lies in the ring, where the C2 dens is
                continue
            com = np.array(ndimage.center_of_mass(phantom.labels == label))
            distances.append(float(np.linalg.norm((com - index) * spacing)))
            assert phantom.labels[tuple(np.rint(index).astype(int))] == label
        bone, labeled = phantom.hu > 250, phantom.labels > 0
        bone_unlabeled.append((bone & ~labeled).sum() / bone.sum())
        labeled_soft.append((labeled & ~bone).sum() / labeled.sum())
    # body centroid sits anterior to the mask centre of mass, as in VerSe (9.5-14.9 mm there)
    assert 8.0 < np.median(distances) < 15.0 and min(distances) > 4.0
    assert np.mean(bone_unlabeled) > 0.1  # ribs, sacrum and cut vertebrae are bone but background
    assert np.mean(labeled_soft) > 0.05  # cancellous bone is darker than a bone threshold
    spine = phantoms[0].spine
    a = {v.label: v.a for v in spine.labeled}
    assert a[5] < a[14] < a[22]  # cervical < thoracic < lumbar bodies
    ribs = {v.label: v.rib_arc for v in spine.labeled}
    assert all(ribs[k] > 0 for k in range(8, 20)) and ribs[18] < ribs[14] and ribs[19] < ribs[18]
    assert not any(ribs[k] for k in range(20, 25))
    assert [v.kind for v in spine.vertebrae[:2]] == ["c1", "c2"] and spine.vertebrae[-1].kind == "sacral"


def test_variants_and_transitional_labels():
    assert level_sequence(l6=True)[-1] == L6 and T13 in level_sequence(t13=True)
    spine = sample_spine(np.random.default_rng(0), l6=True, t13=True, fracture=True)
    labels = [v.label for v in spine.labeled]
    assert labels.index(T13) == labels.index(19) + 1 and labels[-1] == L6
    assert sum(v.compression > 0 for v in spine.vertebrae) == 1
    phantom = make_phantom(np.random.default_rng(2), "small", l6=True)
    assert phantom.spine.variants["l6"]


def test_random_geometry_covers_orientations_spacing_and_partial_fields_of_view(phantoms):
    rng = np.random.default_rng(0)
    spine = sample_spine(rng)
    spacings, codes, coverage = [], set(), []
    for size in (name for name, preset in SIZES.items() if preset.scene == "spine"):
        for _ in range(30):
            code = ("R", "A", "S") if rng.random() < 0.5 else ("P", "I", "R")
            grid = sample_grid(spine, rng, SIZES[size], code)
            spacings.extend(np.linalg.norm(grid.affine[:3, :3], axis=0))
            codes.add(tuple(nib.aff2axcodes(grid.affine)))
            assert max(grid.shape) <= SIZES[size].max_voxels + 1
    assert 0.5 <= min(spacings) < 1.0 and 2.0 < max(spacings) <= 3.0
    assert codes == {("R", "A", "S"), ("P", "I", "R")}
    for phantom in phantoms:
        assert tuple(nib.aff2axcodes(phantom.affine)) == phantom.axcodes
        coverage.append(tuple(sorted(phantom.centroids_voxel)))
    assert len(set(coverage)) > 1 and all(len(c) < 24 for c in coverage)  # partial scans, different levels


def test_fields_of_view_show_every_level_about_equally_often():
    """Neck, chest and abdomen scans: C1 and L5 are in full view about as often as T9 (centring the field of view on
    the spine's middle had shown C1 in 15 % and T9 in 70 % of medium scans)."""
    in_view = np.zeros(25)
    for i in range(200):
        rng = np.random.default_rng([11, i])
        spine = sample_spine(rng)
        grid = sample_grid(spine, rng, SIZES["medium"], ("R", "A", "S"))
        for vertebra in spine.labeled:
            in_view[vertebra.label] += body_in_view(vertebra, grid)
    share = in_view[1:] / 200
    assert share.min() > 0.25 and share.max() / share.min() < 1.6, share.round(2)


def test_landmark_parsing_rejects_malformed_rows():
    with pytest.raises(ValueError, match="line 1"):
        parse_landmarks("verse001,1,2,3\n")
    row = "s1," + ",".join(["nan"] * 75)
    mean, _, count = distance_stats(parse_landmarks(row))
    assert count.sum() == 0 and mean.shape == (24,)


def test_cli_writes_a_layout_and_rejects_bad_options(tmp_path):
    from vertseg.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "ds"), "--cases", "1", "--layout", "nifti", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ds").rglob("*_0000.nii.gz"))) == 1
    again = runner.invoke(app, ["synth", str(tmp_path / "ds"), "--cases", "1", "--layout", "nifti"])
    assert again.exit_code == 2 and "not empty" in " ".join(again.output.split())  # rich wraps lines
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = runner.invoke(app, ["synth", str(tmp_path / "mine"), "--overwrite"])
    assert refused.exit_code == 2 and "not a synth output" in " ".join(refused.output.split())
    assert (tmp_path / "mine" / "notes.txt").exists()
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--layout", "verse2021"])
    assert bad.exit_code == 2 and "verse2021" in bad.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "x"), "--splits", "1,2"])
    assert bad.exit_code == 2 and "three fractions" in " ".join(bad.output.split())
