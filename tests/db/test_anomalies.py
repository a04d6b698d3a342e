"""Anomalous players and taxonomy drift on planted populations."""

from __future__ import annotations

import psycopg
import pytest

from tests.db.helpers import AS_OF, calibrate, load_population, planted_labels

pytestmark = pytest.mark.db


@pytest.fixture
def planted(conn: psycopg.Connection) -> psycopg.Connection:
    load_population(conn, "g1", players=5000, seed=11, anomaly_rate=0.02)
    calibrate(conn)
    return conn


def test_planted_anomalies_recall_and_false_positive_rate(planted: psycopg.Connection) -> None:
    conn = planted
    labels = planted_labels(conn, "g1")
    flagged = {r[0]: r for r in conn.execute(
        "SELECT player_id, anomaly_score, kind, reasons, nearest_segment"
        " FROM segmentation.detect_anomalies('g1', %s)", (AS_OF,)).fetchall()}
    anomalous = {p for p, a in labels.items() if a.startswith("anomaly_")}
    normal = set(labels) - anomalous
    recall = len(anomalous & set(flagged)) / len(anomalous)
    fpr = len(normal & set(flagged)) / len(normal)
    print(f"anomalies: planted {len(anomalous)}, recall {recall:.3f}, "
          f"false-positive rate {fpr:.4f} among {len(normal)} normal players")
    assert recall >= 0.90
    assert fpr <= 0.02
    some = next(iter(flagged.values()))
    assert some[2] in ("off-axis", "outlier")
    assert some[3] and "feature" in some[3][0]
    scores = [r[1] for r in flagged.values()]
    listed = [r[0] for r in conn.execute(
        "SELECT anomaly_score FROM segmentation.detect_anomalies('g1', %s)", (AS_OF,))]
    assert listed == sorted(listed, reverse=True) and len(listed) == len(scores)


def test_top_whales_are_not_flagged_for_spending(planted: psycopg.Connection) -> None:
    conn = planted
    whales = [r[0] for r in conn.execute(
        "SELECT a.player_id FROM segmentation.player_activity a"
        " JOIN segmentation_lab.planted_labels l USING (game_id, player_id)"
        " WHERE a.game_id = 'g1' AND l.archetype = 'whale'"
        " GROUP BY a.player_id ORDER BY sum((a.metrics->>'spend_usd')::float8) DESC LIMIT 10")]
    flagged = {r[0] for r in conn.execute(
        "SELECT player_id FROM segmentation.detect_anomalies('g1', %s)", (AS_OF,))}
    assert len(whales) == 10
    assert len(set(whales) & flagged) <= 1


def test_drift_ok_on_same_window_recalibrate_after_shift(planted: psycopg.Connection) -> None:
    conn = planted
    same = conn.execute("SELECT segmentation.taxonomy_drift('g1', %s)", (AS_OF,)).fetchone()[0]
    assert same["verdict"] == "ok", same["reasons"]
    batch = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert batch["drift"]["verdict"] == "ok", batch["drift"]
    game = conn.execute("SELECT segmentation.health()").fetchone()[0]["components"]["taxonomies"]
    assert game["active"][0]["drift_verdict"] == "ok" and game["status"] == "healthy"
    # One archetype doubles and playtime is reported in a new unit (x3).
    conn.execute("INSERT INTO segmentation.player_activity"
                 " SELECT a.game_id, a.player_id || '_twin', a.activity_date, a.metrics"
                 " FROM segmentation.player_activity a"
                 " JOIN segmentation_lab.planted_labels l USING (game_id, player_id)"
                 " WHERE a.game_id = 'g1' AND l.archetype = 'grinder'")
    conn.execute("UPDATE segmentation.player_activity SET metrics = metrics || jsonb_build_object("
                 "'minutes_played', (metrics->>'minutes_played')::float8 * 3) WHERE game_id = 'g1'")
    moved = conn.execute("SELECT segmentation.taxonomy_drift('g1', %s)", (AS_OF,)).fetchone()[0]
    assert moved["verdict"] == "recalibrate"
    assert any("minutes_played" in r for r in moved["reasons"]), moved["reasons"]
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    game = conn.execute("SELECT segmentation.health()").fetchone()[0]["components"]["taxonomies"]
    assert game["active"][0]["drift_verdict"] == "recalibrate"
    assert game["status"] == "degraded"
