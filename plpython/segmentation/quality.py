"""Segmentation quality measures (sklearn metrics; nothing here is on the scoring path)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.metrics.cluster import contingency_matrix

Labeller = Callable[[np.ndarray], np.ndarray]


def matched_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Accuracy (0..1) under the best one-to-one matching of predicted to true labels.

    Both (n,). The matching maximises agreement on the contingency table; rows of predicted
    clusters left without a partner (more predicted than true clusters) count as wrong.
    """
    labels_true = np.asarray(labels_true)
    if labels_true.size == 0:
        return float("nan")
    table = contingency_matrix(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum()) / labels_true.size


def ari(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (n,)."""
    return float(adjusted_rand_score(labels_a, labels_b))


def nmi(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Normalised mutual information of two labelings (n,)."""
    return float(normalized_mutual_info_score(labels_a, labels_b))


def separation(S: np.ndarray, labels: np.ndarray, sample: int = 5000, seed: int = 0) -> dict:
    """Silhouette (on a random sample of ``sample`` rows) and Davies-Bouldin of ``S`` (n, d).

    Silhouette is quadratic in n, hence the sample; Davies-Bouldin is linear and uses all
    rows. Both are NaN when fewer than two clusters are present.
    """
    S = np.asarray(S, dtype=np.float64)
    labels = np.asarray(labels)
    n = S.shape[0]
    if len(np.unique(labels)) < 2:
        return {"silhouette": float("nan"), "davies_bouldin": float("nan"), "silhouette_sample": 0}
    idx = np.arange(n)
    if n > sample:
        idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    sub = labels[idx]
    n_sub = len(np.unique(sub))
    sil = float(silhouette_score(S[idx], sub)) if 1 < n_sub < len(idx) else float("nan")
    return {
        "silhouette": sil,
        "davies_bouldin": float(davies_bouldin_score(S, labels)),
        "silhouette_sample": len(idx),
    }


def bootstrap_stability(
    S_or_Z: np.ndarray,
    fit_fn: Callable[[np.ndarray], Labeller],
    n_boot: int = 3,
    seed: int = 0,
    reference_labels: np.ndarray | None = None,
    boot_size: int | None = None,
) -> float:
    """Mean ARI between reference labels and labels from models refit on bootstrap resamples.

    ``fit_fn(X_sample)`` fits a model and returns a labeller ``X (n, .) -> labels (n,)``.
    Every refit is evaluated on the full ``S_or_Z`` (n, .) against ``reference_labels``
    (default: ``fit_fn(S_or_Z)(S_or_Z)``). ``boot_size`` (default n) rows are drawn with
    replacement per resample. 1 = perfectly stable, ~0 = no better than chance.
    """
    X = np.asarray(S_or_Z)
    n = X.shape[0]
    if n_boot <= 0:
        return float("nan")
    if reference_labels is None:
        reference_labels = fit_fn(X)(X)
    rng = np.random.default_rng(seed)
    m = n if boot_size is None else min(n, int(boot_size))
    scores = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=m)
        scores.append(adjusted_rand_score(reference_labels, fit_fn(X[idx])(X)))
    return float(np.mean(scores))
