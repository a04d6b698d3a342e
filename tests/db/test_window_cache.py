"""categorize_all's window cache: incremental runs give what a whole-window run gives.

The oracle is categorize_player(game, player, as_of), which aggregates one player's
window from the activity rows: after every cached run, each stored current row must be
its answer (segment, primary degree, anomaly score), for exactly the players active in
the window.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db

LOOKBACK = 30


@pytest.fixture
def calibrated(conn: psycopg.Connection) -> psycopg.Connection:
    load_population(conn, "g1", players=1500, seed=11)
    # A 30-day window inside 90 days of activity: every window has days just outside it,
    # and each later run has days leaving it.
    calibrate(conn, lookback_days=LOOKBACK)
    return conn


def categorize(conn: psycopg.Connection, as_of: date) -> dict[str, Any]:
    result = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (as_of,)).fetchone()[0]
    assert_matches_single_calls(conn, as_of, result["players"])
    return result


ANSWERS = ("SELECT p.player_id, c.segment_id, c.membership, c.anomaly_score"
           " FROM unnest(%s::text[]) p(player_id)"
           " CROSS JOIN LATERAL segmentation.categorize_player('g1', p.player_id, %s) c")


def single_calls(conn: psycopg.Connection, players: list[str], as_of: date, *,
                 exact: bool) -> dict[str, tuple[Any, ...]]:
    """categorize_player's answers by player. ``exact``: with the game's window cache out
    of its reach (its state deleted in a transaction rolled back afterwards), so that each
    answer is aggregated from the player's activity rows."""
    with conn.transaction(force_rollback=True):
        if exact:
            conn.execute("DELETE FROM segmentation.window_cache_state WHERE game_id = 'g1'")
        return {r[0]: r[1:] for r in conn.execute(ANSWERS, (players, as_of))}


def assert_matches_single_calls(conn: psycopg.Connection, as_of: date, players: int) -> None:
    """The run's stored rows, and categorize_player through the cache, against
    categorize_player's exact answers, for exactly the players active in the window."""
    window = [r[0] for r in conn.execute(
        "SELECT DISTINCT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
        " AND activity_date > %s::date - %s AND activity_date <= %s",
        (as_of, LOOKBACK, as_of))]
    assert players == len(window)
    exact = single_calls(conn, window, as_of, exact=True)
    cached = single_calls(conn, window, as_of, exact=False)
    stored = {r[0]: r[1:] for r in conn.execute(
        "SELECT player_id, segment_id, membership, anomaly_score, as_of"
        " FROM segmentation.player_segment_memberships"
        " WHERE game_id = 'g1' AND valid_to IS NULL AND player_id = ANY(%s)", (window,))}
    assert exact.keys() == cached.keys() == stored.keys() == set(window)
    for player, (segment, degree, anomaly) in exact.items():
        assert stored[player][3] == as_of, player
        for got in (stored[player][:3], cached[player]):
            assert got[0] == segment, player
            assert got[1] == pytest.approx(degree, rel=1e-9, abs=1e-9), player
            assert got[2] == pytest.approx(anomaly, rel=1e-9, abs=1e-9), player


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
    # The first run's as_of day, not written since, comes from the cache.
    assert later["window_cache"] == {
        "mode": "incremental", "recomputed_players": 4,
        "reason": f"5 day(s) advanced, {AS_OF - timedelta(days=5)} from the cache"}
    health = conn.execute("SELECT segmentation.health()").fetchone()[0]
    assert health["components"]["taxonomies"]["active"][0]["window_cache"] == \
        later["window_cache"]
    # detect_anomalies reads the window through the cache as well: the players the run
    # stored with an anomaly score of at least 1, with the same scores.
    found = dict(conn.execute("SELECT player_id, anomaly_score FROM"
                              " segmentation.detect_anomalies('g1', %s)", (AS_OF,)).fetchall())
    stored = dict(conn.execute(
        "SELECT player_id, anomaly_score FROM segmentation.player_segment_memberships"
        " WHERE game_id = 'g1' AND valid_to IS NULL AND anomaly_score >= 1").fetchall())
    assert found and found.keys() == stored.keys()
    assert all(found[p] == pytest.approx(stored[p], rel=1e-9) for p in found)
    assert conn.execute("SELECT segmentation.taxonomy_drift('g1', %s)", (AS_OF,)
                        ).fetchone()[0]["verdict"]
    # The same as_of again, under another DateStyle: nothing changed, nothing recomputed.
    conn.execute("SET DateStyle = 'SQL, DMY'")
    again = categorize(conn, AS_OF)
    assert again["window_cache"]["reason"] == f"0 day(s) advanced, {AS_OF} from the cache"
    # A write to a day the last run subtracted, as if it had committed during that run.
    conn.execute("RESET DateStyle")
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'gone', %s,"
                 " '{\"sessions\": 9}')", (AS_OF - timedelta(days=LOOKBACK + 2),))
    assert categorize(conn, AS_OF)["window_cache"]["recomputed_players"] == 1
    conn.execute("DELETE FROM segmentation.window_cache_state")
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "no cache"
    # A look back in time reads the whole window and leaves the cache to the next run.
    past = categorize(conn, AS_OF - timedelta(days=10))
    assert past["window_cache"] == {"mode": "whole window", "recomputed_players": 0,
                                    "reason": "as_of is before the cached days"}
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == \
        f"0 day(s) advanced, {AS_OF} from the cache"
    # An as_of the cache cannot shift by a window answers as before (an empty window).
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT segmentation.categorize_all('g1', 'infinity')")
    assert err.value.sqlstate == "SG002"


def test_the_last_runs_as_of_day_is_read_again_once_written(
        calibrated: psycopg.Connection) -> None:
    """The cache keeps the totals of the last run's as_of day; a write to that day since
    makes the next run read it from the rows again."""
    conn = calibrated
    day = AS_OF - timedelta(days=1)
    categorize(conn, day)
    # A changed metric, a new player with that day only, and a player gone from it.
    conn.execute("UPDATE segmentation.player_activity SET metrics = '{\"sessions\": 70}'"
                 " WHERE game_id = 'g1' AND activity_date = %s AND player_id ="
                 " (SELECT min(player_id) FROM segmentation.player_activity"
                 "  WHERE game_id = 'g1' AND activity_date = %s)", (day, day))
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'newcomer', %s,"
                 " '{\"sessions\": 3}')", (day,))
    conn.execute("DELETE FROM segmentation.player_activity WHERE game_id = 'g1'"
                 " AND activity_date = %s AND player_id = (SELECT max(player_id)"
                 " FROM segmentation.player_activity WHERE game_id = 'g1'"
                 " AND activity_date = %s)", (day, day))
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "1 day(s) advanced"
    # Not written since: the same as_of again and the next day take it from the cache,
    # the player active on that day only included.
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'one_day', %s,"
                 " '{\"sessions\": 5, \"minutes_played\": 30}')", (AS_OF,))
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "0 day(s) advanced"
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == \
        f"0 day(s) advanced, {AS_OF} from the cache"
    nxt = AS_OF + timedelta(days=1)
    assert categorize(conn, nxt)["window_cache"]["reason"] == \
        f"1 day(s) advanced, {AS_OF} from the cache"
    assert conn.execute("SELECT membership IS NOT NULL FROM segmentation.player_current_segment"
                        " WHERE game_id = 'g1' AND player_id = 'one_day'").fetchone() == (True,)
    later = nxt + timedelta(days=2)
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'later', %s,"
                 " '{\"sessions\": 2}'), ('g1', 'p0000007', %s, '{\"sessions\": 6}')"
                 " ON CONFLICT DO NOTHING", (later, later))
    assert categorize(conn, later)["window_cache"]["reason"] == \
        f"2 day(s) advanced, {nxt} from the cache"
    # A cache written by a version without the day's totals (say, by a run of the old
    # version still going during an upgrade) is not read for them.
    conn.execute("UPDATE segmentation.window_cache SET as_of_totals = NULL")
    conn.execute("UPDATE segmentation.window_cache_state SET holds_as_of_day = false")
    assert categorize(conn, later + timedelta(days=1))["window_cache"]["reason"] == \
        "1 day(s) advanced"


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


def test_a_write_to_the_kept_as_of_day_that_races_a_run_makes_the_next_run_rebuild(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """The same race on the last run's as_of day, which the next run takes from the cache:
    that run cannot see the uncommitted write, and the note it leaves names no player."""
    conn = calibrated
    day = AS_OF - timedelta(days=1)
    categorize(conn, day)
    with psycopg.connect(dsn) as writer:
        writer.execute(
            "UPDATE segmentation.player_activity SET metrics = '{\"sessions\": 90}'"
            " WHERE game_id = 'g1' AND activity_date = %s AND player_id IN"
            " (SELECT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
            "  AND activity_date = %s ORDER BY player_id LIMIT 5)", (day, day))
        with psycopg.connect(dsn, autocommit=True) as batch:
            assert categorize(batch, AS_OF)["window_cache"]["reason"] == \
                f"1 day(s) advanced, {day} from the cache"
        writer.commit()
    assert categorize(conn, AS_OF)["window_cache"] == {
        "mode": "rebuilt", "reason": "cached days were written while a run was building"
        " the cache", "recomputed_players": 0}


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


def _cached_games(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Per game: its partition of window_cache, rows, a digest of them, and its state."""
    return conn.execute(
        "SELECT c.game_id, c.tableoid::regclass::text, count(*),"
        " md5(string_agg(c::text, '|' ORDER BY c.player_id)),"
        " (SELECT row(s.cached_through, s.players)::text FROM segmentation.window_cache_state s"
        "   WHERE s.game_id = c.game_id)"
        " FROM segmentation.window_cache c GROUP BY 1, 2 ORDER BY 1").fetchall()


def test_each_game_has_its_own_partition_and_runs_do_not_wait_for_each_other(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """A run empties its game's partition (TRUNCATE) and keeps it locked until it ends:
    another game's run, incremental (it reads its own partition), does not wait for it;
    and a run rolled back leaves its game's cache as it was."""
    conn = calibrated
    load_population(conn, "g2", players=600, seed=12)
    calibrate(conn, "g2", lookback_days=LOOKBACK)
    day = AS_OF - timedelta(days=1)
    n1 = categorize(conn, day)["players"]
    n2 = conn.execute("SELECT segmentation.categorize_all('g2', %s)",
                      (day,)).fetchone()[0]["players"]
    before = _cached_games(conn)
    # One row per player active in the window (or on its as_of day), in the game's own
    # partition.
    assert [(g, part, n) for g, part, n, _, _ in before] == [
        ("g1", "segmentation.window_cache_" + hashlib.md5(b"g1").hexdigest(), n1),
        ("g2", "segmentation.window_cache_" + hashlib.md5(b"g2").hexdigest(), n2)]
    with psycopg.connect(dsn) as held:
        # detect_anomalies brings g1's cache to AS_OF like a categorize_all, but leaves
        # the materialized views alone (a categorize_all refreshes them, and another
        # game's refresh waits for that until it commits).
        held.execute("SELECT count(*) FROM segmentation.detect_anomalies('g1', %s)", (AS_OF,))
        assert held.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
                            " AND relation = %s::regclass AND mode = 'AccessExclusiveLock'",
                            (before[0][1],)).fetchone()[0] == 1
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '20s'")
            # Generic plans lock every partition of a table read through its parent: the
            # run must not read other games' partitions in any plan.
            other.execute("SET plan_cache_mode = force_generic_plan")
            result = other.execute("SELECT segmentation.categorize_all('g2', %s)",
                                   (AS_OF,)).fetchone()[0]
        assert result["window_cache"]["mode"] == "incremental"
        held.rollback()
    after = _cached_games(conn)
    assert after[0] == before[0]
    assert after[1][:2] == before[1][:2] and after[1][3:] != before[1][3:]
    assert categorize(conn, AS_OF)["window_cache"]["mode"] == "incremental"
    # A partition dropped by hand leaves a state without a cache: the next run rebuilds.
    conn.execute(f"DROP TABLE {before[1][1]}")
    assert conn.execute("SELECT segmentation.categorize_all('g2', %s)", (AS_OF,)
                        ).fetchone()[0]["window_cache"]["reason"] == "no cache"


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
        (AS_OF - timedelta(days=95), None), (AS_OF - timedelta(days=3), "x")]
    # Day -95 is far before the cached days (only the day is noted): only "x" is
    # recomputed.
    assert categorize(conn, AS_OF)["window_cache"]["recomputed_players"] == 1


def _logged(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM segmentation.activity_changes"
                        " WHERE game_id = 'g1'").fetchone()[0]


def test_a_game_without_a_cache_keeps_no_log(calibrated: psycopg.Connection) -> None:
    """Writes to a game that has no cache (never batch-categorized) are not noted, so its
    log does not grow; a REPEATABLE READ writer, which cannot tell, still notes them."""
    conn = calibrated
    insert = ("INSERT INTO segmentation.player_activity VALUES ('g1', %s, %s,"
              " '{\"sessions\": 2}')")
    assert _logged(conn) == 0  # the population was loaded row set by row set
    for i in range(3):
        conn.execute(insert, (f"late{i}", AS_OF - timedelta(days=i)))
    assert _logged(conn) == 0
    # A statement whose first row is another game's: g1's notes are written, then deleted.
    conn.execute("INSERT INTO segmentation.player_activity VALUES"
                 " ('g_other', 'x', %s, '{}'), ('g1', 'late5', %s, '{}')", (AS_OF, AS_OF))
    assert conn.execute("SELECT count(*) FROM segmentation.activity_changes").fetchone()[0] == 0
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(insert, ("late9", AS_OF))
    assert _logged(conn) == 1
    # A REPEATABLE READ run of a game without a cache answers from its snapshot and
    # builds no cache (a writer it waited for may be newer than its snapshot).
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        result = conn.execute("SELECT segmentation.categorize_all('g1', %s)",
                              (AS_OF,)).fetchone()[0]
    assert result["window_cache"]["mode"] == "whole window"
    assert_matches_single_calls(conn, AS_OF, result["players"])
    assert conn.execute("SELECT count(*) FROM segmentation.window_cache_state").fetchone()[0] == 0
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "no cache"
    # With a cache, writes are noted again.
    conn.execute(insert, ("late10", AS_OF - timedelta(days=1)))
    assert _logged(conn) == 1


def test_a_first_run_waits_for_writers_that_noted_nothing(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """A writer of a game without a cache holds its cache lock until it commits; the run
    that builds the cache waits for it and then sees its rows."""
    conn = calibrated
    result: dict[str, Any] = {}

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as batch:
            result.update(batch.execute("SELECT segmentation.categorize_all('g1', %s)",
                                        (AS_OF,)).fetchone()[0])

    with psycopg.connect(dsn) as writer:
        writer.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'newcomer',"
                       " %s, '{\"sessions\": 4}')", (AS_OF - timedelta(days=1),))
        batch = threading.Thread(target=run)
        batch.start()
        waiting = 0
        for _ in range(200):
            waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                   " AND NOT granted").fetchone()[0]
            if waiting:
                break
            time.sleep(0.05)
        assert waiting == 1
        writer.commit()
    batch.join(120)
    assert result["window_cache"]["reason"] == "no cache"
    # newcomer is in the window the oracle lists, so the run must have staged it.
    assert_matches_single_calls(conn, AS_OF, result["players"])
    assert _logged(conn) == 0
    assert categorize(conn, AS_OF)["window_cache"]["mode"] == "incremental"


def test_a_repeatable_read_run_does_not_trust_a_state_changed_since_its_snapshot(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """The state is deleted after the run's snapshot, then a write to a cached day goes
    unnoted (no cache any more): the run must not advance the cache it still sees."""
    conn = calibrated
    categorize(conn, AS_OF - timedelta(days=1))
    with psycopg.connect(dsn) as run:
        run.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert run.execute("SELECT count(*) FROM segmentation.window_cache_state"
                           ).fetchone()[0] == 1
        conn.execute("DELETE FROM segmentation.window_cache_state WHERE game_id = 'g1'")
        conn.execute("INSERT INTO segmentation.player_activity VALUES ('g1', 'late', %s,"
                     " '{\"sessions\": 3}')", (AS_OF - timedelta(days=3),))
        assert _logged(conn) == 0
        with pytest.raises(psycopg.errors.SerializationFailure):
            run.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    assert categorize(conn, AS_OF)["window_cache"]["reason"] == "no cache"


def _partition_fetches(conn: psycopg.Connection) -> int:
    """Rows fetched by index from g1's partition of window_cache, counted in this backend
    since its statistics were last reported (take differences within one transaction:
    counts of earlier transactions may not be reported yet)."""
    part = "segmentation.window_cache_" + hashlib.md5(b"g1").hexdigest()
    return conn.execute("SELECT coalesce(sum(idx_tup_fetch), 0) FROM pg_stat_xact_user_tables"
                        " WHERE relid = %s::regclass", (part,)).fetchone()[0]


def test_categorize_player_reads_a_players_window_through_the_cache(
        calibrated: psycopg.Connection, dsn: str) -> None:
    """After a run, categorize_player(player_id) reads the player's cache row and only the
    activity of the days that entered or left the window since, at the run's as_of and
    days later, and answers exactly as from the whole window; it reads the whole window
    for a player whose cached days were written since, and while a run rewrites the
    cache (without waiting for it)."""
    conn = calibrated
    categorize(conn, AS_OF)  # also: stored rows and cached answers against exact ones
    cached_players = [r[0] for r in conn.execute(
        "SELECT player_id FROM segmentation.window_cache WHERE game_id = 'g1'"
        " AND bit_count(days) > 0 ORDER BY player_id")]
    assert len(cached_players) > 1000
    with conn.transaction(force_rollback=True):
        start = _partition_fetches(conn)
        conn.execute(ANSWERS, (cached_players, AS_OF)).fetchall()
        assert _partition_fetches(conn) - start == len(cached_players)
    # Two and four days later, with new activity for some players: the days that entered
    # are read from the rows, those that left are subtracted.
    conn.execute("INSERT INTO segmentation.player_activity SELECT 'g1', player_id, %s::date"
                 " + d, jsonb_build_object('sessions', 3 + d, 'minutes_played', 40 * d)"
                 " FROM unnest(%s::text[]) p(player_id), generate_series(1, 2) d",
                 (AS_OF, cached_players[::7]))
    sample = [*cached_players[::5], "nobody"]
    for later in (AS_OF + timedelta(days=2), AS_OF + timedelta(days=4)):
        window = [r[0] for r in conn.execute(
            "SELECT DISTINCT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
            " AND activity_date > %s::date - %s AND activity_date <= %s"
            " AND player_id = ANY(%s)", (later, LOOKBACK, later, sample))]
        assert 0 < len(window) < len(sample)
        exact = single_calls(conn, window, later, exact=True)
        with conn.transaction(force_rollback=True):
            start = _partition_fetches(conn)
            cached = {r[0]: r[1:] for r in conn.execute(ANSWERS, (window, later))}
            assert _partition_fetches(conn) - start > 0.8 * len(window)
        assert cached.keys() == exact.keys()
        for player, (segment, degree, anomaly) in exact.items():
            assert cached[player][0] == segment, player
            assert cached[player][1] == pytest.approx(degree, rel=1e-9, abs=1e-9), player
            assert cached[player][2] == pytest.approx(anomaly, rel=1e-9, abs=1e-9), player
    # A write to a cached day of one player: that player's answer follows it at once.
    player = cached_players[3]
    before = single_calls(conn, [player], AS_OF, exact=False)[player]
    conn.execute("UPDATE segmentation.player_activity SET metrics = '{\"sessions\": 900,"
                 " \"minutes_played\": 90000}' WHERE game_id = 'g1' AND player_id = %s"
                 " AND activity_date = (SELECT max(activity_date) FROM"
                 " segmentation.player_activity WHERE game_id = 'g1' AND player_id = %s"
                 " AND activity_date < %s)", (player, player, AS_OF))
    after = single_calls(conn, [player], AS_OF, exact=False)[player]
    assert after == single_calls(conn, [player], AS_OF, exact=True)[player]
    assert after != before
    # While a run holds the game's cache lock (here another session holds it, as a run
    # does from its start to its end), calls read the rows instead of waiting.
    with psycopg.connect(dsn, autocommit=True) as run:
        run.execute("SELECT pg_advisory_lock(7301004, hashtext('g1'))")
        conn.execute("SET statement_timeout = '5s'")
        try:
            with conn.transaction(force_rollback=True):
                start = _partition_fetches(conn)
                got = {r[0]: r[1:] for r in conn.execute(ANSWERS, (sample[:20], AS_OF))}
                assert _partition_fetches(conn) == start
        finally:
            conn.execute("RESET statement_timeout")
    assert got == single_calls(conn, sample[:20], AS_OF, exact=True)
