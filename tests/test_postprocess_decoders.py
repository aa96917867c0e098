"""Sequence decoders on sequences built from the real VerSe 2019 centroids (tests/data/verse19-landmarks)."""

from __future__ import annotations

import numpy as np
import pytest

from vertseg.bench.decoders import CSV_LEVELS, benchmark, load_landmarks, longest_run, simulate
from vertseg.labels import C1_L5, L6
from vertseg.postprocess import decode_dp, decode_paper


@pytest.fixture(scope="module")
def landmarks(test_data):
    return load_landmarks(test_data / "verse19-landmarks" / "landmarks.csv")


@pytest.fixture(scope="module")
def table(landmarks):
    return benchmark(repeats=1, seed=1, landmarks=landmarks)


def test_landmarks_are_read_in_cranio_caudal_order(landmarks):
    assert len(landmarks) == 80
    labels, xyz = longest_run(landmarks["verse004"])
    assert labels.tolist() == list(range(16, 25))  # T9..L5, as in the VerSe sample mask of the same subject
    assert np.all(np.diff(xyz[:, 2]) < 0)  # z falls from T9 to L5 in this frame
    assert sum(not np.isnan(points[CSV_LEVELS.index(L6), 0]) for points in landmarks.values()) == 3


def test_confident_real_sequences_decode_exactly(landmarks):
    for points in landmarks.values():
        labels, xyz = longest_run(points)
        labels = labels[labels != L6]
        probs = np.full((labels.size, 24), 0.01)
        probs[np.arange(labels.size), labels - 1] = 0.9
        assert decode_dp(probs, C1_L5, centroids_mm=xyz[: labels.size]).labels.tolist() == labels.tolist()
        assert decode_paper(probs, C1_L5).labels.tolist() == labels.tolist()


def test_missing_vertebra_shows_as_a_long_step_on_real_spacing(landmarks):
    rng = np.random.default_rng(3)
    cases = [c for points in landmarks.values() if (c := simulate(points, "missing", rng)) is not None]
    assert len(cases) > 50
    for case in cases:
        assert np.count_nonzero(np.diff(case.truth) == 2) == 1  # exactly one level missing in the truth


def test_decoder_accuracy_table(table):
    dp, paper, argmax = (lambda s, d=d: table[s][d][0] for d in ("dp", "paper", "argmax"))
    for scenario in ("partial_fov", "noisy", "duplicate"):
        assert dp(scenario) >= paper(scenario) and dp(scenario) > argmax(scenario)
    assert dp("partial_fov") > 0.97
    assert dp("duplicate") > 0.95
    # A missed vertebra breaks strict consecutiveness; the gap-aware variant reads it from the centroid spacing.
    assert table["missing"]["dp"][0] < 0.9 and table["missing"]["dp_gaps"][0] > 0.97
    # L6: only the L6-aware decoder can name it; it must not cost accuracy on ordinary spines.
    assert table["l6"]["dp_l6"][0] > 0.97 and table["l6"]["dp"][0] < 0.5
    assert table["partial_fov"]["dp_l6"][0] >= table["partial_fov"]["dp"][0] - 0.01
