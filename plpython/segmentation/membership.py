"""Segment membership scoring - the hot path; pure numpy, everything precomputed at load.

For segment j with precision Cholesky factor ``P_j`` (``P_j P_j^T = Sigma_j^{-1}``, the
sklearn convention) the whitened offset is ``y_j = s P_j - mu_j P_j`` and

    log(w_j N(s | mu_j, Sigma_j)) = log w_j - d/2 log(2 pi) + log|P_j| - ||y_j||^2 / 2.

All k factors are concatenated into one (d, k*d) matrix so a batch of rows needs a single
matrix product; ``||y_j||^2`` is the squared Mahalanobis distance to segment j.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from segmentation.segments import Segments

_LOG_2PI = float(np.log(2.0 * np.pi))


class MembershipModel:
    """Precomputed scorer for a :class:`Segments` mixture (k segments, d axes)."""

    def __init__(self, segments: Segments) -> None:
        self.segments = segments
        k, d = segments.means.shape
        self.n_segments, self.n_axes = k, d
        prec_chol = np.empty((k, d, d))
        for j in range(k):
            # Same construction as sklearn's _compute_precision_cholesky so probabilities
            # agree with GaussianMixture.predict_proba to rounding.
            chol = np.linalg.cholesky(segments.covariances[j])
            prec_chol[j] = solve_triangular(chol, np.eye(d), lower=True).T
        self.precision_cholesky = prec_chol
        # (d, k*d): column block j is P_j.
        stacked = prec_chol.transpose(1, 0, 2).reshape(d, k * d)
        self.stacked_precision = np.ascontiguousarray(stacked)
        self.stacked_offset = np.einsum("jd,jde->je", segments.means, prec_chol).reshape(k * d)
        log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
        with np.errstate(divide="ignore"):
            log_w = np.log(segments.weights)
        self.log_norm = log_w - 0.5 * d * _LOG_2PI + log_det

    def mahalanobis_sq(self, S: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (n, k) of axis scores ``S`` (n, d) to every segment."""
        S = np.asarray(S, dtype=np.float64)
        n = S.shape[0]
        y = S @ self.stacked_precision
        y -= self.stacked_offset
        y *= y
        return y.reshape(n, self.n_segments, self.n_axes).sum(axis=2)

    def log_prob(self, S: np.ndarray) -> np.ndarray:
        """``log(w_j N(s | mu_j, Sigma_j))`` (n, k) for axis scores ``S`` (n, d)."""
        return self.log_norm - 0.5 * self.mahalanobis_sq(S)

    def posteriors(self, S: np.ndarray) -> np.ndarray:
        """Posterior segment probabilities (n, k); rows sum to 1 (log-sum-exp)."""
        return _softmax_rows(self.log_prob(S))

    def mahalanobis_min(self, S: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance over segments (n,), the outlier score."""
        return self.mahalanobis_sq(S).min(axis=1)

    def score_one(self, s: np.ndarray) -> tuple[np.ndarray, float]:
        """Single row ``s`` (d,) -> (posteriors (k,), min squared Mahalanobis distance)."""
        y = s @ self.stacked_precision
        y -= self.stacked_offset
        y *= y
        maha = y.reshape(self.n_segments, self.n_axes).sum(axis=1)
        lp = self.log_norm - 0.5 * maha
        lp -= lp.max()
        post = np.exp(lp)
        post /= post.sum()
        return post, float(maha.min())


def _softmax_rows(log_p: np.ndarray) -> np.ndarray:
    shifted = log_p - log_p.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted
