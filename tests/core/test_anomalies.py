"""Anomaly scoring on a toy game population: bots flagged, whales not."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from segmentation.anomalies import (
    AnomalyModel,
    fit_anomaly_model,
    reasons,
    robust_threshold,
)
from segmentation.axes import Axes, fit_axes
from segmentation.membership import MembershipModel
from segmentation.preparation import Preparation, fit_preparation
from segmentation.segments import Segments, fit_segments

METRICS = (
    "sessions",
    "minutes_played",
    "spend_usd",
    "purchases",
    "pvp_matches",
    "chat_messages",
    "friends_invited",
)
FEATURES = [f"{m}_{s}" for s in ("total", "per_day") for m in METRICS] + [
    "active_days",
    "days_since_last",
    "tenure_days",
]

# Per active day medians (lognormal per player): sessions, minutes per session, pvp and chat
# per session, invites per day; share of payers, purchases per day of payers, price (USD);
# median probability of playing on a given day.
ARCHETYPES = {
    #          share  sess  min   pvp   chat  inv    payer buys  price p_active
    "casual": (0.38, 1.3, 11.0, 0.03, 0.2, 0.004, 0.02, 0.04, 1.5, 0.15),
    "grinder": (0.20, 7.0, 55.0, 0.03, 0.04, 0.002, 0.02, 0.04, 1.5, 0.90),
    "social": (0.20, 2.5, 15.0, 0.05, 25.0, 0.45, 0.02, 0.04, 1.5, 0.75),
    "pvp": (0.20, 5.0, 25.0, 4.0, 1.5, 0.03, 0.02, 0.04, 1.5, 0.80),
    "whale": (0.02, 3.5, 32.0, 1.0, 2.0, 0.03, 1.00, 0.90, 15.0, 0.75),
}


def toy_population(
    n: int = 10_000,
    n_bots: int = 60,
    n_odd: int = 40,
    days: int = 90,
    seed: int = 0,
    late_share: float = 0.0,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Raw features (n + n_bots + n_odd, 17) of a toy game, shuffled, with labels.

    Archetypes have lognormal per-player rates and zero-inflated spend (2% whales with
    lognormal price). ``bot``: 24 h of play every day in 60-300 sessions, no social, no
    spend. ``odd``: barely plays but buys dozens of cent items a day or spends thousands.
    ``late_share`` of the normal players joined during the window (tenure < ``days``).
    """
    rng = np.random.default_rng(seed)

    def ln(median: float, sigma: float, size: int) -> np.ndarray:
        return median * np.exp(sigma * rng.standard_normal(size))

    def assemble(
        per_day: dict[str, np.ndarray], active: np.ndarray, gap: np.ndarray, tenure: np.ndarray
    ) -> np.ndarray:
        totals = [
            per_day[m] * active * np.exp(0.05 * rng.standard_normal(active.size)) for m in METRICS
        ]
        return np.column_stack(totals + [t / active for t in totals] + [active, gap, tenure])

    counts = np.floor(np.array([a[0] for a in ARCHETYPES.values()]) * n).astype(int)
    counts[0] += n - counts.sum()
    blocks, labels = [], []
    for (name, a), c in zip(ARCHETYPES.items(), counts, strict=True):
        _, sess, mins, pvp, chat, inv, payer, buys, price, p_active = a
        tenure = np.where(rng.random(c) < late_share, rng.integers(7, days, c), days).astype(float)
        p = np.clip(p_active * np.exp(0.3 * rng.standard_normal(c)), 0.02, 1.0)
        active = np.maximum(rng.binomial(tenure.astype(int), p), 1).astype(float)
        gap = np.minimum(np.floor(rng.exponential(1.0 / p)), tenure - 1)
        s = ln(sess, 0.25, c)
        bought = np.where(rng.random(c) < payer, ln(buys, 0.5, c), 0.0)
        per_day = {
            "sessions": s,
            "minutes_played": s * ln(mins, 0.35, c),
            "pvp_matches": s * ln(pvp, 0.5, c),
            "chat_messages": s * ln(chat, 0.5, c),
            "friends_invited": ln(inv, 0.5, c),
            "purchases": bought,
            "spend_usd": bought * ln(price, 0.9, c),
        }
        blocks.append(assemble(per_day, active, gap, tenure))
        labels += [name] * c

    zeros = {m: np.zeros(n_bots) for m in METRICS}
    bots = {
        **zeros,
        "sessions": rng.uniform(60, 300, n_bots),
        "minutes_played": rng.uniform(1400, 1440, n_bots),
    }
    full = np.full(n_bots, float(days))
    blocks.append(assemble(bots, full, np.zeros(n_bots), full))
    labels += ["bot"] * n_bots

    storm = rng.random(n_odd) < 0.5
    buys_odd = np.where(storm, rng.uniform(20, 80, n_odd), rng.uniform(1, 2, n_odd))
    odd = {
        **{m: np.zeros(n_odd) for m in METRICS},
        "sessions": np.ones(n_odd),
        "minutes_played": rng.uniform(0.5, 4.0, n_odd),
        "purchases": buys_odd,
        "spend_usd": np.where(storm, buys_odd * 0.05, rng.uniform(2500, 9999, n_odd)),
    }
    blocks.append(
        assemble(
            odd,
            rng.integers(5, 40, n_odd).astype(float),
            rng.integers(0, 5, n_odd).astype(float),
            np.full(n_odd, float(days)),
        )
    )
    labels += ["odd"] * n_odd

    X = np.vstack(blocks)
    order = rng.permutation(len(X))
    return X[order], list(FEATURES), np.array(labels)[order]


@dataclass
class Fitted:
    X: np.ndarray
    labels: np.ndarray
    prep: Preparation
    Z: np.ndarray
    S: np.ndarray
    axes: Axes
    membership: MembershipModel
    model: AnomalyModel


def fit_all(X: np.ndarray, names: list[str], labels: np.ndarray, k: int = 7) -> Fitted:
    prep, _ = fit_preparation(X, names)
    Z, _ = prep.transform(X, names)
    axes = fit_axes(Z, prep.feature_names)
    S = axes.scores(Z)
    mm = MembershipModel(fit_segments(S, k, seed=0).segments)
    return Fitted(X, labels, prep, Z, S, axes, mm, fit_anomaly_model(Z, S, axes, mm, 0.01))


@pytest.fixture(scope="module")
def game() -> Fitted:
    X, names, labels = toy_population()
    return fit_all(X, names, labels)


def test_bots_and_odd_players_are_flagged_with_few_false_positives(game: Fitted) -> None:
    result = game.model.score(game.Z, game.S, game.axes, game.membership)
    planted = np.isin(game.labels, ["bot", "odd"])
    assert result.is_anomaly[game.labels == "bot"].mean() >= 0.9
    assert result.is_anomaly[game.labels == "odd"].mean() >= 0.9
    assert result.is_anomaly[~planted].mean() <= 0.02
    assert game.model.calibration_rate == pytest.approx(result.is_anomaly.mean())


def test_top_whales_are_not_flagged_for_spending(game: Fitted) -> None:
    result = game.model.score(game.Z, game.S, game.axes, game.membership)
    spend = game.X[:, FEATURES.index("spend_usd_total")]
    whale = game.labels == "whale"
    top = np.argsort(-np.where(whale, spend, -np.inf))[:10]
    assert whale[top].all()
    assert not result.is_anomaly[top].any()
    assert result.is_anomaly[whale].mean() <= 0.05


def test_thresholds_are_not_masked_by_more_anomalies_than_contamination() -> None:
    # 2% anomalies with contamination 1%: a plain 99% quantile would sit inside the bots.
    X, names, labels = toy_population(n=6000, n_bots=80, n_odd=40, seed=1)
    fitted = fit_all(X, names, labels)
    result = fitted.model.score(fitted.Z, fitted.S, fitted.axes, fitted.membership)
    planted = np.isin(labels, ["bot", "odd"])
    assert result.is_anomaly[planted].mean() >= 0.9
    assert result.is_anomaly[~planted].mean() <= 0.02
    residual = fitted.model.residual_scores(
        fitted.Z, fitted.membership.log_prob(fitted.S).argmax(axis=1)
    )
    assert np.quantile(residual, 0.99) > fitted.model.residual_threshold


def test_score_normalisation_and_kind(game: Fitted) -> None:
    m = game.model
    r = m.classify(
        np.array([0.0, 2.0 * m.residual_threshold, 0.5 * m.residual_threshold]),
        np.array([3.0 * m.outlier_threshold, 0.0, 0.5 * m.outlier_threshold]),
    )
    np.testing.assert_allclose(r.score, [3.0, 2.0, 0.5])
    assert r.is_anomaly.tolist() == [True, True, False]
    assert r.kind.tolist() == ["outlier", "off-axis", "none"]
    for i in range(3):
        assert m.classify_one(float(r.residual[i]), float(r.outlier[i])) == (
            pytest.approx(r.score[i]),
            bool(r.is_anomaly[i]),
            str(r.kind[i]),
        )


def test_robust_threshold_ignores_a_planted_tail() -> None:
    rng = np.random.default_rng(0)
    clean = rng.chisquare(3, 20_000)
    planted = np.concatenate([clean, rng.uniform(200, 400, 600)])  # 3% gross outliers
    assert robust_threshold(planted, 0.01) == pytest.approx(np.quantile(clean, 0.99), rel=0.05)
    assert np.quantile(planted, 0.99) > 100  # what a plain quantile would have done


def test_one_sided_outlier_forgives_more_of_the_same() -> None:
    seg = Segments(
        weights=np.array([0.9, 0.1]),
        means=np.array([[0.0, 0.0], [3.0, 0.0]]),
        covariances=np.array([np.eye(2), 0.25 * np.eye(2)]),
    )
    mm = MembershipModel(seg)
    S = np.array([[10.0, 0.0], [-4.0, 0.0], [3.0, 4.0]])
    model = fit_anomaly_model(np.zeros((3, 2)), S, _identity_axes(), mm, 0.01)
    assert model.tail_directions.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    outlier = model.outlier_scores(S, mm)
    assert outlier[0] == pytest.approx(0.0)  # far beyond the high segment, in its direction
    assert outlier[1] == pytest.approx(16.0)  # 4 sd below the main segment
    assert outlier[2] == pytest.approx(25.0)  # off in a direction no segment is known for
    np.testing.assert_allclose(mm.mahalanobis_min(S), [100.0, 16.0, 25.0])


def _identity_axes() -> Axes:
    return Axes(["a", "b"], ["f0", "f1"], np.eye(2), np.eye(2), np.eye(2), np.array([0.5, 0.5]))


def test_reasons_name_the_features_that_break_the_pattern(game: Fitted) -> None:
    result = game.model.score(game.Z, game.S, game.axes, game.membership)
    bot = int(np.flatnonzero((game.labels == "bot") & result.is_anomaly)[0])
    top = reasons(
        game.Z[bot], game.prep.feature_names, game.axes, top=3, kind=str(result.kind[bot])
    )
    assert len(top) == 3
    assert {"feature", "z", "residual", "direction"} <= set(top[0])
    assert top[0]["feature"].startswith(("sessions", "minutes_played"))
    by_z = reasons(game.Z[bot], game.prep.feature_names, game.axes, top=1)[0]
    assert by_z["direction"] == "high" and by_z["z"] == pytest.approx(np.abs(game.Z[bot]).max())


def test_round_trip(game: Fitted) -> None:
    again = AnomalyModel.from_dict(json.loads(json.dumps(game.model.to_dict(), allow_nan=False)))
    a = game.model.score(game.Z, game.S, game.axes, game.membership)
    b = again.score(game.Z, game.S, game.axes, game.membership)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.kind, b.kind)
