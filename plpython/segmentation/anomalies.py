"""Anomaly scoring: off-axis residuals and segment outliers, thresholds frozen at calibration.

Two raw scores per player, both squared distances in z-units:

* ``residual`` - ``||z - z B B^T||^2``, how far the player's feature *combination* lies off
  the behaviour axes (breaks the population's correlation structure: e.g. 24h of play a day
  with zero social activity);
* ``outlier`` - the smallest squared Mahalanobis distance to any segment in axis space
  (extreme even for the closest segment).

**Normalisation.** ``score = max(residual / residual_threshold, outlier /
outlier_threshold)``; ``is_anomaly = score > 1``; ``kind`` is the larger term
(``"off-axis"`` or ``"outlier"``), ``"none"`` when not anomalous.

**Threshold rule (robust quantile).** For each raw score ``x`` on the calibration
population: take ``r = sqrt(x)`` (closer to symmetric than the squared distance), its median
``m`` and MAD-based sigma ``s = 1.4826 * MAD``; points with ``r > m + ROBUST_C * s`` are gross
outliers. The threshold is the ``(1 - contamination)`` quantile of ``x`` over the remaining
(bulk) points. So ``contamination`` is the false-alarm rate within the bulk, and a few
percent of planted anomalies cannot raise the threshold above themselves (plain quantiles
would let 2% of bots hide behind a 1% quantile); gross outliers are always flagged.

Heavy-tailed but coherent players (whales) are handled upstream: spend is log-transformed
and the mixture has a component for them, so neither score is large for a whale profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmentation.axes import Axes
from segmentation.membership import MembershipModel

ROBUST_C = 5.0
_MAD_TO_SIGMA = 1.4826
# Thresholds are divisors; keep them away from 0 when a score is degenerate (e.g. residual
# is identically 0 when every principal component is kept).
_MIN_THRESHOLD = 1e-6

KINDS = ("none", "off-axis", "outlier")


@dataclass
class AnomalyScores:
    """Per-row anomaly results, all (n,): ``score`` (normalised, anomalous when > 1),
    ``is_anomaly`` bool, ``kind`` str in {"off-axis", "outlier", "none"}, and the raw
    ``residual`` / ``outlier`` squared distances (z-units^2)."""

    score: np.ndarray
    is_anomaly: np.ndarray
    kind: np.ndarray
    residual: np.ndarray
    outlier: np.ndarray


@dataclass
class AnomalyModel:
    """Frozen anomaly thresholds (z-units^2) plus the calibration statistics behind them.

    ``residual_median``/``outlier_median`` and ``calibration_rate`` (share flagged on the
    calibration population) are kept for reporting and drift checks.
    """

    residual_threshold: float
    outlier_threshold: float
    contamination: float
    residual_median: float = 0.0
    outlier_median: float = 0.0
    calibration_rate: float = 0.0
    robust_c: float = ROBUST_C

    def classify(self, residual: np.ndarray, outlier: np.ndarray) -> AnomalyScores:
        """Normalise raw scores (n,) against the thresholds (see module docstring)."""
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
        self, Z: np.ndarray, S: np.ndarray, axes: Axes, membership: MembershipModel
    ) -> AnomalyScores:
        """Score standardised ``Z`` (n, p) with axis scores ``S = axes.scores(Z)`` (n, d)."""
        return self.classify(axes.residual_sq(Z), membership.mahalanobis_min(S))

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
            "residual_median": float(self.residual_median),
            "outlier_median": float(self.outlier_median),
            "calibration_rate": float(self.calibration_rate),
            "robust_c": float(self.robust_c),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnomalyModel:
        return cls(**{k: float(d[k]) for k in cls.__dataclass_fields__ if k in d})


def robust_threshold(values: np.ndarray, contamination: float, robust_c: float = ROBUST_C) -> float:
    """Threshold for a non-negative squared-distance score (n,); rule in module docstring."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1.0
    r = np.sqrt(np.maximum(x, 0.0))
    m = float(np.median(r))
    s = _MAD_TO_SIGMA * float(np.median(np.abs(r - m)))
    bulk = x[r <= m + robust_c * s] if s > 0 else x[r <= m]
    if bulk.size == 0:
        bulk = x
    return max(float(np.quantile(bulk, 1.0 - contamination)), _MIN_THRESHOLD)


def fit_anomaly_model(
    Z: np.ndarray,
    S: np.ndarray,
    axes: Axes,
    membership: MembershipModel,
    contamination: float = 0.01,
) -> AnomalyModel:
    """Freeze anomaly thresholds on the calibration population ``Z`` (n, p), ``S`` (n, d)."""
    if not 0.0 < contamination < 0.5:
        raise ValueError("contamination must be in (0, 0.5)")
    residual = axes.residual_sq(Z)
    outlier = membership.mahalanobis_min(S)
    model = AnomalyModel(
        residual_threshold=robust_threshold(residual, contamination),
        outlier_threshold=robust_threshold(outlier, contamination),
        contamination=float(contamination),
        residual_median=float(np.median(residual)),
        outlier_median=float(np.median(outlier)),
    )
    model.calibration_rate = float(model.classify(residual, outlier).is_anomaly.mean())
    return model


def reasons(
    z_row: np.ndarray,
    feature_names: Sequence[str],
    axes: Axes,
    top: int = 3,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """Features that explain one player's anomaly, strongest first (at most ``top``).

    ``z_row`` (p,) is the standardised row. For ``kind == "off-axis"`` features are ranked by
    |off-axis residual component| (what breaks the usual feature combination); otherwise by
    |z| (what is extreme). Each dict: ``feature``, ``z`` (standardised value), ``residual``
    (off-axis component, z-units), ``direction`` ("high" | "low": sign of the ranking
    quantity, i.e. relative to the population, or for off-axis relative to what the player's
    axis scores predict).
    """
    z = np.asarray(z_row, dtype=np.float64).reshape(-1)
    resid = z - axes.basis @ (axes.basis.T @ z)
    key = np.abs(resid) if kind == "off-axis" else np.abs(z)
    order = np.argsort(-key, kind="stable")[: max(0, int(top))]
    signed = resid if kind == "off-axis" else z
    return [
        {
            "feature": str(feature_names[j]),
            "z": float(z[j]),
            "residual": float(resid[j]),
            "direction": "high" if signed[j] >= 0 else "low",
        }
        for j in order
    ]
