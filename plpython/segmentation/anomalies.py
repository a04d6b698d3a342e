"""Anomaly scoring: off-axis residuals and segment outliers, thresholds frozen at calibration.

Two scores per player:

* ``residual`` (off-axis) - how far the player's feature *combination* lies off the
  behaviour axes, i.e. breaks the correlation structure (24 h of play a day with hundreds
  of sessions, heavy buying without play). ``u = z V`` are the coordinates of the
  standardised row in the off-axis complement of the axes (``residual_basis`` V, p x m,
  the components PCA discarded), so ``||u||^2 = ||z - z B B^T||^2`` is the squared
  reconstruction error.

  The score is segment-relative: ``||u - rho_j||^2 / s_j`` for the player's primary segment
  j, with ``rho_j`` the segment's off-axis centre (coordinate-wise median of its members'
  ``u``) and ``s_j`` its typical spread (median of ``||u - rho_j||^2``) - a shared-basis
  mixture of probabilistic PCAs. This matters for heterogeneous but legitimate segments:
  whales vary in price per purchase, which no population axis describes, so a global
  residual flags the biggest spenders merely for spending. ``rho_j`` and ``s_j`` come only
  from members in the bulk of the population's ``||u||^2`` (threshold rule below), so
  anomalies sharing a segment do not widen it, and **only established segments** - at
  least half of the members (and ``MIN_ESTABLISHED`` = 20) are in that bulk - get their
  own; others use ``rho = 0`` and the population median of ``||u||^2``. Bots and fraud are
  gross outliers of the population residual, so a cluster of them cannot make itself
  normal by owning a segment, while a small legitimate segment (1% whales) can.
* ``outlier`` - the smallest *one-sided* squared Mahalanobis distance to any segment in
  axis space (extreme even for the closest segment), z-units^2. One-sided ("more of the
  same is not anomalous"): where a segment is characteristically high or low on an axis
  (``|mean| >= TAIL_Z`` = 0.5 axis sd; ``tail_directions``), a deviation *further* in that
  direction is not counted. The biggest whale of a few thousand sits 3-4 sd above the whale
  mean in log-spend - an outlier of any Gaussian segment, yet it is just a bigger whale; a
  grinder playing 12 h a day is just more of a grinder. Deviations in every other
  direction count in full, and combinations that break the feature structure (bots,
  fraud) are caught by ``residual`` regardless.

**Normalisation.** ``score = max(residual / residual_threshold, outlier /
outlier_threshold)``; ``is_anomaly = score > 1``; ``kind`` is the larger term
(``"off-axis"`` or ``"outlier"``), ``"none"`` when not anomalous.

**Threshold rule (robust bulk quantile).** For a score ``x`` on the calibration population
take ``q = sqrt(x)`` (closer to symmetric), its median ``m`` and MAD sigma ``s``; points
with ``q > m + ROBUST_C * s`` are gross outliers, the rest is the bulk. Each threshold
starts as the ``(1 - contamination)`` bulk quantile of its score; both are then multiplied
by the ``(1 - contamination)`` bulk quantile of the combined score so that the combined
false-alarm rate within the bulk is ``contamination`` (two separate 1% thresholds would flag
~2%). Gross outliers are flagged, so planted anomalies cannot raise the thresholds above
themselves (a plain 99% quantile lets 2% of bots hide). Safety cap: if that would flag more
than ``MAX_FLAG_FACTOR x contamination`` (5x) of the calibration population, thresholds
are raised to flag exactly that share - so many "gross outliers" are structure the axes
miss (raise ``variance_threshold``), not anomalies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.axes import Axes
from segmentation.membership import MembershipModel

ROBUST_C = 5.0
ESTABLISHED_SHARE = 0.5
MIN_ESTABLISHED = 20
TAIL_Z = 0.5
MAX_FLAG_FACTOR = 5.0
_MAD_TO_SIGMA = 1.4826
# Thresholds and scales are divisors; keep them away from 0 when a score is degenerate
# (e.g. the residual is identically 0 when every principal component is kept).
_MIN_SCALE = 1e-9

KINDS = ("none", "off-axis", "outlier")


@dataclass
class AnomalyScores:
    """Per-row anomaly results, all (n,): ``score`` (normalised, anomalous when > 1),
    ``is_anomaly`` bool, ``kind`` str in {"off-axis", "outlier", "none"}, ``residual`` (the
    segment-relative off-axis score, dimensionless: 1 = typical for the segment) and
    ``outlier`` (min one-sided squared Mahalanobis distance, z-units^2)."""

    score: np.ndarray
    is_anomaly: np.ndarray
    kind: np.ndarray
    residual: np.ndarray
    outlier: np.ndarray


@dataclass
class AnomalyModel:
    """Frozen anomaly model for k segments, d axes, p prepared features (module docstring).

    ``residual_basis`` (p, m) orthonormal basis of the off-axis complement (m = p - d);
    ``segment_offsets`` (k, m) off-axis centres ``rho_j`` in those coordinates (zero rows
    for segments that are not established);
    ``segment_scales`` (k,) off-axis spreads ``s_j``; ``tail_directions`` (k, d) in
    {-1, 0, +1}, the direction in which each segment is characteristic on each axis;
    ``residual_threshold`` (dimensionless) and ``outlier_threshold`` (z-units^2);
    ``calibration_rate`` is the share flagged on the calibration population.
    """

    residual_threshold: float
    outlier_threshold: float
    contamination: float
    residual_basis: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    segment_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    segment_scales: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tail_directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    calibration_rate: float = 0.0
    robust_c: float = ROBUST_C

    def __post_init__(self) -> None:
        self.segment_scales = np.asarray(self.segment_scales, dtype=np.float64).reshape(-1)
        k = self.segment_scales.shape[0]
        self.residual_basis = np.asarray(self.residual_basis, dtype=np.float64)
        if self.residual_basis.ndim != 2:
            raise ValueError("residual_basis must be a (p, m) matrix")
        m = self.residual_basis.shape[1]
        self.segment_offsets = np.asarray(self.segment_offsets, dtype=np.float64).reshape(k, m)
        self.tail_directions = np.asarray(self.tail_directions, dtype=np.float64)
        self.tail_directions = self.tail_directions.reshape(k, self.tail_directions.size // k)

    def residual_coordinates(self, Z: np.ndarray) -> np.ndarray:
        """Off-axis coordinates ``u`` (n, m) of standardised ``Z`` (n, p)."""
        return np.asarray(Z, dtype=np.float64) @ self.residual_basis

    def residual_scores(self, Z: np.ndarray, primary: np.ndarray) -> np.ndarray:
        """Segment-relative off-axis score ``||u - rho_j||^2 / s_j`` (n,), j = ``primary``."""
        primary = np.asarray(primary, dtype=np.intp)
        dev = self.residual_coordinates(Z) - self.segment_offsets[primary]
        return np.einsum("im,im->i", dev, dev) / self.segment_scales[primary]

    def outlier_scores(self, S: np.ndarray, membership: MembershipModel) -> np.ndarray:
        """One-sided min squared Mahalanobis distance (n,) of axis scores ``S`` (n, d)."""
        S = np.asarray(S, dtype=np.float64)
        means = membership.segments.means
        best = np.full(S.shape[0], np.inf)
        for j in range(membership.n_segments):
            delta = S - means[j]
            delta[delta * self.tail_directions[j] > 0.0] = 0.0
            y = delta @ membership.precision_cholesky[j]
            np.minimum(best, np.einsum("id,id->i", y, y), out=best)
        return best

    def classify(self, residual: np.ndarray, outlier: np.ndarray) -> AnomalyScores:
        """Normalise residual and outlier scores (n,) against the thresholds."""
        residual = np.asarray(residual, dtype=np.float64)
        outlier = np.asarray(outlier, dtype=np.float64)
        r = residual / self.residual_threshold
        o = outlier / self.outlier_threshold
        score = np.maximum(r, o)
        is_anomaly = score > 1.0
        kind = np.where(is_anomaly, np.where(r >= o, "off-axis", "outlier"), "none")
        return AnomalyScores(
            score=score, is_anomaly=is_anomaly, kind=kind, residual=residual, outlier=outlier
        )

    def score(
        self,
        Z: np.ndarray,
        S: np.ndarray,
        axes: Axes,
        membership: MembershipModel,
        primary: np.ndarray | None = None,
    ) -> AnomalyScores:
        """Score ``Z`` (n, p) with axis scores ``S = axes.scores(Z)`` (n, d).

        ``primary`` (n,) defaults to the most probable segment under ``membership``. ``axes``
        is only checked for consistency: the off-axis basis is frozen in the model.
        """
        if axes.weights.shape[0] != self.residual_basis.shape[0]:
            raise ValueError("anomaly model and axes disagree on the number of features")
        if primary is None:
            primary = np.argmax(membership.log_prob(S), axis=1)
        return self.classify(self.residual_scores(Z, primary), self.outlier_scores(S, membership))

    def classify_one(self, residual: float, outlier: float) -> tuple[float, bool, str]:
        """Scalar version of :meth:`classify`: (score, is_anomaly, kind)."""
        r = residual / self.residual_threshold
        o = outlier / self.outlier_threshold
        score = r if r >= o else o
        if score > 1.0:
            return score, True, "off-axis" if r >= o else "outlier"
        return score, False, "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "residual_threshold": float(self.residual_threshold),
            "outlier_threshold": float(self.outlier_threshold),
            "contamination": float(self.contamination),
            "residual_basis": self.residual_basis.tolist(),
            "segment_offsets": self.segment_offsets.tolist(),
            "segment_scales": self.segment_scales.tolist(),
            "tail_directions": self.tail_directions.tolist(),
            "calibration_rate": float(self.calibration_rate),
            "robust_c": float(self.robust_c),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnomalyModel:
        return cls(
            residual_threshold=float(d["residual_threshold"]),
            outlier_threshold=float(d["outlier_threshold"]),
            contamination=float(d["contamination"]),
            residual_basis=np.array(d["residual_basis"], dtype=np.float64),
            segment_offsets=np.array(d["segment_offsets"], dtype=np.float64),
            segment_scales=np.array(d["segment_scales"], dtype=np.float64),
            tail_directions=np.array(d["tail_directions"], dtype=np.float64),
            calibration_rate=float(d.get("calibration_rate", 0.0)),
            robust_c=float(d.get("robust_c", ROBUST_C)),
        )


def bulk_mask(values: np.ndarray, robust_c: float = ROBUST_C) -> np.ndarray:
    """Bool (n,): rows of a non-negative score that are not gross outliers (module rule)."""
    x = np.asarray(values, dtype=np.float64)
    q = np.sqrt(np.maximum(np.where(np.isfinite(x), x, np.inf), 0.0))
    finite = np.isfinite(q)
    if not finite.any():
        return finite
    m = float(np.median(q[finite]))
    s = _MAD_TO_SIGMA * float(np.median(np.abs(q[finite] - m)))
    return finite & (q <= m + robust_c * s)


def robust_threshold(values: np.ndarray, contamination: float, robust_c: float = ROBUST_C) -> float:
    """``(1 - contamination)`` quantile of a non-negative score (n,) over its bulk."""
    x = np.asarray(values, dtype=np.float64)
    bulk = x[bulk_mask(x, robust_c)]
    if bulk.size == 0:
        bulk = x[np.isfinite(x)]
    if bulk.size == 0:
        return 1.0
    return max(float(np.quantile(bulk, 1.0 - contamination)), _MIN_SCALE)


def _off_axis_basis(Z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Orthonormal basis (p, m) of the complement of ``basis`` (p, d), m = p - d.

    The principal directions of the off-axis part of ``Z``, with fixed signs, so the stored
    model is reproducible bit for bit.
    """
    p, d = basis.shape
    m = p - d
    if m == 0:
        return np.zeros((p, 0))
    P = np.eye(p) - basis @ basis.T
    C = P @ ((Z.T @ Z) / Z.shape[0]) @ P
    eigval, eigvec = np.linalg.eigh((C + C.T) / 2.0)
    V = eigvec[:, np.argsort(-eigval, kind="stable")[:m]]
    return V * np.where(V[np.argmax(np.abs(V), axis=0), np.arange(m)] < 0, -1.0, 1.0)


def fit_anomaly_model(
    Z: np.ndarray,
    S: np.ndarray,
    axes: Axes,
    membership: MembershipModel,
    contamination: float = 0.01,
) -> AnomalyModel:
    """Freeze the anomaly model on the calibration population ``Z`` (n, p), ``S`` (n, d)."""
    if not 0.0 < contamination < 0.5:
        raise ValueError("contamination must be in (0, 0.5)")
    Z = np.asarray(Z, dtype=np.float64)
    k = membership.n_segments
    primary = np.argmax(membership.log_prob(S), axis=1)
    basis = _off_axis_basis(Z, axes.basis)
    U = Z @ basis
    m = U.shape[1]
    norm_sq = np.einsum("im,im->i", U, U)
    population_scale = max(float(np.median(norm_sq)), _MIN_SCALE)

    offsets = np.zeros((k, m))
    scales = np.full(k, population_scale)
    # Segment centres and spreads come from members inside the population's residual bulk:
    # anomalies sharing a segment with legitimate players must not widen it.
    bulk = bulk_mask(norm_sq)
    for j in range(k):
        members = primary == j
        in_bulk = bulk & members
        count = int(in_bulk.sum())
        if count < max(MIN_ESTABLISHED, m + 1) or count < ESTABLISHED_SHARE * members.sum():
            continue
        # Coordinate-wise median: anomalies sharing an established segment (fraud next to
        # whales) must not drag its centre.
        offsets[j] = np.median(U[in_bulk], axis=0)
        dev = U[in_bulk] - offsets[j]
        scales[j] = max(float(np.median(np.einsum("im,im->i", dev, dev))), _MIN_SCALE)

    means = membership.segments.means
    model = AnomalyModel(
        residual_threshold=1.0,
        outlier_threshold=1.0,
        contamination=float(contamination),
        residual_basis=basis,
        segment_offsets=offsets,
        segment_scales=scales,
        tail_directions=np.where(np.abs(means) >= TAIL_Z, np.sign(means), 0.0),
    )
    residual = model.residual_scores(Z, primary)
    outlier = model.outlier_scores(S, membership)
    t_res = robust_threshold(residual, contamination)
    t_out = robust_threshold(outlier, contamination)
    combined = np.maximum(residual / t_res, outlier / t_out)
    in_bulk = bulk_mask(residual) & bulk_mask(outlier)
    factor = float(np.quantile(combined[in_bulk], 1.0 - contamination)) if in_bulk.any() else 1.0
    cap = float(np.quantile(combined, 1.0 - min(MAX_FLAG_FACTOR * contamination, 1.0)))
    factor = max(factor, cap, _MIN_SCALE)
    model.residual_threshold = t_res * factor
    model.outlier_threshold = t_out * factor
    model.calibration_rate = float(model.classify(residual, outlier).is_anomaly.mean())
    return model


def reasons(
    z_row: np.ndarray,
    feature_names: Sequence[str],
    axes: Axes,
    top: int = 3,
    kind: str | None = None,
    anomaly: AnomalyModel | None = None,
    segment: int | None = None,
) -> list[dict[str, Any]]:
    """Features that explain one player's anomaly, strongest first (at most ``top``).

    ``z_row`` (p,) is the standardised row. For ``kind == "off-axis"`` features are ranked by
    |off-axis deviation| (what breaks the usual feature combination); otherwise by |z| (what
    is extreme). The off-axis deviation is ``z - z B B^T``, or - given the ``anomaly`` model
    and the player's primary ``segment`` - the segment-relative deviation that the off-axis
    score measures, mapped back to features (``V (u - rho_j)``). Each dict:
    ``feature``, ``z``, ``residual`` (that deviation, z-units), ``direction`` ("high" |
    "low": sign of the ranking quantity - relative to the population, or for off-axis
    relative to what the player's axis scores and segment predict).
    """
    z = np.asarray(z_row, dtype=np.float64).reshape(-1)
    if anomaly is not None and segment is not None:
        u = z @ anomaly.residual_basis
        resid = anomaly.residual_basis @ (u - anomaly.segment_offsets[int(segment)])
    else:
        resid = z - axes.basis @ (axes.basis.T @ z)
    signed = resid if kind == "off-axis" else z
    order = np.argsort(-np.abs(signed), kind="stable")[: max(0, int(top))]
    return [
        {
            "feature": str(feature_names[j]),
            "z": float(z[j]),
            "residual": float(resid[j]),
            "direction": "high" if signed[j] >= 0 else "low",
        }
        for j in order
    ]
