"""Segment continuity across recalibrations: match new segments to previous ones.

Centroids of both taxonomies must be expressed in one space - the caller uses the NEW
standardised feature space (see :mod:`segmentation.calibration`). Matching is the optimal
one-to-one assignment (``scipy.optimize.linear_sum_assignment``) on Euclidean centroid
distances; an assigned pair farther apart than ``max_distance`` is left unmatched (the
segment is treated as new / retired).

**Default max distance** (:func:`default_max_distance`): half the median pairwise distance
between the new centroids. A segment that moved by more than half the typical gap between
segments is closer to being a different segment than the same one; the rule is scale-free,
so it works for any number of features.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist

DEFAULT_DISTANCE_FRACTION = 0.5


def default_max_distance(
    new_centroids: np.ndarray, fraction: float = DEFAULT_DISTANCE_FRACTION
) -> float:
    """``fraction`` x median pairwise Euclidean distance of ``new_centroids`` (k, p)."""
    C = np.asarray(new_centroids, dtype=np.float64)
    if C.shape[0] < 2:
        return float("inf")
    return fraction * float(np.median(pdist(C)))


def match_segments(
    previous_centroids: np.ndarray, new_centroids: np.ndarray, max_distance: float
) -> dict[int, int]:
    """Map new segment index -> previous segment index.

    ``previous_centroids`` (k0, p) and ``new_centroids`` (k1, p) in the same space; pairs
    with distance > ``max_distance`` are dropped, so some new indices may be absent.
    """
    prev = np.asarray(previous_centroids, dtype=np.float64)
    new = np.asarray(new_centroids, dtype=np.float64)
    if prev.size == 0 or new.size == 0:
        return {}
    if prev.shape[1] != new.shape[1]:
        raise ValueError(f"centroid dimensions differ: {prev.shape[1]} vs {new.shape[1]}")
    distance = cdist(new, prev)
    rows, cols = linear_sum_assignment(distance)
    return {
        int(i): int(j) for i, j in zip(rows, cols, strict=True) if distance[i, j] <= max_distance
    }
