"""categorize_all's window cache: incremental runs give what a whole-window run gives.

Each test compares a run served by the cache with a run that aggregates the whole window
again (the cache state deleted first), on the players' stored axis scores and segments.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db


@pytest.fixture
def calibrated(conn: psycopg.Connection) -> psycopg.Connection:
    load_population(conn, "g1", players=1500, seed=11)
    # A 30-day window inside 90 days of activity: each later run has days leaving it.
    calibrate(conn, lookback_days=30)
    return conn


def categorize(conn: psycopg.Connection, as_of: date) -> dict[str, Any]:
    return conn.execute("SELECT segmentation.categorize_all('g1', %s)", (as_of,)).fetchone()[0]


def current(conn: psycopg.Connection) -> dict[str, tuple[int, list[float], float]]:
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT player_id, segment_id, axis_scores, anomaly_score"
        " FROM segmentation.player_segment_memberships WHERE game_id = 'g1' AND valid_to IS NULL")}


def assert_same_as_whole_window(conn: psycopg.Connection, as_of: date) -> None:
    """The current rows equal those of a run that ignores the cache."""
    cached = current(conn)
    conn.execute("DELETE FROM segmentation.window_cache_state WHERE game_id = 'g1'")
    result = categorize(conn, as_of)
    assert result["window_cache"]["reason"] == "no cache"
    whole = current(conn)
    assert cached.keys() == whole.keys()
    for player, (segment, axes, anomaly) in whole.items():
        assert cached[player][0] == segment, player
        assert cached[player][1] == pytest.approx(axes, rel=1e-9, abs=1e-9), player
        assert cached[player][2] == pytest.approx(anomaly, rel=1e-9, abs=1e-9), player


def test_later_runs_read_only_the_changes_and_match_a_whole_window_run(
        calibrated: psycopg.Connection) -> None:
    conn = calibrated
    first = categorize(conn, AS_OF - timedelta(days=5))
    assert first["window_cache"] == {"mode": "rebuilt", "reason": "no cache",
                                     "recomputed_players": 0}
    # Writes to cached days: a changed metric, a deleted day, a new player on an old day,
    # an existing player on a day they had no activity. And a day after the cached ones.
    conn.execute(
        "UPDATE segmentation.player_activity SET metrics = metrics || '{\"sessions\": 50}'"
        " WHERE (game_id, player_id, activity_date) = (SELECT game_id, player_id, activity_date"
        "  FROM segmentation.player_activity WHERE game_id = 'g1' AND player_id > 'p0000100'"
        "  AND activity_date BETWEEN %s AND %s ORDER BY player_id, activity_date LIMIT 1)",
        (AS_OF - timedelta(days=25), AS_OF - timedelta(days=10)))
    conn.execute(
        "DELETE FROM segmentation.player_activity"
        " WHERE (game_id, player_id, activity_date) = (SELECT game_id, player_id, activity_date"
        "  FROM segmentation.player_activity WHERE game_id = 'g1' AND player_id > 'p0000100'"
        "  AND activity_date BETWEEN %s AND %s ORDER BY player_id DESC LIMIT 1)",
        (AS_OF - timedelta(days=28), AS_OF - timedelta(days=12)))
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'late', %s,"
                 " '{\"sessions\": 4, \"minutes_played\": 60}')", (AS_OF - timedelta(days=29),))
    conn.execute("INSERT INTO segmentation.player_activity SELECT 'g1', 'p0000003', d,"
                 " '{\"sessions\": 1}' FROM generate_series(%s::date, %s::date, '1 day') d"
                 " ON CONFLICT DO NOTHING",
                 (AS_OF - timedelta(days=20), AS_OF - timedelta(days=7)))
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'fresh', %s,"
                 " '{\"sessions\": 2}')", (AS_OF,))
    later = categorize(conn, AS_OF)
    assert later["window_cache"] == {"mode": "incremental", "reason": "5 day(s) advanced",
                                     "recomputed_players": 4}
    health = conn.execute("SELECT segmentation.health()").fetchone()[0]
    assert health["components"]["taxonomies"]["active"][0]["window_cache"] == \
        later["window_cache"]
    assert {"late", "fresh"} <= current(conn).keys()
    assert_same_as_whole_window(conn, AS_OF)
    # The same as_of again: nothing changed, nothing to recompute.
    again = categorize(conn, AS_OF)
    assert again["window_cache"]["reason"] == "0 day(s) advanced"
    assert_same_as_whole_window(conn, AS_OF)


def test_a_write_that_races_a_run_makes_the_next_run_rebuild(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """A write to a day the running batch is about to cache, committed after the batch
    read the activity: the batch cannot see it and the trigger could not name the player.
    The next run must not trust the cache."""
    conn = calibrated
    categorize(conn, AS_OF - timedelta(days=5))
    with psycopg.connect(dsn) as writer:
        writer.execute(
            "UPDATE segmentation.player_activity SET metrics = '{\"sessions\": 90}'"
            " WHERE game_id = 'g1' AND activity_date = %s AND player_id IN"
            " (SELECT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
            "  AND activity_date = %s ORDER BY player_id LIMIT 5)",
            (AS_OF - timedelta(days=2),) * 2)
        # Logged as "day written, players unknown": that day was not cached yet. The run
        # (another session) does not see the uncommitted write and caches the day.
        with psycopg.connect(dsn, autocommit=True) as batch:
            assert categorize(batch, AS_OF)["window_cache"]["mode"] == "incremental"
        writer.commit()
    nxt = categorize(conn, AS_OF)
    assert nxt["window_cache"] == {
        "mode": "rebuilt", "reason": "cached days were written while a run was building"
        " the cache", "recomputed_players": 0}
    assert_same_as_whole_window(conn, AS_OF)


def test_many_changed_players_or_a_truncate_rebuild(calibrated: psycopg.Connection) -> None:
    conn = calibrated
    categorize(conn, AS_OF - timedelta(days=1))
    conn.execute("UPDATE segmentation.player_activity SET metrics = metrics ||"
                 " '{\"sessions\": 1}' WHERE game_id = 'g1' AND activity_date BETWEEN %s AND %s",
                 (AS_OF - timedelta(days=12), AS_OF - timedelta(days=3)))
    result = categorize(conn, AS_OF)
    assert result["window_cache"]["mode"] == "rebuilt"
    assert result["window_cache"]["reason"].endswith("players with written cached days")
    assert conn.execute("SELECT count(*) FROM segmentation.window_cache_state").fetchone()[0] == 1
    conn.execute("CREATE TEMP TABLE keep AS SELECT * FROM segmentation.player_activity")
    conn.execute("TRUNCATE segmentation.player_activity")
    assert conn.execute("SELECT (SELECT count(*) FROM segmentation.window_cache_state)"
                        " + (SELECT count(*) FROM segmentation.window_cache)").fetchone()[0] == 0
    conn.execute("INSERT INTO segmentation.player_activity SELECT * FROM keep")
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "no cache"


def test_a_writer_without_privileges_on_the_log_still_writes_activity(
        calibrated: psycopg.Connection) -> None:
    """The trigger logs on the writer's behalf (SECURITY DEFINER)."""
    conn = calibrated
    categorize(conn, AS_OF)
    role = f"ingest_{conn.info.backend_pid}"
    conn.execute(f"CREATE ROLE {role}")
    try:
        conn.execute(f"GRANT USAGE ON SCHEMA segmentation TO {role}")
        conn.execute(f"GRANT INSERT ON segmentation.player_activity TO {role}")
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'p0000001',"
                         " %s, '{\"sessions\": 9}') ", (AS_OF - timedelta(days=95),))
            conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'x', %s,"
                         " '{\"sessions\": 9}')", (AS_OF - timedelta(days=3),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute("SELECT 1 FROM segmentation.activity_changes")
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    assert sorted(conn.execute("SELECT activity_date, player_id FROM"
                               " segmentation.activity_changes").fetchall()) == [
        (AS_OF - timedelta(days=95), "p0000001"), (AS_OF - timedelta(days=3), "x")]
    # Day -95 is outside the cached window: only "x" is recomputed.
    assert categorize(conn, AS_OF)["window_cache"]["recomputed_players"] == 1
