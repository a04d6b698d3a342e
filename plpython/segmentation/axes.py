"""Behaviour axes: PCA of the feature correlation matrix followed by a varimax rotation.

With ``C = Z^T Z / n`` (the correlation matrix when ``Z`` is standardised), eigenpairs
``(lambda_i, v_i)`` and an orthogonal varimax rotation ``R`` (k, k) of the retained
unrotated loadings ``V sqrt(Lambda)``:

* ``loadings = V sqrt(Lambda) R`` (p, k) - correlation of each feature with each axis;
* ``weights = V Lambda^{-1/2} R`` (p, k) - ``scores = Z @ weights``. Because ``R`` is
  orthogonal, the axis scores of the fitting population have mean 0, variance exactly 1 and
  zero correlation, so axis scores are already in z-units;
* ``basis = V`` (p, k) - orthonormal basis of the retained subspace (rotation does not
  change it), used for the off-axis reconstruction residual ``||Z - Z B B^T||^2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmentation.naming import axis_name, unique_names

# Eigenvalues below this share of the largest are numerically zero: their 1/sqrt(lambda)
# weights would amplify noise, so such directions are never retained as axes.
_EIGEN_RTOL = 1e-9


@dataclass
class Axes:
    """Fitted axes over ``feature_names`` (p) with k axes; see module docstring for maths.

    ``variance_explained`` (k,) is each rotated axis's share of the total variance ``p``
    (sum of squared loadings / p), sorted descending.
    """

    names: list[str]
    feature_names: list[str]
    loadings: np.ndarray
    weights: np.ndarray
    basis: np.ndarray
    variance_explained: np.ndarray

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.feature_names = [str(f) for f in self.feature_names]
        p, k = len(self.feature_names), len(self.names)
        self.loadings = np.asarray(self.loadings, dtype=np.float64).reshape(p, k)
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(p, k)
        self.basis = np.asarray(self.basis, dtype=np.float64).reshape(p, k)
        self.variance_explained = np.asarray(self.variance_explained, dtype=np.float64).reshape(k)

    @property
    def n_axes(self) -> int:
        return len(self.names)

    def scores(self, Z: np.ndarray) -> np.ndarray:
        """Axis scores (n, k) of standardised ``Z`` (n, p)."""
        return np.asarray(Z, dtype=np.float64) @ self.weights

    def residual_sq(self, Z: np.ndarray) -> np.ndarray:
        """Squared off-axis reconstruction error ``||z - z B B^T||^2`` per row, (n,), z-units^2.

        Computed as ``||z||^2 - ||z B||^2`` (``B`` orthonormal), clipped at 0 against
        rounding.
        """
        Z = np.asarray(Z, dtype=np.float64)
        proj = Z @ self.basis
        res = np.einsum("ij,ij->i", Z, Z) - np.einsum("ij,ij->i", proj, proj)
        return np.maximum(res, 0.0)

    def explained_share(self, Z: np.ndarray) -> float:
        """Share of the total variance of ``Z`` (n, p) captured by the axes' subspace.

        Equals ``variance_explained.sum()`` on the fitting population; a drop on new data
        means the axes no longer describe the population well.
        """
        Z = np.asarray(Z, dtype=np.float64)
        Zc = Z - Z.mean(axis=0)
        total = float(np.einsum("ij,ij->", Zc, Zc))
        if total <= 0.0:
            return 0.0
        proj = Zc @ self.basis
        return float(np.einsum("ij,ij->", proj, proj)) / total

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "feature_names": list(self.feature_names),
            "loadings": self.loadings.tolist(),
            "weights": self.weights.tolist(),
            "basis": self.basis.tolist(),
            "variance_explained": self.variance_explained.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Axes:
        return cls(
            names=list(d["names"]),
            feature_names=list(d["feature_names"]),
            loadings=np.array(d["loadings"], dtype=np.float64),
            weights=np.array(d["weights"], dtype=np.float64),
            basis=np.array(d["basis"], dtype=np.float64),
            variance_explained=np.array(d["variance_explained"], dtype=np.float64),
        )


def varimax(
    loadings: np.ndarray, gamma: float = 1.0, max_iter: int = 500, tol: float = 1e-10
) -> np.ndarray:
    """Orthogonal varimax rotation (Kaiser-normalised) of loadings (p, k); returns R (k, k).

    ``loadings @ R`` are the rotated loadings. Kaiser normalisation (rows scaled to unit
    communality during the iterations) stops features with large communality from
    dominating the rotation.
    """
    L = np.asarray(loadings, dtype=np.float64)
    p, k = L.shape
    if k < 2:
        return np.eye(k)
    h = np.sqrt(np.einsum("ij,ij->i", L, L))
    A = L / np.where(h > 0, h, 1.0)[:, None]
    R = np.eye(k)
    criterion = 0.0
    for _ in range(max_iter):
        lam = A @ R
        target = lam**3 - (gamma / p) * lam * np.einsum("ij,ij->j", lam, lam)
        u, s, vt = np.linalg.svd(A.T @ target)
        R = u @ vt
        new_criterion = float(s.sum())
        if new_criterion <= criterion * (1.0 + tol):
            break
        criterion = new_criterion
    return R


def fit_axes(
    Z: np.ndarray,
    feature_names: Sequence[str],
    variance_threshold: float = 0.70,
    max_axes: int | None = None,
) -> Axes:
    """Fit rotated PCA axes on standardised ``Z`` (n, p).

    k is the smallest number of principal components whose cumulative share of variance is
    ``>= variance_threshold`` (at least 2 when p >= 2, at most ``max_axes``, never
    numerically-null components). Axes are varimax-rotated, sign-fixed so each axis's
    largest-|loading| feature is positive, and ordered by variance explained (descending).
    """
    Z = np.asarray(Z, dtype=np.float64)
    n, p = Z.shape
    if p != len(feature_names):
        raise ValueError(f"Z has {p} columns but {len(feature_names)} feature names")
    if n < 2:
        raise ValueError("need at least two rows to fit axes")
    C = (Z.T @ Z) / n
    eigval, eigvec = np.linalg.eigh(C)
    order = np.argsort(-eigval, kind="stable")
    eigval, eigvec = eigval[order], eigvec[:, order]
    total = float(eigval.sum())
    usable = int(np.sum(eigval > _EIGEN_RTOL * max(eigval[0], 0.0)))
    if usable == 0:
        raise ValueError("Z has no variance")
    cumulative = np.cumsum(eigval) / total
    k = int(np.searchsorted(cumulative, variance_threshold - 1e-12) + 1)
    k = max(k, min(2, p))
    if max_axes is not None:
        k = min(k, max(1, int(max_axes)))
    k = min(k, usable)

    V, lam = eigvec[:, :k], eigval[:k]
    # Fix PCA eigenvector signs before rotation so varimax always starts from the same point.
    V = V * np.where(V[np.argmax(np.abs(V), axis=0), np.arange(k)] < 0, -1.0, 1.0)
    unrotated = V * np.sqrt(lam)
    R = varimax(unrotated)
    loadings = unrotated @ R
    weights = (V / np.sqrt(lam)) @ R

    sign = np.where(loadings[np.argmax(np.abs(loadings), axis=0), np.arange(k)] < 0, -1.0, 1.0)
    loadings, weights = loadings * sign, weights * sign
    share = np.einsum("ij,ij->j", loadings, loadings) / total
    rank = np.argsort(-share, kind="stable")
    loadings, weights, share = loadings[:, rank], weights[:, rank], share[rank]

    names = unique_names([axis_name(loadings[:, a], feature_names) for a in range(k)])
    return Axes(
        names=names,
        feature_names=list(feature_names),
        loadings=loadings,
        weights=weights,
        basis=V,
        variance_explained=share,
    )
