"""Membership scoring (pure numpy) agrees with sklearn and with itself row by row."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from segmentation.membership import MembershipModel
from segmentation.segments import Segments, fit_segments
from sklearn.mixture import GaussianMixture


@pytest.fixture(scope="module")
def fitted() -> tuple[GaussianMixture, np.ndarray]:
    rng = np.random.default_rng(0)
    S = np.vstack(
        [
            rng.multivariate_normal([0, 0, 0], [[1, 0.5, 0], [0.5, 1, 0.2], [0, 0.2, 0.5]], 800),
            rng.multivariate_normal([3, 1, 0], np.diag([0.3, 2.0, 0.7]), 500),
            rng.multivariate_normal([0, 3, 3], [[0.5, -0.3, 0], [-0.3, 1, 0], [0, 0, 0.2]], 300),
        ]
    )
    gm = GaussianMixture(3, covariance_type="full", random_state=0).fit(S)
    return gm, S


def _model(gm: GaussianMixture) -> MembershipModel:
    return MembershipModel(Segments(gm.weights_, gm.means_, gm.covariances_))


def test_posteriors_equal_sklearn_predict_proba(fitted: tuple[GaussianMixture, np.ndarray]) -> None:
    gm, S = fitted
    rng = np.random.default_rng(1)
    probe = np.vstack([S, rng.normal(0, 4, (200, 3))])  # include far-out points
    mm = _model(gm)
    np.testing.assert_allclose(mm.posteriors(probe), gm.predict_proba(probe), atol=1e-8)
    np.testing.assert_allclose(mm.posteriors(probe).sum(axis=1), 1.0, atol=1e-12)
    log_density = np.logaddexp.reduce(mm.log_prob(probe), axis=1)
    np.testing.assert_allclose(log_density, gm.score_samples(probe), rtol=1e-10)


def test_fit_segments_posteriors_equal_membership_model() -> None:
    rng = np.random.default_rng(2)
    S = np.vstack([rng.normal(0, 1, (400, 2)), rng.normal(5, 1, (200, 2))])
    fit = fit_segments(S, 2, seed=0)
    post = MembershipModel(fit.segments).posteriors(S)
    np.testing.assert_allclose(post, fit.posteriors, atol=1e-8)


def test_mahalanobis_min_matches_scipy(fitted: tuple[GaussianMixture, np.ndarray]) -> None:
    gm, S = fitted
    mm = _model(gm)
    rows = S[:25]
    expected = [
        min(mahalanobis(s, gm.means_[j], np.linalg.inv(gm.covariances_[j])) ** 2 for j in range(3))
        for s in rows
    ]
    np.testing.assert_allclose(mm.mahalanobis_min(rows), expected, rtol=1e-9)


def test_single_row_path_equals_batch(fitted: tuple[GaussianMixture, np.ndarray]) -> None:
    gm, S = fitted
    mm = _model(gm)
    post = mm.posteriors(S[:50])
    maha = mm.mahalanobis_min(S[:50])
    for i in range(50):
        p1, m1 = mm.score_one(S[i])
        np.testing.assert_allclose(p1, post[i], atol=1e-14)
        assert m1 == pytest.approx(maha[i], rel=1e-12)
    np.testing.assert_allclose(mm.posteriors(S[3:4])[0], post[3], atol=1e-14)


def test_extreme_points_do_not_overflow(fitted: tuple[GaussianMixture, np.ndarray]) -> None:
    gm, _ = fitted
    post = _model(gm).posteriors(np.array([[1e6, -1e6, 1e6]]))
    assert np.isfinite(post).all() and post.sum() == pytest.approx(1.0)
