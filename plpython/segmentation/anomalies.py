"""Anomaly scoring: off-axis residuals and segment outliers, thresholds frozen at calibration.

Two scores per player:

* ``residual`` (off-axis) - how far the player's feature *combination* lies off the
  behaviour axes, i.e. breaks the correlation structure (24 h of play a day with thousands
  of sessions, heavy buying with no play). With ``r = z - z B B^T`` the off-axis part of
  the standardised row and ``j`` the player's primary segment, the score is
  ``||r - rho_j||^2 / s_j``: distance from the segment's own off-axis centre ``rho_j``
  (mean ``r`` of its members) in units of its typical off-axis spread ``s_j`` (median of
  ``||r - rho_j||^2`` over its members) - a shared-basis mixture of probabilistic PCAs.
  This matters for heterogeneous but legitimate segments: whales vary in price per
  purchase, which no population axis describes, so a global residual flags the biggest
  spenders merely for spending. ``rho_j`` and ``s_j`` are estimated only from members in
  the bulk of the population residual ``||r||^2`` (see the threshold rule), so anomalies
  sharing a segment do not widen it; and **only established segments** - at least
  ``ESTABLISHED_FACTOR x contamination`` (1x) of all players are such bulk members - get
  their own; others use ``rho = 0`` and the population median of ``||r||^2``. A cluster of
  anomalies (at most ``contamination`` of the players by assumption) therefore cannot make
  itself normal by owning a segment.
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
~2%). Gross outliers are always flagged, and planted anomalies cannot raise the thresholds
above themselves as a plain quantile would let 2% of bots hide behind a 1% quantile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.axes import Axes
from segmentation.membership import MembershipModel

ROBUST_C = 5.0
ESTABLISHED_FACTOR = 1.0
TAIL_Z = 0.5
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
    """Frozen anomaly model for k segments over p prepared features.

    ``segment_offsets`` (k, p) off-axis centres ``rho_j`` (z-units; zero rows for segments
    that are not established), ``segment_scales`` (k,) off-axis spreads ``s_j`` (z-units^2),
    ``tail_directions`` (k, d) in {-1, 0, +1}: the direction on each axis in which a segment
    is characteristic (sign of its mean where ``|mean| >= TAIL_Z``), used by the one-sided
    outlier score; thresholds on the residual score (dimensionless) and the outlier score
    (z-units^2). ``calibration_rate`` is the share flagged on the calibration population.
    """

    residual_threshold: float
    outlier_threshold: float
    contamination: float
    segment_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    segment_scales: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tail_directions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    calibration_rate: float = 0.0
    robust_c: float = ROBUST_C

    def __post_init__(self) -> None:
        self.segment_scales = np.asarray(self.segment_scales, dtype=np.float64).reshape(-1)
        k = self.segment_scales.shape[0]
        self.segment_offsets = np.asarray(self.segment_offsets, dtype=np.float64).reshape(k, -1)
        self.offset_sq = np.einsum("jp,jp->j", self.segment_offsets, self.segment_offsets)
        self.tail_directions = np.asarray(self.tail_directions, dtype=np.float64).reshape(k, -1)

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

    def residual_scores(self, Z: np.ndarray, primary: np.ndarray, axes: Axes) -> np.ndarray:
        """Segment-relative off-axis score (n,) of ``Z`` (n, p) given primary segments (n,).

        ``||r - rho_j||^2 = ||r||^2 - 2 z.rho_j + ||rho_j||^2`` because ``rho_j`` lies in the
        off-axis complement (it is a mean of residuals), so ``r.rho_j = z.rho_j``.
        """
        Z = np.asarray(Z, dtype=np.float64)
        primary = np.asarray(primary, dtype=np.intp)
        cross = np.einsum("ip,ip->i", Z, self.segment_offsets[primary])
        r2 = axes.residual_sq(Z) - 2.0 * cross + self.offset_sq[primary]
        return np.maximum(r2, 0.0) / self.segment_scales[primary]

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

        ``primary`` (n,) defaults to the most probable segment under ``membership``.
        """
        if primary is None:
            primary = np.argmax(membership.log_prob(S), axis=1)
        return self.classify(
            self.residual_scores(Z, primary, axes), self.outlier_scores(S, membership)
        )

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
    k, p = membership.n_segments, Z.shape[1]
    primary = np.argmax(membership.log_prob(S), axis=1)
    R = Z - (Z @ axes.basis) @ axes.basis.T
    population_scale = max(float(np.median(np.einsum("ip,ip->i", R, R))), _MIN_SCALE)

    offsets = np.zeros((k, p))
    scales = np.full(k, population_scale)
    # Segment centres and spreads come from members inside the population's residual bulk:
    # anomalies sharing a segment with legitimate players must not widen it.
    bulk = bulk_mask(np.einsum("ip,ip->i", R, R))
    n = Z.shape[0]
    for j in range(k):
        in_bulk = bulk & (primary == j)
        count = int(in_bulk.sum())
        if count < max(2, p + 1) or count < ESTABLISHED_FACTOR * contamination * n:
            continue
        members = R[in_bulk]
        # Coordinate-wise median: anomalies sharing an established segment (fraud next to
        # whales) must not drag its centre. Projected back into the off-axis complement,
        # which residual_scores relies on.
        centre = np.median(members, axis=0)
        offsets[j] = centre - axes.basis @ (axes.basis.T @ centre)
        centred = members - offsets[j]
        scales[j] = max(float(np.median(np.einsum("ip,ip->i", centred, centred))), _MIN_SCALE)

    means = membership.segments.means
    model = AnomalyModel(
        residual_threshold=1.0,
        outlier_threshold=1.0,
        contamination=float(contamination),
        segment_offsets=offsets,
        segment_scales=scales,
        tail_directions=np.where(np.abs(means) >= TAIL_Z, np.sign(means), 0.0),
    )
    residual = model.residual_scores(Z, primary, axes)
    outlier = model.outlier_scores(S, membership)
    t_res = robust_threshold(residual, contamination)
    t_out = robust_threshold(outlier, contamination)
    combined = np.maximum(residual / t_res, outlier / t_out)
    bulk = bulk_mask(residual) & bulk_mask(outlier)
    factor = float(np.quantile(combined[bulk], 1.0 - contamination)) if bulk.any() else 1.0
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
    offset: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Features that explain one player's anomaly, strongest first (at most ``top``).

    ``z_row`` (p,) is the standardised row; ``offset`` (p,) the primary segment's off-axis
    centre (``AnomalyModel.segment_offsets[j]``, default 0). For ``kind == "off-axis"``
    features are ranked by |off-axis component - offset| (what breaks the usual feature
    combination); otherwise by |z| (what is extreme). Each dict: ``feature``, ``z``,
    ``residual`` (off-axis component relative to the segment, z-units), ``direction``
    ("high" | "low": sign of the ranking quantity, i.e. relative to the population, or for
    off-axis relative to what the player's axis scores and segment predict).
    """
    z = np.asarray(z_row, dtype=np.float64).reshape(-1)
    resid = z - axes.basis @ (axes.basis.T @ z)
    if offset is not None:
        resid = resid - np.asarray(offset, dtype=np.float64).reshape(-1)
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
