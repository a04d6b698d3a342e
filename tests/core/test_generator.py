"""Pure tests of the synthetic population generator (no database)."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from segmentation_loader.generator import (
    ARCHETYPES,
    BASE_METRICS,
    CORRELATED_METRICS,
    MIXED_LABEL,
    ActivityChunk,
    Population,
    archetype_shares,
    format_copy_rows,
    player_features,
    simulate,
)
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

FloatArray = NDArray[np.float64]


@cache
def _population(
    n: int, seed: int = 0, shape: str = "default", anomaly: float = 0.0, mixture: float = 0.0
) -> Population:
    return simulate(n, seed=seed, shape=shape, anomaly_rate=anomaly, mixture_rate=mixture)


@cache
def _features(
    n: int, seed: int = 0, shape: str = "default", anomaly: float = 0.0, mixture: float = 0.0
) -> tuple[list[str], FloatArray]:
    return player_features(_population(n, seed, shape, anomaly, mixture))


def _column(names: list[str], X: FloatArray, name: str) -> FloatArray:
    """(n,) feature column by name."""
    return X[:, names.index(name)]


def _all_rows(pop: Population) -> ActivityChunk:
    """Every row of a (small) population concatenated into one chunk."""
    chunks = list(pop.iter_chunks())
    return ActivityChunk(
        player_index=np.concatenate([c.player_index for c in chunks]),
        day_offset=np.concatenate([c.day_offset for c in chunks]),
        values=np.concatenate([c.values for c in chunks]),
        metric_names=pop.metric_names,
        start_date=pop.start_date,
        player_start=0,
        player_stop=pop.n_players,
    )


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_data() -> None:
    a = simulate(3000, seed=11, anomaly_rate=0.02, mixture_rate=0.05)
    b = simulate(3000, seed=11, anomaly_rate=0.02, mixture_rate=0.05)
    assert np.array_equal(a.labels, b.labels)
    assert a.mixtures == b.mixtures
    ra, rb = _all_rows(a), _all_rows(b)
    assert np.array_equal(ra.player_index, rb.player_index)
    assert np.array_equal(ra.day_offset, rb.day_offset)
    assert np.array_equal(ra.values, rb.values)


def test_different_seed_differs() -> None:
    a, b = _all_rows(simulate(2000, seed=1)), _all_rows(simulate(2000, seed=2))
    assert a.n_rows != b.n_rows or not np.array_equal(a.values, b.values)
    assert not np.array_equal(simulate(2000, seed=1).labels, simulate(2000, seed=2).labels)


def test_chunks_are_reproducible_in_any_order() -> None:
    pop = simulate(20000, seed=3)
    assert pop.n_blocks == 3
    forward = list(pop.iter_chunks())
    again = pop.chunk(1)
    assert np.array_equal(forward[1].values, again.values)
    assert np.array_equal(forward[1].day_offset, again.day_offset)
    assert [c.player_start for c in forward] == [0, 8192, 16384]
    assert forward[-1].player_stop == 20000


def test_player_ids_and_window() -> None:
    pop = _population(5000)
    assert pop.player_ids[0] == "p0000000"
    assert pop.player_ids[-1] == "p0004999"
    rows = _all_rows(pop)
    assert rows.day_offset.min() >= 0
    assert rows.day_offset.max() == pop.days - 1
    assert str(rows.dates().max()) == "2026-06-30"
    assert str(rows.dates().min()) == "2026-04-02"
    # rows sorted by (player, day), one row per player-day
    key = rows.player_index * pop.days + rows.day_offset
    assert np.all(np.diff(key) > 0)


# ------------------------------------------------------------------------ sizes


def test_archetype_shares_exact_and_unequal() -> None:
    pop = _population(5000)
    counts = Counter(pop.labels.tolist())
    shares = archetype_shares("default")
    assert set(counts) == set(ARCHETYPES)
    assert abs(sum(shares.values()) - 1.0) < 1e-12
    for name in ARCHETYPES:
        assert abs(counts[name] - shares[name] * 5000) <= 1
    sizes = sorted(counts.values())
    assert sizes[-1] / sizes[0] > 10
    assert len(set(sizes)) >= 6


def test_whale1pct_shape() -> None:
    shares = archetype_shares("whale1pct")
    assert shares["whale"] == pytest.approx(0.01)
    assert sum(shares.values()) == pytest.approx(1.0)
    ratio = shares["grinder"] / shares["casual_dabbler"]
    assert ratio == pytest.approx(0.15 / 0.35)
    counts = Counter(_population(5000, shape="whale1pct").labels.tolist())
    assert counts["whale"] == 50


def test_every_player_has_rows() -> None:
    names, X = _features(5000, 0, "default", 0.02, 0.05)
    assert X.shape == (5000, 2 * len(BASE_METRICS) + 3)
    assert np.all(_column(names, X, "active_days") >= 1)
    assert np.isfinite(X).all()


def test_player_features_match_direct_computation() -> None:
    pop = simulate(700, seed=4, anomaly_rate=0.05, mixture_rate=0.1)
    names, X = player_features(pop)
    rows = _all_rows(pop)
    for i in (0, 17, 350, 699):
        mine = rows.player_index == i
        days = rows.day_offset[mine]
        n = mine.sum()
        assert _column(names, X, "active_days")[i] == n
        assert _column(names, X, "days_since_last")[i] == pop.days - 1 - days.max()
        assert _column(names, X, "tenure_days")[i] == pop.days - days.min()
        for j, m in enumerate(pop.metric_names):
            total = rows.values[mine, j].sum()
            assert _column(names, X, f"{m}_total")[i] == pytest.approx(total)
            assert _column(names, X, f"{m}_per_day")[i] == pytest.approx(total / n)


# ------------------------------------------------------------------- behaviours


def test_whale_spend_is_heavy_tailed() -> None:
    names, X = _features(5000)
    labels = _population(5000).labels
    spend = _column(names, X, "spend_usd_total")[labels == "whale"]
    assert np.all(spend > 0)
    assert spend.max() / np.median(spend) > 5
    purchases = _column(names, X, "purchases_total")
    assert np.median(purchases[labels == "whale"]) >= 20


def test_zero_inflated_spend() -> None:
    pop = _population(5000)
    names, X = _features(5000)
    spend = _column(names, X, "spend_usd_total")
    non_whale = pop.labels != "whale"
    assert np.mean(spend == 0) > 0.95
    payers = np.mean(spend[non_whale] > 0)
    assert 0.0 < payers < 0.03  # a few small payers outside the whales
    assert np.median(spend[non_whale & (spend > 0)]) < 20
    rows = _all_rows(pop)
    whale_rows = pop.labels[rows.player_index] == "whale"
    assert np.mean(rows.metric("spend_usd")[~whale_rows] > 0) < 0.005


def test_metrics_are_coupled() -> None:
    rows = _all_rows(_population(5000))
    sessions, minutes = rows.metric("sessions"), rows.metric("minutes_played")
    assert np.corrcoef(np.log(sessions), np.log(minutes))[0, 1] > 0.6
    spend, purchases = rows.metric("spend_usd"), rows.metric("purchases")
    assert np.array_equal(spend > 0, purchases > 0)
    assert np.all(sessions >= 1)
    assert np.all((minutes > 0) & (minutes <= 1440))


def test_values_are_rounded() -> None:
    rows = _all_rows(_population(5000, 0, "default", 0.02, 0.05))
    for name in ("sessions", "purchases", "pvp_matches", "friends_invited", "chat_messages"):
        v = rows.metric(name)
        assert np.array_equal(v, np.round(v))
    assert np.allclose(
        rows.metric("minutes_played") * 10, np.round(rows.metric("minutes_played") * 10)
    )
    assert np.allclose(rows.metric("spend_usd") * 100, np.round(rows.metric("spend_usd") * 100))
    assert (rows.values >= 0).all()


def test_days_off_and_activity_levels() -> None:
    pop = _population(5000)
    names, X = _features(5000)
    active = _column(names, X, "active_days")
    med = {a: np.median(active[pop.labels == a]) for a in ARCHETYPES}
    assert med["grinder"] > 75
    assert med["casual_dabbler"] < 20
    assert med["casual_dabbler"] < med["socializer"] < med["grinder"]
    assert np.mean(active < pop.days) > 0.9  # nearly everyone has days off


def test_lapsing_players_stop_early() -> None:
    pop = _population(5000)
    names, X = _features(5000)
    since = _column(names, X, "days_since_last")
    lapsing = pop.labels == "lapsing"
    assert since[lapsing].min() >= 30
    for other in ("grinder", "competitive_pvp", "socializer", "new_explorer", "whale"):
        assert np.median(since[pop.labels == other]) <= 3
    # sparse casual players can go quiet for a month by chance, but rarely
    assert np.mean(since[pop.labels == "casual_dabbler"] >= 30) < 0.05


def test_new_explorers_joined_recently() -> None:
    pop = _population(5000)
    names, X = _features(5000)
    tenure = _column(names, X, "tenure_days")
    explorer = pop.labels == "new_explorer"
    assert tenure[explorer].max() <= 0.2 * pop.days + 1
    active_share = _column(names, X, "active_days")[explorer] / tenure[explorer]
    assert np.median(active_share) > 0.75
    for other in ("grinder", "lapsing", "whale", "socializer"):
        assert np.median(tenure[pop.labels == other]) >= 85


def test_role_metrics() -> None:
    pop = _population(5000)
    names, X = _features(5000)

    def median(feature: str, archetype: str) -> float:
        return float(np.median(_column(names, X, feature)[pop.labels == archetype]))

    others = [a for a in ARCHETYPES if a != "competitive_pvp"]
    assert median("pvp_matches_per_day", "competitive_pvp") > 3 * max(
        median("pvp_matches_per_day", a) for a in others
    )
    others = [a for a in ARCHETYPES if a != "socializer"]
    assert median("chat_messages_per_day", "socializer") > 3 * max(
        median("chat_messages_per_day", a) for a in others
    )
    assert median("friends_invited_total", "socializer") > 10
    others = [a for a in ARCHETYPES if a != "grinder"]
    assert median("minutes_played_per_day", "grinder") > 2 * max(
        median("minutes_played_per_day", a) for a in others
    )


# -------------------------------------------------------------------- anomalies


def test_anomalies_replace_normal_players() -> None:
    pop = _population(5000, 0, "default", 0.02, 0.0)
    counts = Counter(pop.labels.tolist())
    assert pop.n_players == 5000
    assert counts["anomaly_bot"] == 50
    assert counts["anomaly_fraud"] == 50
    assert sum(counts[a] for a in ARCHETYPES) == 4900


def test_bots_play_all_day_every_day() -> None:
    pop = _population(5000, 0, "default", 0.02, 0.0)
    names, X = _features(5000, 0, "default", 0.02, 0.0)
    bot = pop.labels == "anomaly_bot"
    assert np.all(_column(names, X, "active_days")[bot] == pop.days)
    minutes = _column(names, X, "minutes_played_per_day")[bot]
    assert np.all((minutes >= 1400) & (minutes <= 1440))
    assert np.all(_column(names, X, "sessions_per_day")[bot] > 40)
    for silent in ("chat_messages", "friends_invited", "spend_usd", "purchases"):
        assert np.all(_column(names, X, f"{silent}_total")[bot] == 0)
    # no normal player comes close to a bot's daily play time
    normal = np.isin(pop.labels, ARCHETYPES)
    assert _column(names, X, "minutes_played_per_day")[normal].max() < 1000


def test_fraud_has_impossible_purchases() -> None:
    pop = _population(5000, 0, "default", 0.02, 0.0)
    names, X = _features(5000, 0, "default", 0.02, 0.0)
    fraud = pop.labels == "anomaly_fraud"
    per_day_buys = _column(names, X, "purchases_per_day")[fraud]
    per_day_spend = _column(names, X, "spend_usd_per_day")[fraud]
    assert np.all((per_day_buys >= 12) | (per_day_spend >= 1500))
    assert np.any(per_day_buys >= 12) and np.any(per_day_spend >= 1500)
    assert np.all(_column(names, X, "minutes_played_per_day")[fraud] <= 4)
    whale_best = _column(names, X, "spend_usd_per_day")[pop.labels == "whale"].max()
    big = per_day_spend[per_day_buys < 12]
    assert np.all(big > whale_best)


# --------------------------------------------------------------------- mixtures


def test_mixture_players() -> None:
    pop = _population(5000, 0, "default", 0.0, 0.1)
    mixed = pop.labels == MIXED_LABEL
    assert mixed.sum() == 500
    for i in range(pop.n_players):
        mix = pop.mixtures[i]
        if not mixed[i]:
            assert mix is None
            continue
        assert mix is not None
        assert len(mix) == 2
        assert set(mix) <= set(ARCHETYPES)
        assert sum(mix.values()) == pytest.approx(1.0)
        assert all(0.35 <= w <= 0.65 for w in mix.values())


def test_mixture_blends_behaviour() -> None:
    pop = _population(5000, 0, "default", 0.0, 0.1)
    names, X = _features(5000, 0, "default", 0.0, 0.1)
    minutes = _column(names, X, "minutes_played_per_day")
    blend = np.array(
        [m is not None and set(m) == {"grinder", "casual_dabbler"} for m in pop.mixtures]
    )
    assert blend.sum() >= 5
    lo = np.median(minutes[pop.labels == "casual_dabbler"])
    hi = np.median(minutes[pop.labels == "grinder"])
    assert lo < np.median(minutes[blend]) < hi


# -------------------------------------------------------------------- correlated


def test_correlated_shape_adds_noisy_copies() -> None:
    pop = _population(3000, 0, "correlated")
    assert pop.metric_names == BASE_METRICS + CORRELATED_METRICS
    assert len(CORRELATED_METRICS) == 8
    names, X = _features(3000, 0, "correlated")
    sources = {
        "minutes_played_v2": "minutes_played",
        "playtime_hours": "minutes_played",
        "sessions_alt": "sessions",
        "spend_usd_gross": "spend_usd",
        "purchases_confirmed": "purchases",
        "pvp_matches_started": "pvp_matches",
        "chat_messages_sent": "chat_messages",
        "friends_invited_v2": "friends_invited",
    }
    assert set(sources) == set(CORRELATED_METRICS)
    for copy, source in sources.items():
        a = np.log1p(_column(names, X, f"{copy}_total"))
        b = np.log1p(_column(names, X, f"{source}_total"))
        assert np.corrcoef(a, b)[0, 1] > 0.97, copy
        assert not np.array_equal(a, b), copy


# ------------------------------------------------------------------- COPY text


@pytest.mark.parametrize("omit_zeros", [True, False])
def test_copy_rows_roundtrip(omit_zeros: bool) -> None:
    pop = simulate(1500, seed=9, shape="correlated", anomaly_rate=0.05, mixture_rate=0.05)
    chunk = next(pop.iter_chunks())
    text = format_copy_rows("my game\t1\\x", pop, chunk, omit_zeros=omit_zeros).decode()
    lines = text.split("\n")
    assert lines.pop() == ""
    assert len(lines) == chunk.n_rows
    dates = chunk.dates().astype(str)
    for i in range(0, chunk.n_rows, 97):
        game, pid, day, metrics = lines[i].split("\t")
        assert game == "my game\\t1\\\\x"
        assert pid == pop.player_ids[chunk.player_index[i]]
        assert day == dates[i]
        obj = json.loads(metrics)
        assert "sessions" in obj
        if omit_zeros:
            assert all(v != 0 for k, v in obj.items() if k != "sessions")
        else:
            assert list(obj) == list(pop.metric_names)
        got = np.array([obj.get(m, 0) for m in pop.metric_names], dtype=np.float64)
        assert np.allclose(got, chunk.values[i], rtol=0, atol=1e-9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        simulate(10, shape="nope")
    with pytest.raises(ValueError):
        simulate(0)
    with pytest.raises(ValueError):
        simulate(10, anomaly_rate=0.7, mixture_rate=0.5)


# ---------------------------------------------------------------- separability


def _varimax(loadings: FloatArray, iterations: int = 100, tol: float = 1e-8) -> FloatArray:
    """Varimax rotation matrix (k, k) for a (p, k) loading matrix."""
    p, k = loadings.shape
    rotation = np.eye(k)
    previous = 0.0
    for _ in range(iterations):
        rotated = loadings @ rotation
        target = rotated**3 - rotated @ np.diag(np.sum(rotated**2, axis=0)) / p
        u, s, vt = np.linalg.svd(loadings.T @ target)
        rotation = u @ vt
        if previous and s.sum() < previous * (1 + tol):
            break
        previous = s.sum()
    return rotation


def _matched_accuracy(pop: Population, X: FloatArray) -> tuple[float, int]:
    """Downstream pipeline on the features; returns (matched accuracy, axes kept)."""
    Z = np.log1p(X)
    Z = (Z - Z.mean(axis=0)) / Z.std(axis=0)
    pca = PCA().fit(Z)
    k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.70) + 1)
    loadings = pca.components_[:k].T * np.sqrt(pca.explained_variance_[:k])
    scores = pca.transform(Z)[:, :k] @ _varimax(loadings)
    gmm = GaussianMixture(7, covariance_type="full", n_init=3, random_state=0).fit(scores)
    found = gmm.predict(scores)
    truth = np.array([ARCHETYPES.index(label) for label in pop.labels])
    confusion = np.zeros((7, 7), dtype=np.int64)
    np.add.at(confusion, (truth, found), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / len(truth)), k


@pytest.mark.parametrize(
    ("shape", "seed", "bar"),
    [
        ("default", 0, 0.97),
        ("default", 1, 0.97),
        ("whale1pct", 0, 0.94),
        ("whale1pct", 2, 0.94),
        ("correlated", 0, 0.94),
        ("correlated", 3, 0.94),
    ],
)
def test_archetypes_are_separable(shape: str, seed: int, bar: float) -> None:
    pop = _population(5000, seed, shape)
    _, X = _features(5000, seed, shape)
    accuracy, _ = _matched_accuracy(pop, X)
    assert accuracy >= bar
