"""Taxonomy calibration inside PostgreSQL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from segmentation.quality import matched_accuracy

from tests.db.helpers import AS_OF, calibrate, load_population, planted_labels

pytestmark = pytest.mark.db


@pytest.fixture
def population(conn: psycopg.Connection) -> psycopg.Connection:
    load_population(conn, "g1", players=3000, seed=3)
    return conn


def test_calibration_recovers_planted_archetypes(population: psycopg.Connection) -> None:
    conn = population
    summary = calibrate(conn)
    assert summary["version"] == 1 and summary["active"] is True
    assert summary["population"]["players_in_window"] == 3000
    assert len(summary["segments"]) == 7
    assert summary["quality"]["variance_explained"] >= 0.70
    assert {"preparation", "axes", "segments"} <= set(summary["timings"]) | {
        k.removeprefix("fit_") for k in summary["timings"]}
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    rows = conn.execute("SELECT player_id, segment_id FROM segmentation.player_current_segment"
                        " WHERE game_id = 'g1'").fetchall()
    labels = planted_labels(conn, "g1")
    truth = [labels[p] for p, _ in rows]
    pred = [s for _, s in rows]
    accuracy = matched_accuracy(truth, pred)
    print(f"matched accuracy on 3000 planted players: {accuracy:.4f}")
    assert accuracy >= 0.94


def test_model_is_plain_data(population: psycopg.Connection) -> None:
    conn = population
    tid = calibrate(conn)["taxonomy_id"]
    axes = conn.execute("SELECT name, array_length(loadings, 1), variance_explained"
                        " FROM segmentation.behavioral_axes WHERE taxonomy_id = %s"
                        " ORDER BY axis_index", (tid,)).fetchall()
    assert len(axes) >= 2
    names = [a[0] for a in axes]
    assert all(n and n.strip() for n in names)
    assert len(set(names)) == len(names)
    # A named axis mentions the behaviour it loads on.
    assert any(("spend" in n or "purchase" in n) for n in names)
    segs = conn.execute("SELECT name, size, share, profile ? 'features'"
                        " FROM segmentation.segment_definitions WHERE taxonomy_id = %s",
                        (tid,)).fetchall()
    assert sum(s[1] for s in segs) == 3000
    assert abs(sum(s[2] for s in segs) - 1) < 1e-9
    assert all(s[3] for s in segs)
    kinds = conn.execute("SELECT jsonb_typeof(preparation), jsonb_typeof(anomaly_model)"
                         " FROM segmentation.game_behavioral_taxonomy WHERE taxonomy_id = %s",
                         (tid,)).fetchone()
    assert kinds == ("object", "object")


def test_recalibrating_unchanged_data_keeps_segment_ids_and_rollback(
        population: psycopg.Connection) -> None:
    conn = population
    first = calibrate(conn)
    second = calibrate(conn)
    assert second["version"] == 2
    ids1 = {s["segment_id"]: s["name"] for s in first["segments"]}
    ids2 = {s["segment_id"]: s["name"] for s in second["segments"]}
    assert ids1 == ids2
    assert all(s["previous_segment_id"] == s["segment_id"] for s in second["segments"])
    active = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                          " WHERE game_id = 'g1' AND is_active").fetchall()
    assert active == [(second["taxonomy_id"],)]
    conn.execute("SELECT segmentation.activate_taxonomy(%s)", (first["taxonomy_id"],))
    history = conn.execute("SELECT taxonomy_id, is_active FROM segmentation.taxonomy_history('g1')"
                           ).fetchall()
    assert history == [(second["taxonomy_id"], False), (first["taxonomy_id"], True)]


def test_same_data_same_taxonomy(population: psycopg.Connection) -> None:
    conn = population
    a = calibrate(conn, activate=False)
    b = calibrate(conn, activate=False)
    la = conn.execute("SELECT loadings FROM segmentation.behavioral_axes WHERE taxonomy_id = %s"
                      " ORDER BY axis_index", (a["taxonomy_id"],)).fetchall()
    lb = conn.execute("SELECT loadings FROM segmentation.behavioral_axes WHERE taxonomy_id = %s"
                      " ORDER BY axis_index", (b["taxonomy_id"],)).fetchall()
    assert la == lb
    assert [s["size"] for s in a["segments"]] == [s["size"] for s in b["segments"]]


def test_population_below_minimum_errors_and_writes_nothing(conn: psycopg.Connection) -> None:
    load_population(conn, "small", players=120, seed=1)
    with pytest.raises(psycopg.Error) as err:
        calibrate(conn, "small")
    assert err.value.sqlstate == "SG003"
    assert "120 players" in err.value.diag.message_primary
    assert "at least 500" in err.value.diag.message_primary
    assert err.value.diag.message_hint
    assert "Traceback" not in err.value.diag.message_primary
    assert conn.execute("SELECT count(*) FROM segmentation.game_behavioral_taxonomy"
                        ).fetchone()[0] == 0
    # The failure itself is logged, in its own transaction.
    runs = conn.execute("SELECT kind, status, error_sqlstate, parameters ? 'attempted_run_id'"
                        " FROM segmentation.runs").fetchall()
    assert runs == [("calibrate", "failed", "SG003", True)]


@pytest.mark.parametrize(("game", "sqlstate"), [("nope", "SG001"), ("", "SG008")])
def test_unknown_game_and_bad_arguments(conn: psycopg.Connection, game: str,
                                        sqlstate: str) -> None:
    with pytest.raises(psycopg.Error) as err:
        calibrate(conn, game)
    assert err.value.sqlstate == sqlstate
    assert err.value.diag.message_hint


def test_empty_window(population: psycopg.Connection) -> None:
    with pytest.raises(psycopg.Error) as err:
        population.execute("SELECT segmentation.calibrate_taxonomy('g1', as_of => '2020-01-01')")
    assert err.value.sqlstate == "SG002"


def test_automatic_k_reports_the_curve(population: psycopg.Connection) -> None:
    summary = calibrate(population, n_segments=0)
    curve = summary["k_curve"]
    assert len(curve) >= 3
    assert summary["quality"]["k_selected_by"] != "fixed"
    assert 2 <= len(summary["segments"]) <= 12


def test_concurrent_calibrations_do_not_interleave(dsn: str,
                                                    population: psycopg.Connection) -> None:
    results: list[dict] = []
    errors: list[Exception] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                results.append(calibrate(c))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["version"] for r in results) == [1, 2]
    runs = population.execute("SELECT started_at, finished_at FROM segmentation.runs"
                              " WHERE kind = 'calibrate' ORDER BY started_at").fetchall()
    assert len(runs) == 2
    # The second started its work only after the first had finished.
    assert runs[1][0] >= runs[0][1] or runs[0][1] <= runs[1][1]
    second = max(results, key=lambda r: r["version"])
    assert second["previous_taxonomy_id"] == min(results, key=lambda r: r["version"])[
        "taxonomy_id"]


def test_export_import_round_trip(population: psycopg.Connection) -> None:
    conn = population
    tid = calibrate(conn)["taxonomy_id"]
    doc = conn.execute("SELECT segmentation.export_taxonomy(%s)", (tid,)).fetchone()[0]
    imported = conn.execute("SELECT segmentation.import_taxonomy(%s::jsonb, 'g1')",
                            (psycopg.types.json.Jsonb(doc),)).fetchone()[0]
    assert imported["version"] == 2
    a = conn.execute("SELECT segment_id, membership FROM segmentation.categorize_player("
                     "'g1', 'p0000001', %s)", (AS_OF,)).fetchone()
    conn.execute("SELECT segmentation.activate_taxonomy(%s)", (tid,))
    b = conn.execute("SELECT segment_id, membership FROM segmentation.categorize_player("
                     "'g1', 'p0000001', %s)", (AS_OF,)).fetchone()
    assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-12
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT segmentation.import_taxonomy('{\"format\": \"nope\"}'::jsonb)")
    assert err.value.sqlstate == "SG012"


SAMPLE_SQL = (
    "SELECT player_id FROM (SELECT DISTINCT player_id FROM segmentation.player_activity"
    " WHERE game_id = 'g1' AND activity_date > %(as_of)s::date - 90"
    " AND activity_date <= %(as_of)s) p ORDER BY md5(player_id || '0') LIMIT 1200")


def test_sampled_calibration_fits_a_seeded_sample_and_counts_its_rows(
        population: psycopg.Connection) -> None:
    """Above segmentation.calibration_sample_size the model is fitted on the players with
    the lowest md5(player_id || random_seed): a fixed, uniform draw. Its data-quality
    counts cover the rows of the sampled players, like every other fitted figure. The
    same holds when the game outgrew the sample size since its last calibration."""
    conn = population
    sample = [r[0] for r in conn.execute(SAMPLE_SQL, {"as_of": AS_OF}).fetchall()]
    outside = conn.execute(
        "SELECT DISTINCT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
        " AND NOT player_id = ANY(%s) ORDER BY 1 LIMIT 1", (sample,)).fetchone()[0]
    # One bad value (a string) on a day of a sampled player, three on an unsampled one.
    for player, n in ((sample[0], 1), (outside, 3)):
        conn.execute(
            "UPDATE segmentation.player_activity SET metrics = metrics || '{\"sessions\": \"x\"}'"
            " WHERE (game_id, player_id, activity_date) IN (SELECT game_id, player_id,"
            " activity_date FROM segmentation.player_activity WHERE game_id = 'g1'"
            " AND player_id = %s ORDER BY activity_date DESC LIMIT %s)", (player, n))
    conn.execute("SET segmentation.calibration_sample_size = 1200")
    summary = calibrate(conn)
    assert summary["population"] == {
        "players_in_window": 3000, "calibrated_on": 1200, "sampled": True}
    assert sum(s["size"] for s in summary["segments"]) == 1200
    assert summary["features"]["invalid_metric_values_ignored"] == {"sessions": 1}
    # The same seed draws the same sample: a recalibration finds the same segments.
    again = calibrate(conn)
    assert [s["size"] for s in again["segments"]] == [s["size"] for s in summary["segments"]]
    # As if the game had 100 players at its last calibration: this one aggregates every
    # player in one pass, then keeps the same sample and counts only its rows.
    conn.execute("UPDATE segmentation.game_behavioral_taxonomy SET population = 100,"
                 " sampled = false WHERE game_id = 'g1'")
    grown = calibrate(conn)
    assert grown["population"] == summary["population"]
    assert grown["features"]["invalid_metric_values_ignored"] == {"sessions": 1}
    assert [s["size"] for s in grown["segments"]] == [s["size"] for s in summary["segments"]]
    # Categorization covers every player in the window, not only the sample.
    result = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert result["players"] == 3000
