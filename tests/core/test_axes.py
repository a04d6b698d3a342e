"""Behaviour axes (PCA + varimax) and human-readable names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from segmentation.axes import Axes, fit_axes, varimax
from segmentation.naming import axis_name, feature_word, segment_name, unique_names

NAMES = [
    "spend_usd_total",
    "purchases_per_day",
    "spend_usd_per_day",
    "chat_messages_total",
    "friends_invited_total",
    "chat_messages_per_day",
]


def _two_factor(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Features 0-2 driven by factor A, 3-5 by factor B (corr(A, B) = 0.3), standardised."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n)
    b = 0.3 * a + np.sqrt(1 - 0.09) * rng.standard_normal(n)
    load = np.array([0.9, 0.8, 0.85])
    X = np.column_stack(
        [load[i] * a + np.sqrt(1 - load[i] ** 2) * rng.standard_normal(n) for i in range(3)]
        + [load[i] * b + np.sqrt(1 - load[i] ** 2) * rng.standard_normal(n) for i in range(3)]
    )
    return (X - X.mean(axis=0)) / X.std(axis=0)


def test_varimax_recovers_simple_structure_and_names_axes() -> None:
    axes = fit_axes(_two_factor(), NAMES, variance_threshold=0.70)
    assert axes.n_axes == 2
    L = np.abs(axes.loadings)
    # Every feature loads strongly on exactly one axis (simple structure).
    assert (L.max(axis=1) > 0.75).all()
    assert (L.min(axis=1) < 0.3).all()
    spend_axis = int(np.argmax(L[0]))
    assert set(np.argmax(L, axis=1)[:3]) == {spend_axis}
    assert set(np.argmax(L, axis=1)[3:]) == {1 - spend_axis}
    assert axes.names[spend_axis] == "spend & purchases"
    assert axes.names[1 - spend_axis] == "chat & social invites"


def test_unrotated_pca_does_not_give_simple_structure() -> None:
    # Guards the test above: without rotation, the first PC mixes both factors.
    Z = _two_factor()
    _, vec = np.linalg.eigh(Z.T @ Z / len(Z))
    first = np.abs(vec[:, -1])
    assert first.min() > 0.25


def test_smallest_k_reaching_the_threshold() -> None:
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 8))
    Z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    eig = np.sort(np.linalg.eigvalsh(np.corrcoef(Z.T)))[::-1]
    cumulative = np.cumsum(eig) / eig.sum()
    for threshold in (0.5, 0.7, 0.9):
        axes = fit_axes(Z, [f"f{i}" for i in range(8)], variance_threshold=threshold)
        k = axes.n_axes
        assert axes.variance_explained.sum() >= threshold - 1e-9
        assert k == max(2, int(np.argmax(cumulative >= threshold - 1e-12)) + 1)
        assert axes.variance_explained.sum() == pytest.approx(cumulative[k - 1])
        assert np.all(np.diff(axes.variance_explained) <= 1e-12)
    assert fit_axes(Z, [f"f{i}" for i in range(8)], 0.99, max_axes=3).n_axes == 3
    assert fit_axes(Z, [f"f{i}" for i in range(8)], 0.01).n_axes == 2


def test_basis_orthonormal_scores_whitened_loadings_are_correlations() -> None:
    Z = _two_factor()
    axes = fit_axes(Z, NAMES)
    np.testing.assert_allclose(axes.basis.T @ axes.basis, np.eye(axes.n_axes), atol=1e-12)
    S = axes.scores(Z)
    np.testing.assert_allclose(np.cov(S.T, bias=True), np.eye(axes.n_axes), atol=1e-10)
    corr = np.array([[np.corrcoef(Z[:, j], S[:, a])[0, 1] for a in range(2)] for j in range(6)])
    np.testing.assert_allclose(axes.loadings, corr, atol=1e-10)
    # Rotation leaves the retained subspace unchanged: weights span the basis.
    proj = axes.basis @ axes.basis.T
    np.testing.assert_allclose(proj @ axes.weights, axes.weights, atol=1e-12)
    assert axes.explained_share(Z) == pytest.approx(axes.variance_explained.sum())


def test_residual_is_the_squared_reconstruction_error() -> None:
    Z = _two_factor()
    axes = fit_axes(Z, NAMES)
    B = axes.basis
    expected = ((Z - Z @ B @ B.T) ** 2).sum(axis=1)
    np.testing.assert_allclose(axes.residual_sq(Z), expected, atol=1e-10)
    assert (axes.residual_sq(Z) >= 0).all()


def test_sign_convention_and_determinism() -> None:
    Z = _two_factor()
    axes = fit_axes(Z, NAMES)
    top = axes.loadings[np.argmax(np.abs(axes.loadings), axis=0), np.arange(axes.n_axes)]
    assert (top > 0).all()
    flipped = fit_axes(-Z, NAMES)  # all signs flipped: same axes up to sign -> same result
    np.testing.assert_allclose(np.abs(flipped.loadings), np.abs(axes.loadings), atol=1e-10)
    again = fit_axes(Z[np.random.default_rng(3).permutation(len(Z))], NAMES)
    np.testing.assert_allclose(again.loadings, axes.loadings, atol=1e-10)


def test_varimax_is_orthogonal_and_identity_for_one_axis() -> None:
    L = np.random.default_rng(0).standard_normal((6, 3))
    R = varimax(L)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(varimax(L[:, :1]), np.eye(1))


def test_round_trip() -> None:
    axes = fit_axes(_two_factor(), NAMES)
    again = Axes.from_dict(json.loads(json.dumps(axes.to_dict(), allow_nan=False)))
    Z = _two_factor(seed=5)
    np.testing.assert_array_equal(axes.scores(Z), again.scores(Z))
    np.testing.assert_array_equal(axes.residual_sq(Z), again.residual_sq(Z))
    assert again.names == axes.names


# ---------------------------------------------------------------------------- naming


def test_feature_words_use_the_vocabulary_and_fall_back_to_the_stem() -> None:
    assert feature_word("spend_usd_total") == "spend"
    assert feature_word("minutes_played_per_day") == "playtime"
    assert feature_word("friends_invited_total") == "social invites"
    assert feature_word("days_since_last") == "recency gap"
    assert feature_word("guild_raids_per_day") == "guild raids"


def test_axis_name_from_top_loadings() -> None:
    names = ["spend_usd_total", "purchases_per_day", "sessions_total", "days_since_last"]
    assert axis_name(np.array([0.9, 0.85, 0.1, 0.0]), names) == "spend & purchases"
    assert axis_name(np.array([-0.9, -0.8, 0.1, 0.0]), names) == "low spend & purchases"
    assert axis_name(np.array([0.1, 0.0, 0.9, -0.8]), names) == "sessions & low recency gap"
    assert axis_name(np.array([0.9, 0.2, 0.1, 0.0]), names) == "spend"


def test_unique_names() -> None:
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a (2)", "a (3)"]
    assert unique_names(["a", "a (2)", "a"]) == ["a", "a (2)", "a (3)"]


def test_segment_name_from_extreme_axes() -> None:
    axes = ["spend", "social", "playtime"]
    assert segment_name(np.array([1.0, -0.7, 0.1]), axes) == "High spend / low social"
    assert segment_name(np.array([0.2, 2.0, -0.6]), axes) == "Very high social / low playtime"
    assert segment_name(np.array([0.2, -0.3, 0.1]), axes) == "Average"
    assert segment_name(np.array([0.0, 0.0, -0.9]), axes) == "Low playtime"
