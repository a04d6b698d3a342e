"""Segments: a full-covariance Gaussian mixture over axis scores (sklearn GaussianMixture).

Automatic k (``n_segments == 0``) uses the **BIC elbow**: mixtures with k in
``[k_min, k_max']`` are fitted (on at most ``CURVE_SAMPLE`` rows), ``k_max'`` bounded so
that every component has on average at least ``MIN_ROWS_PER_PARAMETER`` rows per free
parameter. The selected k is the smallest k for which one more segment lowers BIC by less
than ``ELBOW_GAIN`` (3%) of the largest BIC improvement over ``k_min`` found on the grid
(the BIC minimum if no step is that small). Pure BIC minimum keeps adding components on
large, heavy-tailed populations (it picks 10-11 on the synthetic 7-archetype generator);
the elbow stops where extra segments stop paying for themselves. Each curve point uses at
least ``CURVE_MIN_INIT`` (5) EM restarts: an unlucky local optimum at one k makes a dip in
the curve that an elbow rule would mistake for the end of the gains.

Large populations (n > ``FIT_SAMPLE``): the ``n_init`` restarts run on a seeded sample of
``FIT_SAMPLE`` rows and the best of them seeds a single EM run on all rows, which still
converges on every row. This cuts the fit about 3x at 200k rows; like any restart scheme it
finds a local optimum, which may differ from the one full-data restarts would find.

Segments are ordered by descending weight, ties by means (lexicographic), so the same data
and seed always give the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.mixture import GaussianMixture

# Added to covariance diagonals (axis scores have unit variance, so this is negligible for
# real segments) to keep near-degenerate groups - e.g. all-zero spenders - invertible.
REG_COVAR = 1e-4
MAX_ITER = 300
CURVE_SAMPLE = 20_000
FIT_SAMPLE = 50_000
SILHOUETTE_SAMPLE = 2_000
ELBOW_GAIN = 0.03
CURVE_MIN_INIT = 5
MIN_ROWS_PER_PARAMETER = 5


@dataclass
class Segments:
    """Mixture parameters: ``weights`` (k,), ``means`` (k, d), ``covariances`` (k, d, d).

    d is the number of axes; all in axis-score units.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        k = self.weights.shape[0]
        self.means = np.asarray(self.means, dtype=np.float64).reshape(k, -1)
        d = self.means.shape[1]
        self.covariances = np.asarray(self.covariances, dtype=np.float64).reshape(k, d, d)

    @property
    def n_segments(self) -> int:
        return int(self.weights.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segments:
        return cls(
            weights=np.array(d["weights"], dtype=np.float64),
            means=np.array(d["means"], dtype=np.float64),
            covariances=np.array(d["covariances"], dtype=np.float64),
        )


@dataclass
class SegmentFit:
    """Result of :func:`fit_segments` on S (n, d).

    ``posteriors`` (n, k) and ``labels`` (n,) follow the ordered ``segments``; ``k_curve`` is
    one dict per candidate k (``k``, ``bic``, ``silhouette``) when k was chosen
    automatically, else a single entry for the fixed k.
    """

    segments: Segments
    posteriors: np.ndarray
    labels: np.ndarray
    k_curve: list[dict[str, float]] = field(default_factory=list)
    k_selected_by: str = "fixed"
    bic: float = float("nan")
    mean_log_likelihood: float = float("nan")
    converged: bool = True


def n_parameters(k: int, d: int) -> int:
    """Free parameters of a k-component full-covariance mixture in d dimensions."""
    return k * (d + d * (d + 1) // 2) + (k - 1)


def _mixture(k: int, seed: int, n_init: int, **init: Any) -> GaussianMixture:
    # scikit-learn loads on the first fit only: scoring sessions never import it.
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        n_components=k,
        covariance_type="full",
        reg_covar=REG_COVAR,
        max_iter=MAX_ITER,
        n_init=n_init,
        random_state=seed,
        **init,
    )


def _fit_mixture(S: np.ndarray, k: int, seed: int, n_init: int) -> GaussianMixture:
    n = S.shape[0]
    if n <= FIT_SAMPLE:
        return _mixture(k, seed, n_init).fit(S)
    rng = np.random.default_rng(seed)
    pilot = _mixture(k, seed, n_init).fit(S[np.sort(rng.choice(n, FIT_SAMPLE, replace=False))])
    return _mixture(
        k,
        seed,
        1,
        weights_init=pilot.weights_,
        means_init=pilot.means_,
        precisions_init=pilot.precisions_,
    ).fit(S)


def _choose_k(
    S: np.ndarray, seed: int, k_min: int, k_max: int, n_init: int,
    checkpoint: Callable[[], None] | None = None,
) -> tuple[int, list[dict[str, float]], str]:
    n, d = S.shape
    rng = np.random.default_rng(seed)
    sample = S if n <= CURVE_SAMPLE else S[np.sort(rng.choice(n, CURVE_SAMPLE, replace=False))]
    m = sample.shape[0]
    per_component = n_parameters(1, d) + 1
    upper = min(k_max, max(1, m // (MIN_ROWS_PER_PARAMETER * per_component)))
    lower = min(k_min, upper)
    sil_idx = (
        np.arange(m)
        if m <= SILHOUETTE_SAMPLE
        else np.sort(rng.choice(m, SILHOUETTE_SAMPLE, replace=False))
    )
    curve: list[dict[str, float]] = []
    for k in range(lower, upper + 1):
        gm = _mixture(k, seed, max(n_init, CURVE_MIN_INIT)).fit(sample)
        entry = {"k": k, "bic": float(gm.bic(sample))}
        labels = gm.predict(sample[sil_idx])
        n_labels = len(np.unique(labels))
        entry["silhouette"] = (
            float(_silhouette(sample[sil_idx], labels))
            if 1 < n_labels < len(sil_idx)
            else float("nan")
        )
        curve.append(entry)
        if checkpoint is not None:
            checkpoint()
    bics = np.array([c["bic"] for c in curve])
    best = float((bics[0] - bics).max())
    if best <= 0:
        return int(curve[0]["k"]), curve, "bic_elbow"
    small_step = np.flatnonzero(bics[:-1] - bics[1:] < ELBOW_GAIN * best)
    chosen = int(small_step[0]) if small_step.size else int(np.argmin(bics))
    return int(curve[chosen]["k"]), curve, "bic_elbow"


def _ordering(weights: np.ndarray, means: np.ndarray) -> np.ndarray:
    # np.lexsort sorts by the last key first: weight (descending) then mean coordinates.
    keys = [means[:, j] for j in range(means.shape[1] - 1, -1, -1)] + [-weights]
    return np.lexsort(keys)


def fit_segments(
    S: np.ndarray,
    n_segments: int,
    seed: int = 0,
    k_min: int = 2,
    k_max: int = 12,
    n_init: int = 3,
    checkpoint: Callable[[], None] | None = None,
) -> SegmentFit:
    """Fit the segment mixture on axis scores ``S`` (n, d).

    ``n_segments > 0`` fixes k; ``0`` selects k by the BIC elbow (module docstring).
    ``checkpoint`` is called between candidate fits; it may raise to abandon the fit
    (the database adapter uses it to honour a cancel or statement_timeout promptly).
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise ValueError(f"S must be (n, d), got shape {S.shape}")
    n = S.shape[0]
    if n_segments < 0:
        raise ValueError("n_segments must be >= 0")
    if n_segments == 0:
        k, curve, selected_by = _choose_k(S, seed, k_min, k_max, n_init, checkpoint)
    else:
        k, curve, selected_by = n_segments, [], "fixed"
    if k > n:
        raise ValueError(f"cannot fit {k} segments on {n} rows")

    gm = _fit_mixture(S, k, seed, n_init)
    order = _ordering(gm.weights_, gm.means_)
    segments = Segments(
        weights=gm.weights_[order],
        means=gm.means_[order],
        covariances=gm.covariances_[order],
    )
    posteriors = gm.predict_proba(S)[:, order]
    bic = float(gm.bic(S))
    if not curve:
        curve = [{"k": k, "bic": bic}]
    return SegmentFit(
        segments=segments,
        posteriors=posteriors,
        labels=np.argmax(posteriors, axis=1),
        k_curve=curve,
        k_selected_by=selected_by,
        bic=bic,
        mean_log_likelihood=float(gm.score(S)),
        converged=bool(gm.converged_),
    )


def _silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(X, labels))
