"""Quality measures: matched accuracy, separation, bootstrap stability."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from segmentation.quality import ari, bootstrap_stability, matched_accuracy, nmi, separation
from sklearn.cluster import KMeans


def _blobs(spread: float, n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = rng.integers(0, 3, n)
    return centres[labels] + spread * rng.standard_normal((n, 2)), labels


def _kmeans(k: int) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    def fit(X: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return KMeans(k, n_init=1, random_state=0).fit(X).predict

    return fit


def test_matched_accuracy_is_label_permutation_invariant() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(truth, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert matched_accuracy(truth, np.array([2, 2, 0, 1, 1, 1])) == pytest.approx(5 / 6)


def test_unmatched_predicted_clusters_count_as_wrong() -> None:
    truth = np.array([0, 0, 1, 1])
    # Predicted 2 gets true 1; predicted 0 gets true 0; predicted 1 has no partner left.
    assert matched_accuracy(truth, np.array([0, 1, 2, 2])) == pytest.approx(0.75)
    # Every row in its own cluster: only two rows can be matched.
    assert matched_accuracy(truth, np.arange(4)) == pytest.approx(0.5)


def test_ari_and_nmi_wrappers() -> None:
    a = np.array([0, 0, 1, 1])
    assert ari(a, 1 - a) == 1.0 and nmi(a, 1 - a) == pytest.approx(1.0)
    assert ari(a, np.array([0, 1, 0, 1])) < 0.0


def test_separation_distinguishes_clear_from_overlapping_groups() -> None:
    S, labels = _blobs(0.3)
    clear = separation(S, labels, sample=400, seed=0)
    S2, labels2 = _blobs(3.0)
    muddy = separation(S2, labels2, sample=400, seed=0)
    assert clear["silhouette"] > 0.8 and clear["davies_bouldin"] < 0.3
    assert muddy["silhouette"] < 0.2 and muddy["davies_bouldin"] > 1.0
    assert clear["silhouette_sample"] == 400
    single = separation(S, np.zeros(len(S), dtype=int))
    assert math.isnan(single["silhouette"]) and math.isnan(single["davies_bouldin"])


def test_bootstrap_stability_is_high_for_real_structure_and_low_for_noise() -> None:
    S, _ = _blobs(0.3)
    assert bootstrap_stability(S, _kmeans(3), n_boot=3, seed=0) > 0.95
    noise = np.random.default_rng(1).standard_normal((600, 2))
    assert bootstrap_stability(noise, _kmeans(6), n_boot=3, seed=0) < 0.8


def test_bootstrap_stability_uses_given_reference_labels_and_size() -> None:
    S, truth = _blobs(0.3)
    calls: list[int] = []

    def fit(X: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        calls.append(len(X))
        return _kmeans(3)(X)

    value = bootstrap_stability(S, fit, n_boot=2, seed=0, reference_labels=truth, boot_size=200)
    assert calls == [200, 200]
    assert value > 0.95
    assert math.isnan(bootstrap_stability(S, fit, n_boot=0))
