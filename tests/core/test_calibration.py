"""End-to-end calibration, the taxonomy model (round trip, single scoring path), continuity."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from segmentation.calibration import CalibrationOptions, CalibrationResult, calibrate
from segmentation.drift import drift_report, drift_verdict
from segmentation.model import Taxonomy
from segmentation.quality import matched_accuracy
from segmentation.segments import Segments

from tests.core.test_anomalies import toy_population

ANOMALOUS = ("bot", "odd")


@pytest.fixture(scope="module")
def population() -> tuple[np.ndarray, list[str], np.ndarray]:
    return toy_population(n=5000, n_bots=30, n_odd=20, seed=2)


@pytest.fixture(scope="module")
def result(population: tuple[np.ndarray, list[str], np.ndarray]) -> CalibrationResult:
    X, names, _ = population
    return calibrate(X, names, CalibrationOptions())


def test_end_to_end_result(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, labels = population
    tax = result.taxonomy
    k = tax.segments.n_segments
    assert k == 7 and tax.segment_ids == list(range(1, 8))
    assert len(set(tax.segment_names)) == 7
    assert result.report.dropped == {"tenure_days": "constant"}  # nobody joined late
    assert result.lineage == {i: None for i in range(1, 8)}

    assert [p["segment_id"] for p in result.profiles] == tax.segment_ids
    assert sum(p["size"] for p in result.profiles) == len(X)
    assert sum(p["share"] for p in result.profiles) == pytest.approx(1.0)
    whale_segment = int(np.bincount(result.scores.primary[labels == "whale"]).argmax())
    profile = result.profiles[whale_segment]
    assert set(profile["features"]) == set(names)  # every ORIGINAL feature, dropped ones too
    spend = profile["features"]["spend_usd_total"]
    assert spend["mean"] > spend["median"] > 100  # raw units, heavy right tail
    assert set(profile["axis_means"]) == set(tax.axes.names)

    normal = ~np.isin(labels, ANOMALOUS)
    assert matched_accuracy(labels[normal], result.scores.primary[normal]) > 0.9
    quality = result.quality
    assert quality["variance_explained"] >= 0.70
    assert quality["silhouette"] > 0.3 and quality["davies_bouldin"] > 0
    assert quality["stability_ari"] > 0.8 and np.isfinite(quality["bic"])
    json.dumps(quality, allow_nan=False)
    assert {"preparation", "axes", "segments", "anomaly", "quality", "total"} <= set(result.timings)
    assert result.k_curve == [{"k": 7, "bic": quality["bic"]}]


def test_drift_reference_describes_the_calibration_population(result: CalibrationResult) -> None:
    ref = result.drift_reference
    tax = result.taxonomy
    assert set(ref["features"]) == set(tax.feature_names)
    assert set(ref["axes"]) == set(tax.axes.names)
    assert sum(ref["segment_shares"].values()) == pytest.approx(1.0)
    assert ref["anomaly_rate"] == pytest.approx(result.scores.anomaly.is_anomaly.mean())
    assert ref["variance_explained"] == pytest.approx(result.quality["variance_explained"])
    json.dumps(ref, allow_nan=False)


def test_drift_same_population_ok_shifted_population_recalibrate(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    tax = result.taxonomy

    def report(X_now: np.ndarray) -> dict:
        s = tax.score(X_now, names)
        return drift_report(
            result.drift_reference,
            features={f: s.prepared[:, i] for i, f in enumerate(tax.feature_names)},
            axes={a: s.axis_scores[:, i] for i, a in enumerate(tax.axes.names)},
            segment_ids=s.segment_id,
            anomaly_flags=s.anomaly.is_anomaly,
            variance_explained=tax.axes.explained_share(s.prepared),
        )

    assert drift_verdict(report(X))[0] == "ok"
    shifted = X.copy()
    rng = np.random.default_rng(0)
    chat = [names.index("chat_messages_total"), names.index("chat_messages_per_day")]
    shifted[:, chat] *= rng.lognormal(1.5, 0.3, (len(X), 1))  # everyone chats 4-5x more
    verdict, why = drift_verdict(report(shifted))
    assert verdict == "recalibrate"
    assert any("chat_messages_per_day" in r for r in why)


def test_calibration_scores_come_from_the_single_scoring_path(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    again = result.taxonomy.score(X, names)
    np.testing.assert_array_equal(again.posteriors, result.scores.posteriors)
    np.testing.assert_array_equal(again.anomaly.score, result.scores.anomaly.score)
    np.testing.assert_array_equal(again.segment_id, result.scores.segment_id)


def test_taxonomy_round_trips_through_json_with_identical_scores(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    doc = json.loads(json.dumps(result.taxonomy.to_dict(), allow_nan=False))
    assert set(doc) == {
        "format",
        "version",
        "preparation",
        "axes",
        "segments",
        "anomaly",
        "segment_ids",
        "segment_names",
    }
    loaded = Taxonomy.from_dict(doc)
    a, b = result.taxonomy.score(X, names), loaded.score(X, names)
    for field in ("prepared", "axis_scores", "posteriors", "primary", "segment_id", "membership"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for field in ("score", "is_anomaly", "kind", "residual", "outlier"):
        np.testing.assert_array_equal(getattr(a.anomaly, field), getattr(b.anomaly, field))
    assert loaded.score_one(X[0], names) == result.taxonomy.score_one(X[0], names)
    with pytest.raises(ValueError):
        Taxonomy.from_dict({**doc, "format": "something-else"})


def test_score_one_equals_batch_scoring(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    tax = result.taxonomy
    rows = X[:300].copy()
    rows[0, 2] = np.nan
    rows[1, 5] = np.inf
    rows[2, 0] = -1e9
    batch = tax.score(rows, names)
    order = np.random.default_rng(0).permutation(len(names))  # a different column layout
    shuffled_names = [names[i] for i in order]
    for i in range(len(rows)):
        one = tax.score_one(rows[i, order].tolist(), shuffled_names)
        np.testing.assert_allclose(one["posteriors"], batch.posteriors[i], atol=1e-12)
        np.testing.assert_allclose(one["axis_scores"], batch.axis_scores[i], atol=1e-12)
        assert one["primary"] == batch.primary[i]
        assert one["segment_id"] == batch.segment_id[i]
        assert one["anomaly_score"] == pytest.approx(batch.anomaly.score[i], rel=1e-9, abs=1e-12)
        assert one["anomaly_kind"] == batch.anomaly.kind[i]
        assert one["n_non_finite"] == batch.n_non_finite[i]
    assert batch.n_non_finite[:3].tolist() == [1, 1, 0]
    one = tax.score_one(X[0], names)
    assert isinstance(one["posteriors"], list) and isinstance(one["membership"], float)
    assert isinstance(one["is_anomaly"], bool) and isinstance(one["segment_id"], int)
    json.dumps(one)


def test_explain_gives_reasons_for_an_anomalous_player(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, labels = population
    bot = int(np.flatnonzero(labels == "bot")[0])
    assert result.scores.anomaly.is_anomaly[bot]
    why = result.taxonomy.explain(X[bot], names, top=3)
    assert len(why) == 3 and why[0]["feature"] in result.taxonomy.feature_names


def test_same_data_and_options_give_an_identical_taxonomy(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    again = calibrate(X, names, CalibrationOptions())
    assert again.taxonomy.to_dict() == result.taxonomy.to_dict()
    assert again.drift_reference == result.drift_reference


def test_recalibrating_unchanged_data_keeps_every_id_and_name(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    previous = Taxonomy.from_dict(result.taxonomy.to_dict())
    previous.segment_ids = [40, 41, 42, 43, 44, 45, 46]  # ids from a long history
    previous.segment_names = [f"Named by the team {i}" for i in range(7)]
    again = calibrate(X, names, CalibrationOptions(), previous=previous)
    assert again.taxonomy.segment_ids == previous.segment_ids
    assert again.taxonomy.segment_names == previous.segment_names
    assert again.lineage == {i: i for i in previous.segment_ids}


def test_previous_segments_in_a_different_order_are_matched_by_centroid(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    tax = result.taxonomy
    perm = np.array([3, 6, 0, 5, 1, 4, 2])
    anomaly = replace(
        tax.anomaly,
        segment_offsets=tax.anomaly.segment_offsets[perm],
        segment_scales=tax.anomaly.segment_scales[perm],
        tail_directions=tax.anomaly.tail_directions[perm],
    )
    previous = Taxonomy(
        preparation=tax.preparation,
        axes=tax.axes,
        segments=Segments(
            tax.segments.weights[perm], tax.segments.means[perm], tax.segments.covariances[perm]
        ),
        anomaly=anomaly,
        segment_ids=[10 * (i + 1) for i in perm],
        segment_names=[f"team name {i}" for i in perm],
    )
    again = calibrate(X, names, CalibrationOptions(), previous=previous)
    assert again.taxonomy.segment_ids == [10 * (i + 1) for i in range(7)]
    assert again.taxonomy.segment_names == [f"team name {i}" for i in range(7)]


def test_recalibrating_reordered_rows_keeps_ids_with_their_players(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    order = np.random.default_rng(7).permutation(len(X))
    again = calibrate(X[order], names, CalibrationOptions(), previous=result.taxonomy)
    before = result.scores.segment_id[order]
    largest = [result.taxonomy.segment_ids[j] for j in range(4)]  # 95% of the players
    assert set(largest) <= set(again.taxonomy.segment_ids)
    for seg_id in set(again.taxonomy.segment_ids) & set(result.taxonomy.segment_ids):
        players = again.scores.segment_id == seg_id
        # An inherited id labels (mostly) the players who carried it before.
        assert np.mean(before[players] == seg_id) > 0.5


def test_new_segments_get_new_ids_and_old_ones_are_inherited(
    population: tuple[np.ndarray, list[str], np.ndarray], result: CalibrationResult
) -> None:
    X, names, _ = population
    coarse = calibrate(X, names, CalibrationOptions(n_segments=4, stability_resamples=0))
    fine = calibrate(X, names, CalibrationOptions(stability_resamples=0), previous=coarse.taxonomy)
    ids = fine.taxonomy.segment_ids
    assert len(set(ids)) == 7
    inherited = [i for i in ids if i in coarse.taxonomy.segment_ids]
    new = [i for i in ids if i not in coarse.taxonomy.segment_ids]
    assert len(inherited) >= 2
    assert sorted(new) == list(range(5, 5 + len(new)))  # max(previous ids) + 1, ...
    assert all(fine.lineage[i] == i for i in inherited)
    assert all(fine.lineage[i] is None for i in new)
    for i in inherited:
        assert (
            fine.taxonomy.segment_names[ids.index(i)]
            == coarse.taxonomy.segment_names[coarse.taxonomy.segment_ids.index(i)]
        )
    # Stored raw-unit centroids give the same answer as deriving them from the taxonomy.
    via_raw = calibrate(
        X,
        names,
        CalibrationOptions(stability_resamples=0),
        previous=coarse.taxonomy,
        previous_centroids_raw=coarse.taxonomy.centroids_raw(),
        previous_centroid_features=coarse.taxonomy.feature_names,
    )
    assert via_raw.taxonomy.segment_ids == ids


def test_automatic_k_reports_the_curve(
    population: tuple[np.ndarray, list[str], np.ndarray],
) -> None:
    X, names, _ = population
    options = CalibrationOptions(n_segments=0, k_max=8, n_init=1, stability_resamples=0)
    res = calibrate(X, names, options)
    assert [c["k"] for c in res.k_curve] == list(range(2, 9))
    assert res.quality["k_selected_by"] == "bic_elbow"
    assert 4 <= res.taxonomy.segments.n_segments <= 8
    json.dumps(res.k_curve, allow_nan=False)


def test_taxonomy_validates_its_parts(result: CalibrationResult) -> None:
    tax = result.taxonomy
    with pytest.raises(ValueError):
        replace(tax, segment_ids=[1, 2])
    with pytest.raises(KeyError):
        tax.score(np.zeros((1, 3)), ["a", "b", "c"])


def test_generator_population_if_available() -> None:
    generator = pytest.importorskip("segmentation_loader.generator")
    try:
        pop = generator.simulate(6000, seed=4, anomaly_rate=0.02)
        names, X = generator.player_features(pop)
    except Exception as exc:  # the generator is developed in parallel
        pytest.skip(f"generator unavailable: {exc}")
    res = calibrate(X, names, CalibrationOptions(stability_resamples=0))
    labels = np.asarray(pop.labels)
    anomalous = np.char.startswith(labels.astype(str), "anomaly_")
    flagged = res.scores.anomaly.is_anomaly
    assert matched_accuracy(labels[~anomalous], res.scores.primary[~anomalous]) > 0.9
    assert flagged[anomalous].mean() >= 0.9
    assert flagged[~anomalous].mean() <= 0.02
