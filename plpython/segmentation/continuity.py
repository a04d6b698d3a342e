"""Segment continuity across recalibrations: match new segments to previous ones.

Centroids of both taxonomies must be expressed in one space - the caller uses the NEW
standardised feature space (see :mod:`segmentation.calibration`). Matching is the optimal
one-to-one assignment (``scipy.optimize.linear_sum_assignment``) on Euclidean centroid
distances; an assigned pair farther apart than ``max_distance`` is left unmatched (the
segment is treated as new / retired).

**Default max distance** (:func:`default_max_distance`), per pair: half the distance from
either centre to its nearest neighbour on its own side, ``0.5 * min(nn_new[i],
nn_previous[j])``. A match must be unambiguous - closer than any split or merge of
neighbouring segments could explain. A global limit (e.g. half the median gap) is not
enough: when a segment splits in two and a small neighbour disappears, the optimal
assignment would hand the vanished neighbour's id to one half of the split even though
none of its players were ever in that segment. The rule is scale-free, so it works for any
number of features; identical data gives distance 0 and keeps every id.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist, squareform

DEFAULT_DISTANCE_FRACTION = 0.5


def _nearest_neighbour_distance(C: np.ndarray) -> np.ndarray:
    if C.shape[0] < 2:
        return np.full(C.shape[0], np.inf)
    D = squareform(pdist(C))
    np.fill_diagonal(D, np.inf)
    return D.min(axis=1)


def default_max_distance(
    previous_centroids: np.ndarray,
    new_centroids: np.ndarray,
    fraction: float = DEFAULT_DISTANCE_FRACTION,
) -> np.ndarray:
    """Per-pair limits (k1, k0): ``fraction * min(nn_new[i], nn_previous[j])`` (see above).

    ``nn`` is each centre's distance to the nearest other centre of the same taxonomy
    (infinite when it is alone).
    """
    prev = np.asarray(previous_centroids, dtype=np.float64)
    new = np.asarray(new_centroids, dtype=np.float64)
    return fraction * np.minimum.outer(
        _nearest_neighbour_distance(new), _nearest_neighbour_distance(prev)
    )


def match_segments(
    previous_centroids: np.ndarray,
    new_centroids: np.ndarray,
    max_distance: float | np.ndarray,
) -> dict[int, int]:
    """Map new segment index -> previous segment index.

    ``previous_centroids`` (k0, p) and ``new_centroids`` (k1, p) in the same space; pairs
    with distance > ``max_distance`` (a scalar or per-pair (k1, k0) limits) are dropped, so
    some new indices may be absent.
    """
    prev = np.asarray(previous_centroids, dtype=np.float64)
    new = np.asarray(new_centroids, dtype=np.float64)
    if prev.size == 0 or new.size == 0:
        return {}
    if prev.shape[1] != new.shape[1]:
        raise ValueError(f"centroid dimensions differ: {prev.shape[1]} vs {new.shape[1]}")
    distance = cdist(new, prev)
    limit = np.broadcast_to(np.asarray(max_distance, dtype=np.float64), distance.shape)
    rows, cols = linear_sum_assignment(distance)
    return {
        int(i): int(j) for i, j in zip(rows, cols, strict=True) if distance[i, j] <= limit[i, j]
    }
