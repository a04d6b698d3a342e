"""Matching new segments to previous ones by centroid."""

from __future__ import annotations

import numpy as np
import pytest
from segmentation.continuity import default_max_distance, match_segments

CENTROIDS = np.array(
    [[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 3.0, 3.0]]
)


def test_identical_centroids_match_themselves() -> None:
    assert match_segments(CENTROIDS, CENTROIDS, 1.0) == {i: i for i in range(5)}


def test_permuted_and_slightly_moved_centroids_are_matched_back() -> None:
    perm = np.array([3, 0, 4, 1, 2])
    moved = CENTROIDS[perm] + np.random.default_rng(0).normal(0, 0.1, CENTROIDS.shape)
    mapping = match_segments(CENTROIDS, moved, default_max_distance(CENTROIDS, moved))
    assert mapping == {new: int(old) for new, old in enumerate(perm)}


def test_far_pairs_stay_unmatched() -> None:
    new = CENTROIDS.copy()
    new[2] = [10.0, -10.0, 10.0]  # a genuinely new segment
    mapping = match_segments(CENTROIDS, new, default_max_distance(CENTROIDS, new))
    assert 2 not in mapping
    assert mapping == {0: 0, 1: 1, 3: 3, 4: 4}


def test_different_numbers_of_segments() -> None:
    split = np.vstack([CENTROIDS[:4], [[3.2, 0.1, 0.0]]])  # segment 1 appears twice
    mapping = match_segments(CENTROIDS[:4], split, 1.0)
    assert mapping[0] == 0 and mapping[2] == 2 and mapping[3] == 3
    assert sorted(mapping) in ([0, 1, 2, 3], [0, 2, 3, 4])  # one of the twins keeps id 1
    fewer = match_segments(CENTROIDS, CENTROIDS[[4, 1]], 1.0)
    assert fewer == {0: 4, 1: 1}
    assert match_segments(np.zeros((0, 3)), CENTROIDS, 1.0) == {}


def test_optimal_assignment_beats_greedy() -> None:
    # Greedy nearest-first pairs new 0 with previous 0 (1) and then new 1 with previous 1 (6):
    # total 7. The optimal assignment crosses over: 3 + 2 = 5.
    previous = np.array([[0.0], [4.0]])
    new = np.array([[1.0], [-2.0]])
    assert match_segments(previous, new, 10.0) == {0: 1, 1: 0}


def test_default_limit_is_half_the_nearest_neighbour_gap_on_either_side() -> None:
    previous = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    new = np.array([[0.0, 0.0], [9.0, 0.0], [10.0, 1.0]])
    limits = default_max_distance(previous, new)
    # nn gaps: previous (10, 10, 10); new (9, 1.41, 1.41)
    np.testing.assert_allclose(limits[0], [4.5, 4.5, 4.5])
    np.testing.assert_allclose(limits[1], [np.sqrt(2) / 2] * 3)
    assert np.isinf(default_max_distance(previous[:1], new[:1])).all()


def test_a_split_does_not_inherit_a_vanished_neighbours_id() -> None:
    # Previous: A, B and a small C close to B. New: A, and B split into B1/B2 near C.
    previous = np.array([[0.0, 0.0], [10.0, 0.0], [11.5, 0.0]])
    new = np.array([[0.0, 0.0], [9.8, 0.0], [10.6, 0.0]])
    assert match_segments(previous, new, 5.0) == {0: 0, 1: 1, 2: 2}  # a loose global limit
    assert match_segments(previous, new, default_max_distance(previous, new)) == {0: 0, 1: 1}
    # Scalar limits still work and an exact copy always matches.
    assert match_segments(new, new, default_max_distance(new, new)) == {0: 0, 1: 1, 2: 2}


def test_dimension_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        match_segments(CENTROIDS, CENTROIDS[:, :2], 1.0)
