"""The fitted taxonomy and its single scoring path.

:meth:`Taxonomy.score` is used both by calibration (to assign the calibration population)
and by categorisation, so both see identical numbers. :meth:`Taxonomy.score_one` is the
per-player fast path: it fuses preparation, axis projection, residual and all segment
Mahalanobis terms into one matrix-vector product precomputed on first use, and agrees with
:meth:`Taxonomy.score` to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.anomalies import AnomalyModel, AnomalyScores, reasons
from segmentation.axes import Axes
from segmentation.membership import MembershipModel
from segmentation.preparation import Preparation
from segmentation.segments import Segments

FORMAT = "unified-segmentation/taxonomy"
FORMAT_VERSION = 1


@dataclass
class Scores:
    """Scores of n players under a taxonomy with k segments and d axes.

    ``prepared`` (n, p) standardised features; ``axis_scores`` (n, d) unit-variance axis
    units; ``posteriors`` (n, k); ``primary`` (n,) segment index of the largest posterior;
    ``segment_id`` (n,) its stable id; ``membership`` (n,) that largest posterior;
    ``n_non_finite`` (n,) imputed entries per row; ``anomaly`` per-row anomaly results.
    """

    prepared: np.ndarray
    axis_scores: np.ndarray
    posteriors: np.ndarray
    primary: np.ndarray
    segment_id: np.ndarray
    membership: np.ndarray
    n_non_finite: np.ndarray
    anomaly: AnomalyScores


class _FastScorer:
    """Single-row scorer with every per-model product precomputed (p kept features)."""

    def __init__(self, taxonomy: Taxonomy, column_index: np.ndarray | None) -> None:
        prep, axes = taxonomy.preparation, taxonomy.axes
        mm = taxonomy.membership
        self.column_index = column_index
        self.impute = prep.impute
        self.lower = prep.clip[:, 0].copy()
        self.upper = prep.clip[:, 1].copy()
        self.log_mask = prep.log_transform.copy()
        self.any_log = bool(self.log_mask.any())
        self.center = prep.center
        self.scale = prep.scale
        d, k = axes.n_axes, mm.n_segments
        self.d, self.k = d, k
        anomaly = taxonomy.anomaly
        m = anomaly.residual_basis.shape[1]
        self.m = m
        # One product z @ fused gives [axis scores (d) | off-axis coordinates (m) |
        # whitened offsets to every segment (k*d)].
        self.fused = np.ascontiguousarray(
            np.hstack([axes.weights, anomaly.residual_basis, axes.weights @ mm.stacked_precision])
        )
        self.offset = np.concatenate([np.zeros(d + m), mm.stacked_offset])
        self.log_norm = mm.log_norm
        # y*y @ half_block_sum = -||y_j||^2 / 2 per segment: block sum and scaling in one product.
        self.half_block_sum = -0.5 * np.kron(np.eye(k), np.ones((d, 1)))
        self.anomaly = anomaly
        self.segment_offsets = anomaly.segment_offsets
        self.means = mm.segments.means
        self.tail_directions = anomaly.tail_directions
        self.precision_cholesky = mm.precision_cholesky
        self.segment_scales = anomaly.segment_scales.tolist()
        self.segment_ids = list(taxonomy.segment_ids)
        self.segment_names = list(taxonomy.segment_names)

    def __call__(self, x_raw: np.ndarray) -> dict[str, Any]:
        x = np.asarray(x_raw, dtype=np.float64)
        x = x[self.column_index] if self.column_index is not None else x.copy()
        finite = np.isfinite(x)
        n_bad = 0
        if not finite.all():
            n_bad = int(x.size - np.count_nonzero(finite))
            x = np.where(finite, x, self.impute)
        np.maximum(x, self.lower, out=x)
        np.minimum(x, self.upper, out=x)
        if self.any_log:
            np.log1p(x, out=x, where=self.log_mask)
        x -= self.center
        x /= self.scale
        out = x @ self.fused
        out -= self.offset
        d, m = self.d, self.m
        y = out[d + m :]
        y *= y
        half_maha = y @ self.half_block_sum
        lp = half_maha + self.log_norm
        primary = int(lp.argmax())
        lp -= lp[primary]
        post = np.exp(lp)
        post /= post.sum()
        dev = out[d : d + m] - self.segment_offsets[primary]
        residual = float(dev @ dev) / self.segment_scales[primary]
        # One-sided outlier distance: deviations beyond the segment mean in its
        # characteristic direction are zeroed before whitening (see anomalies).
        delta = out[:d] - self.means
        delta[delta * self.tail_directions > 0.0] = 0.0
        w = np.matmul(delta[:, None, :], self.precision_cholesky)
        w *= w
        outlier = float(w.sum(axis=2).min())
        score, is_anomaly, kind = self.anomaly.classify_one(residual, outlier)
        return {
            "axis_scores": out[:d].tolist(),
            "posteriors": post.tolist(),
            "primary": primary,
            "segment_id": self.segment_ids[primary],
            "segment_name": self.segment_names[primary],
            "membership": float(post[primary]),
            "anomaly_score": score,
            "is_anomaly": is_anomaly,
            "anomaly_kind": kind,
            "residual": residual,
            "outlier": outlier,
            "n_non_finite": n_bad,
        }


@dataclass(eq=False)
class Taxonomy:
    """Everything needed to score a player; round-trips through plain JSON-able dicts.

    Treat an instance as immutable once it has scored: the membership model and the
    per-layout fast scorers (which copy ids and names) are cached on first use.
    """

    preparation: Preparation
    axes: Axes
    segments: Segments
    anomaly: AnomalyModel
    segment_ids: list[int]
    segment_names: list[str]
    _membership: MembershipModel | None = field(default=None, init=False, repr=False)
    _fast: dict[tuple[str, ...] | None, _FastScorer] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.segment_ids = [int(i) for i in self.segment_ids]
        self.segment_names = [str(n) for n in self.segment_names]
        k = self.segments.n_segments
        if len(self.segment_ids) != k or len(self.segment_names) != k:
            raise ValueError(f"need {k} segment ids and names")
        if self.axes.feature_names != self.preparation.feature_names:
            raise ValueError("axes and preparation disagree on features")

    @property
    def membership(self) -> MembershipModel:
        """Membership scorer, built once per instance."""
        if self._membership is None:
            self._membership = MembershipModel(self.segments)
        return self._membership

    @property
    def feature_names(self) -> list[str]:
        return self.preparation.feature_names

    def score(
        self,
        X_raw_full: np.ndarray,
        feature_names_full: Sequence[str] | None = None,
    ) -> Scores:
        """Score raw players ``X_raw_full`` (n, q) whose columns are ``feature_names_full``.

        Without names the columns must be exactly the kept features in model order.
        """
        Z, n_bad = self.preparation.transform(
            X_raw_full, None if feature_names_full is None else list(feature_names_full)
        )
        S = self.axes.scores(Z)
        mm = self.membership
        log_p = mm.log_prob(S)
        log_p -= log_p.max(axis=1, keepdims=True)
        post = np.exp(log_p)
        post /= post.sum(axis=1, keepdims=True)
        primary = np.argmax(post, axis=1)
        anomaly = self.anomaly.classify(
            self.anomaly.residual_scores(Z, primary), self.anomaly.outlier_scores(S, mm)
        )
        return Scores(
            prepared=Z,
            axis_scores=S,
            posteriors=post,
            primary=primary,
            segment_id=np.asarray(self.segment_ids, dtype=np.int64)[primary],
            membership=post[np.arange(post.shape[0]), primary],
            n_non_finite=n_bad,
            anomaly=anomaly,
        )

    def score_one(
        self, x_raw: np.ndarray | Sequence[float], feature_names_full: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Score one player ``x_raw`` (q,) fast; returns plain Python values.

        Keys: ``axis_scores`` (list d), ``posteriors`` (list k), ``primary``, ``segment_id``,
        ``segment_name``, ``membership``, ``anomaly_score``, ``is_anomaly``,
        ``anomaly_kind``, ``residual``, ``outlier``, ``n_non_finite``. The column lookup for
        ``feature_names_full`` is cached per distinct name list.
        """
        key = None if feature_names_full is None else tuple(feature_names_full)
        scorer = self._fast.get(key)
        if scorer is None:
            idx = None if key is None else self.preparation.column_index(key)
            scorer = self._fast[key] = _FastScorer(self, idx)
        return scorer(x_raw)

    def explain(
        self,
        x_raw: np.ndarray | Sequence[float],
        feature_names_full: Sequence[str] | None = None,
        top: int = 3,
    ) -> list[dict[str, Any]]:
        """Anomaly reasons for one raw player (q,), see :func:`segmentation.anomalies.reasons`."""
        names = None if feature_names_full is None else list(feature_names_full)
        Z, _ = self.preparation.transform(np.asarray(x_raw, dtype=np.float64)[None, :], names)
        S = self.axes.scores(Z)
        primary = self.membership.log_prob(S).argmax(axis=1)
        kind = self.anomaly.score(Z, S, self.axes, self.membership, primary).kind[0]
        return reasons(
            Z[0],
            self.feature_names,
            self.axes,
            top=top,
            kind=str(kind),
            anomaly=self.anomaly,
            segment=int(primary[0]),
        )

    def centroids_prepared(self) -> np.ndarray:
        """Segment centres (k, p) in this taxonomy's standardised feature space.

        The mixture means (axis space) mapped back through the loadings: ``mu @ L^T`` is the
        projection onto the axes' subspace of any z with axis scores ``mu``.
        """
        return self.segments.means @ self.axes.loadings.T

    def centroids_raw(self) -> np.ndarray:
        """Segment centres (k, p) in raw units of the kept features (inverse preparation)."""
        return self.preparation.inverse_transform(self.centroids_prepared())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "preparation": self.preparation.to_dict(),
            "axes": self.axes.to_dict(),
            "segments": self.segments.to_dict(),
            "anomaly": self.anomaly.to_dict(),
            "segment_ids": list(self.segment_ids),
            "segment_names": list(self.segment_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taxonomy:
        if d.get("format", FORMAT) != FORMAT or int(d.get("version", 1)) > FORMAT_VERSION:
            raise ValueError(f"unsupported taxonomy format {d.get('format')} v{d.get('version')}")
        return cls(
            preparation=Preparation.from_dict(d["preparation"]),
            axes=Axes.from_dict(d["axes"]),
            segments=Segments.from_dict(d["segments"]),
            anomaly=AnomalyModel.from_dict(d["anomaly"]),
            segment_ids=list(d["segment_ids"]),
            segment_names=list(d["segment_names"]),
        )
