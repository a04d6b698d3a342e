"""Feature preparation rules: log, drop, impute, clamp, standardise, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from segmentation.preparation import Preparation, fit_preparation


def _raw(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    X = np.column_stack(
        [
            rng.lognormal(3.0, 1.0, n),  # heavy-tailed, non-negative -> log
            rng.normal(50.0, 5.0, n),  # symmetric -> no log
            rng.lognormal(0.0, 1.0, n) - 2.0,  # skewed but signed -> no log
            np.full(n, 7.0),  # constant -> dropped
            np.full(n, np.nan),  # all missing -> dropped
            rng.exponential(0.2, n),  # small-valued, skewed -> log
        ]
    )
    return X, ["spend_usd_total", "tenure_days", "delta", "const", "missing", "purchases_per_day"]


def test_log_rule_applies_to_skewed_non_negative_features_only() -> None:
    X, names = _raw()
    prep, report = fit_preparation(X, names)
    logged = dict(zip(prep.feature_names, prep.log_transform, strict=True))
    assert logged == {
        "spend_usd_total": True,
        "tenure_days": False,
        "delta": False,
        "purchases_per_day": True,
    }
    assert report.log_transformed == ["spend_usd_total", "purchases_per_day"]


def test_constant_and_all_missing_features_are_dropped_with_reason() -> None:
    X, names = _raw()
    prep, report = fit_preparation(X, names)
    assert report.dropped == {"const": "constant", "missing": "all_missing"}
    assert prep.feature_names == ["spend_usd_total", "tenure_days", "delta", "purchases_per_day"]


def test_training_data_is_standardised() -> None:
    X, names = _raw()
    prep, _ = fit_preparation(X, names)
    Z, bad = prep.transform(X, names)
    assert Z.shape == (X.shape[0], 4)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1.0, atol=1e-12)
    assert bad.sum() == 0


def test_non_finite_values_are_replaced_by_the_training_median_and_counted() -> None:
    X, names = _raw()
    X[:5, 0] = np.nan
    X[5:8, 0] = np.inf
    X[8, 1] = -np.inf
    prep, report = fit_preparation(X, names)
    assert report.non_finite == {"spend_usd_total": 8, "tenure_days": 1}
    finite = X[np.isfinite(X[:, 0]), 0]
    assert prep.impute[0] == pytest.approx(np.median(finite))

    Z, bad = prep.transform(X, names)
    assert np.isfinite(Z).all()
    assert bad[:9].tolist() == [1] * 9 and bad[9:].sum() == 0
    median_row = np.array([[prep.impute[0], prep.impute[1], 0.0, 0.0, 0.0, prep.impute[3]]])
    Z_median, _ = prep.transform(median_row, names)
    assert Z[0, 0] == Z_median[0, 0]
    assert Z[8, 1] == Z_median[0, 1]


def test_clamp_keeps_garbage_finite_and_log_safe() -> None:
    X, names = _raw()
    prep, _ = fit_preparation(X, names)
    spend = prep.feature_names.index("spend_usd_total")
    delta = prep.feature_names.index("delta")
    # Non-negative features are clamped at 0 (log1p(-5) would be NaN).
    assert prep.clip[spend, 0] == 0.0
    # Signed features: lower bound = min - 10 * span; upper = max + 10 * span.
    lo, hi = np.nanmin(X[:, 2]), np.nanmax(X[:, 2])
    assert prep.clip[delta, 0] == pytest.approx(lo - 10 * (hi - lo))
    assert prep.clip[spend, 1] == pytest.approx(X[:, 0].max() * 11 - 10 * X[:, 0].min())

    garbage = X[:3].copy()
    garbage[0, 0] = -5.0
    garbage[1, 0] = 1e300
    garbage[2, 2] = -1e300
    Z, bad = prep.transform(garbage, names)
    assert np.isfinite(Z).all() and bad.sum() == 0
    at_zero, _ = prep.transform(np.where(np.arange(6) == 0, 0.0, garbage[0]), names)
    assert Z[0, spend] == at_zero[0, spend]
    # Beyond the training range but inside the clamp stays extreme: not silently capped.
    big = X[:1].copy()
    big[0, 0] = X[:, 0].max() * 5
    assert prep.transform(big, names)[0][0, spend] > prep.transform(X, names)[0][:, spend].max()


def test_columns_are_selected_by_name() -> None:
    X, names = _raw()
    prep, _ = fit_preparation(X, names)
    Z, _ = prep.transform(X, names)
    order = [5, 3, 0, 2, 1, 4]
    extra = np.column_stack([X[:, order], np.ones(X.shape[0])])
    Z2, _ = prep.transform(extra, [names[i] for i in order] + ["unused"])
    np.testing.assert_array_equal(Z, Z2)
    kept = X[:, [0, 1, 2, 5]]
    np.testing.assert_array_equal(Z, prep.transform(kept)[0])
    with pytest.raises(KeyError, match="delta"):
        prep.transform(X[:, [0, 1, 5]], ["spend_usd_total", "tenure_days", "purchases_per_day"])
    with pytest.raises(ValueError):
        prep.transform(X)


def test_single_row_transform_matches_batch() -> None:
    X, names = _raw()
    prep, _ = fit_preparation(X, names)
    Z, _ = prep.transform(X, names)
    z1, bad = prep.transform(X[17], names)
    assert z1.shape == (1, 4) and bad.shape == (1,)
    np.testing.assert_array_equal(z1[0], Z[17])


def test_round_trip_through_json_gives_identical_transform() -> None:
    X, names = _raw()
    X[3, 0] = np.nan
    prep, report = fit_preparation(X, names)
    doc = json.loads(json.dumps(prep.to_dict(), allow_nan=False))
    assert set(doc) == {"feature_names", "log_transform", "impute", "center", "scale", "clip"}
    again = Preparation.from_dict(doc)
    np.testing.assert_array_equal(prep.transform(X, names)[0], again.transform(X, names)[0])
    assert type(report).from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_inverse_transform_undoes_log_and_standardisation() -> None:
    X, names = _raw()
    prep, _ = fit_preparation(X, names)
    kept = X[:, [0, 1, 2, 5]]
    Z, _ = prep.transform(kept)
    np.testing.assert_allclose(prep.inverse_transform(Z), kept, rtol=1e-9, atol=1e-9)


def test_no_usable_feature_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable feature"):
        fit_preparation(np.ones((10, 2)), ["a", "b"])
