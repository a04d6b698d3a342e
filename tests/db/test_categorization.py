"""Player categorization: fuzzy memberships, batch history, views, cache."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db


@pytest.fixture
def calibrated(conn: psycopg.Connection) -> psycopg.Connection:
    load_population(conn, "g1", players=2500, seed=5)
    calibrate(conn)
    return conn


def test_categorize_player_answers_with_memberships(calibrated: psycopg.Connection) -> None:
    row = calibrated.execute(
        "SELECT * FROM segmentation.categorize_player('g1', 'p0000007', %s)", (AS_OF,)).fetchone()
    cols = [d.name for d in calibrated.execute(
        "SELECT * FROM segmentation.categorize_player('g1', 'p0000007', %s)", (AS_OF,)
    ).description]
    assert cols == ["taxonomy_id", "taxonomy_version", "segment_id", "segment_name", "membership",
                    "memberships", "axis_scores", "anomaly_score", "is_anomaly", "explanation"]
    answer = dict(zip(cols, row, strict=True))
    assert abs(sum(answer["memberships"].values()) - 1) < 1e-9
    assert len(answer["memberships"]) == 7
    assert answer["memberships"][answer["segment_name"]] == pytest.approx(answer["membership"])
    assert answer["membership"] == max(answer["memberships"].values())
    assert answer["explanation"]["top_axes"]


def test_batch_agrees_with_calibration_and_single_calls(calibrated: psycopg.Connection) -> None:
    conn = calibrated
    result = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert result["players"] == 2500 and result["new"] == 2500
    sizes = dict(conn.execute("SELECT name, size FROM segmentation.segment_definitions s"
                              " JOIN segmentation.game_behavioral_taxonomy t USING (taxonomy_id)"
                              " WHERE t.is_active").fetchall())
    assert result["segments"] == sizes  # same math as calibration
    # Every stored value (staged through batch_rows' bit string) of every player against
    # the single-player path.
    rows = conn.execute(
        "SELECT m.player_id, m.segment_id, m.membership, m.anomaly_score, m.is_anomaly,"
        " (SELECT jsonb_object_agg(s.name, m.memberships[o.pos]) FROM"
        "  unnest(t.segment_order) WITH ORDINALITY o(segment_id, pos)"
        "  JOIN segmentation.segment_definitions s ON s.taxonomy_id = t.taxonomy_id"
        "  AND s.segment_id = o.segment_id),"
        " (SELECT jsonb_object_agg(a.name, m.axis_scores[a.axis_index])"
        "  FROM segmentation.behavioral_axes a WHERE a.taxonomy_id = t.taxonomy_id),"
        " c.segment_id, c.membership, c.anomaly_score, c.is_anomaly, c.memberships,"
        " c.axis_scores"
        " FROM segmentation.player_segment_memberships m"
        " JOIN segmentation.game_behavioral_taxonomy t USING (taxonomy_id)"
        " CROSS JOIN LATERAL segmentation.categorize_player('g1', m.player_id, %s) c"
        " WHERE m.valid_to IS NULL", (AS_OF,)).fetchall()
    assert len(rows) == 2500
    assert any(r[4] for r in rows) and not all(r[4] for r in rows)
    assert len({r[1] for r in rows}) == len(sizes)
    for (player, segment, membership, anomaly, flagged, degrees, axes,
         *single) in rows:
        assert (single[0], single[3]) == (segment, flagged), player
        assert single[1] == pytest.approx(membership, rel=1e-9, abs=1e-12)
        assert single[2] == pytest.approx(anomaly, rel=1e-9)
        assert degrees.keys() == single[4].keys()
        for name, degree in degrees.items():
            assert single[4][name] == pytest.approx(degree, rel=1e-9, abs=1e-12), name
        assert single[5] == pytest.approx(axes, rel=1e-9, abs=1e-12)
    sums = conn.execute("SELECT min(s), max(s) FROM (SELECT sum(degree) s FROM"
                        " segmentation.player_memberships_long GROUP BY player_id) x").fetchone()
    assert sums[0] == pytest.approx(1) and sums[1] == pytest.approx(1)
    summary = conn.execute("SELECT sum(players), sum(fuzzy_size) FROM segmentation.segment_summary"
                           " WHERE is_active").fetchone()
    assert summary[0] == 2500 and summary[1] == pytest.approx(2500)


def summary_rows(conn: psycopg.Connection) -> dict[tuple[int, int], tuple[Any, ...]]:
    return {(r[0], r[1]): r[2:] for r in conn.execute(
        "SELECT taxonomy_id, segment_id, players, fuzzy_size, anomalies, mean_membership,"
        " share, fuzzy_share, is_active FROM segmentation.segment_summary")}


def assert_summary_matches_views(conn: psycopg.Connection,
                                 summary: dict[tuple[int, int], tuple[Any, ...]],
                                 taxonomy_id: int, *, segments: int, active: bool,
                                 players: int = 2500) -> None:
    """segment_summary's rows of ``taxonomy_id`` against the same figures computed from
    player_memberships_long and player_current_segment (``players`` in its game)."""
    oracle = {(r[0], r[1]): r[2:] for r in conn.execute(
        "SELECT l.taxonomy_id, l.segment_id, count(*) FILTER (WHERE l.is_primary),"
        " sum(l.degree), count(*) FILTER (WHERE l.is_primary AND c.is_anomaly),"
        " avg(l.degree) FILTER (WHERE l.is_primary),"
        " count(*) FILTER (WHERE l.is_primary) / %s::numeric, sum(l.degree) / %s::numeric"
        " FROM segmentation.player_memberships_long l"
        " JOIN segmentation.player_current_segment c USING (game_id, player_id)"
        " WHERE l.taxonomy_id = %s GROUP BY l.taxonomy_id, l.segment_id",
        (players, players, taxonomy_id))}
    assert {k for k in summary if k[0] == taxonomy_id} == oracle.keys()
    assert len(oracle) == segments
    for key, (players, fuzzy, anomalies, mean, share, fuzzy_share) in oracle.items():
        got = summary[key]
        assert got[0] == players and got[2] == anomalies, key
        assert got[1] == pytest.approx(float(fuzzy), rel=1e-12, abs=1e-12), key
        if mean is None:
            assert got[3] is None, key
        else:
            assert got[3] == pytest.approx(float(mean), rel=1e-12), key
        assert got[4] == pytest.approx(float(share), rel=1e-12), key
        assert got[5] == pytest.approx(float(fuzzy_share), rel=1e-12, abs=1e-12), key
        assert got[6] is active, key


def test_segment_summary_matches_the_per_player_views(calibrated: psycopg.Connection) -> None:
    """Every figure of segment_summary, per taxonomy and segment, against the same figure
    computed from player_memberships_long and player_current_segment - with the players'
    current rows in a taxonomy that is no longer active, and a new active one that has
    categorized nobody yet (all zeros, no mean), shown as soon as it is activated."""
    conn = calibrated
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    old_id = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                          " WHERE is_active").fetchone()[0]
    # Activating a version refreshes the view: nobody is categorized with it yet.
    new_id = calibrate(conn)["taxonomy_id"]
    assert new_id != old_id
    summary = summary_rows(conn)
    assert {t for t, _ in summary} == {old_id, new_id}
    assert_summary_matches_views(conn, summary, old_id, segments=7, active=False)
    new_rows = [v for k, v in summary.items() if k[0] == new_id]
    assert new_rows and all(v == (0, 0, 0, None, 0, 0, True) for v in new_rows), new_rows
    # Fuzzy sizes differ from crisp counts: the degrees are not all 0 or 1.
    assert any(abs(v[1] - v[0]) > 1e-6 for k, v in summary.items() if k[0] == old_id)


def test_segment_summary_of_a_taxonomy_with_many_segments(
        calibrated: psycopg.Connection) -> None:
    """Degree sums past 16 positions (the totals sum as many as the game's widest
    taxonomy has)."""
    conn = calibrated
    taxonomy_id = calibrate(conn, n_segments=20)["taxonomy_id"]
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    summary = summary_rows(conn)
    assert_summary_matches_views(conn, summary, taxonomy_id, segments=20, active=True)
    positions = conn.execute("SELECT array_position(segment_order, s.segment_id)"
                             " FROM segmentation.game_behavioral_taxonomy t"
                             " JOIN segmentation.segment_summary s USING (taxonomy_id)"
                             " WHERE t.taxonomy_id = %s AND s.fuzzy_size > 0",
                             (taxonomy_id,)).fetchall()
    assert max(p for (p,) in positions) > 16


def test_segment_summary_of_one_game_is_written_by_its_own_runs(
        calibrated: psycopg.Connection) -> None:
    """A run writes its game's totals from its game's current rows only: the summary of
    another game stays what that game's last run made it (here, even though its
    memberships were changed by hand since), and is right again after its next run."""
    conn = calibrated
    load_population(conn, "g2", players=800, seed=6)
    g2_id = calibrate(conn, "g2")["taxonomy_id"]
    g1_id = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                         " WHERE game_id = 'g1' AND is_active").fetchone()[0]
    for game in ("g1", "g2"):
        conn.execute("SELECT segmentation.categorize_all(%s, %s)", (game, AS_OF))
    summary = summary_rows(conn)
    assert_summary_matches_views(conn, summary, g1_id, segments=7, active=True)
    assert_summary_matches_views(conn, summary, g2_id, segments=7, active=True, players=800)
    assert conn.execute("SELECT game_id, sum(players) FROM segmentation.segment_totals"
                        " GROUP BY game_id ORDER BY game_id").fetchall() == [("g1", 2500),
                                                                             ("g2", 800)]
    # By hand, every g2 player turns anomalous: g1's run neither reads nor counts that.
    conn.execute("UPDATE segmentation.player_segment_memberships SET is_anomaly = true"
                 " WHERE game_id = 'g2' AND valid_to IS NULL")
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    after = summary_rows(conn)
    assert {k: v for k, v in after.items() if k[0] == g2_id} == {
        k: v for k, v in summary.items() if k[0] == g2_id}
    assert_summary_matches_views(conn, after, g1_id, segments=7, active=True)
    assert sum(v[2] for k, v in after.items() if k[0] == g2_id) < 800
    # g2's own run recomputes its rows (and its totals from them).
    conn.execute("SELECT segmentation.categorize_all('g2', %s)", (AS_OF,))
    assert_summary_matches_views(conn, summary_rows(conn), g2_id, segments=7, active=True,
                                 players=800)


def test_history_and_transitions_after_changed_data(calibrated: psycopg.Connection) -> None:
    conn = calibrated
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    # Ten players of the largest segment (casual play) turn into heavy spenders.
    movers = [r[0] for r in conn.execute(
        "SELECT player_id FROM segmentation.player_current_segment WHERE segment_id ="
        " (SELECT segment_id FROM segmentation.segment_summary WHERE is_active"
        "  ORDER BY players DESC LIMIT 1) ORDER BY player_id LIMIT 10").fetchall()]
    conn.execute("UPDATE segmentation.player_activity SET metrics = metrics ||"
                 " '{\"spend_usd\": 5000, \"purchases\": 40, \"sessions\": 30,"
                 " \"minutes_played\": 900}'::jsonb WHERE game_id = 'g1'"
                 " AND player_id = ANY(%s)", (movers,))
    result = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert result["changed_segment"] >= 5
    assert result["new"] == 0
    moved = result["changed_segment"]
    history = conn.execute("SELECT count(*) FILTER (WHERE valid_to IS NOT NULL),"
                           " count(*) FILTER (WHERE valid_to IS NULL)"
                           " FROM segmentation.player_segment_memberships").fetchone()
    assert history == (moved, 2500)
    transitions = conn.execute("SELECT sum(players) FROM segmentation.segment_transitions"
                               " WHERE from_segment_id IS NOT NULL").fetchone()[0]
    assert transitions == moved
    # Moves are counted in the run that made them: the first run categorized everyone,
    # the second moved only the changed players. (Before migration 0003 the view derived
    # runs from the history's run_id, which the in-place refresh overwrites, so first
    # categorizations drifted to the latest run.)
    runs = conn.execute("SELECT run_id, sum(players) FILTER (WHERE from_segment_id IS NULL),"
                        " sum(players) FILTER (WHERE from_segment_id IS NOT NULL)"
                        " FROM segmentation.segment_transitions GROUP BY run_id ORDER BY run_id"
                        ).fetchall()
    assert [r[1:] for r in runs] == [(2500, None), (None, moved)]
    # And every move agrees with the history: each row's previous row of the same player.
    from_history = conn.execute("""
        SELECT game_id, from_taxonomy_id, from_segment_id, taxonomy_id, segment_id, count(*)
          FROM (SELECT m.*, lag(m.taxonomy_id) OVER w AS from_taxonomy_id,
                       lag(m.segment_id) OVER w AS from_segment_id
                  FROM segmentation.player_segment_memberships m
                WINDOW w AS (PARTITION BY m.game_id, m.player_id
                             ORDER BY m.valid_from, m.membership_id)) h
         GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5""").fetchall()
    view = conn.execute("""
        SELECT game_id, from_taxonomy_id, from_segment_id, to_taxonomy_id, to_segment_id,
               sum(players)
          FROM segmentation.segment_transitions GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        """).fetchall()
    assert view == from_history


def test_a_new_taxonomy_starts_new_history_rows(calibrated: psycopg.Connection) -> None:
    """Rows reference the version that produced them: after a recalibration every
    player's row is closed and a row of the new taxonomy opened, even where the
    segment id carries over."""
    conn = calibrated
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    old_id = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                          " WHERE game_id = 'g1' AND is_active").fetchone()[0]
    new_id = calibrate(conn)["taxonomy_id"]
    result = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert (result["taxonomy_id"], result["changed_segment"], result["new"]) == (new_id, 2500, 0)
    rows = conn.execute("SELECT taxonomy_id, valid_to IS NULL, count(*)"
                        " FROM segmentation.player_segment_memberships"
                        " GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert rows == [(old_id, False, 2500), (new_id, True, 2500)]
    moved = conn.execute("SELECT from_taxonomy_id, to_taxonomy_id, sum(players)"
                         " FROM segmentation.segment_transitions"
                         " WHERE from_taxonomy_id IS NOT NULL GROUP BY 1, 2").fetchall()
    assert moved == [(old_id, new_id, 2500)]
    # Carried-over segment ids (continuity) move too: same id, other taxonomy.
    same = conn.execute("SELECT coalesce(sum(players), 0) FROM segmentation.segment_transitions"
                        " WHERE from_taxonomy_id = %s AND from_segment_id = to_segment_id",
                        (old_id,)).fetchone()[0]
    assert same > 0


def test_features_form_and_bad_inputs(calibrated: psycopg.Connection) -> None:
    conn = calibrated
    answer = conn.execute(
        "SELECT segment_name, memberships FROM segmentation.categorize_player('g1', %s)",
        (Jsonb({"spend_usd": 900, "purchases": 30, "sessions": 40, "minutes_played": 2000,
                "active_days": 30}),)).fetchone()
    assert abs(sum(answer[1].values()) - 1) < 1e-9
    bad = [
        ({"sessions": "many"}, "SG006"),
        ({"no_such_metric": 1}, "SG006"),
        ([1, 2, 3], "SG006"),
        ({}, "SG006"),
    ]
    for features, sqlstate in bad:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT * FROM segmentation.categorize_player('g1', %s)",
                         (Jsonb(features),))
        assert err.value.sqlstate == sqlstate, features
        assert err.value.diag.message_hint
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM segmentation.categorize_player('g1', 'nobody', %s)",
                     (AS_OF,))
    assert err.value.sqlstate == "SG005"
    assert "jsonb" not in err.value.diag.message_hint
    # An untyped literal picks the (text, text) overload: the hint names the cast.
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM segmentation.categorize_player('g1', '{\"sessions\": 3}')")
    assert err.value.sqlstate == "SG005"
    assert "::jsonb" in err.value.diag.message_hint
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM segmentation.categorize_player('other', 'p0000001', %s)",
                     (AS_OF,))
    assert err.value.sqlstate == "SG004"


def test_calls_in_a_query_that_could_run_in_parallel(calibrated: psycopg.Connection) -> None:
    """A LATERAL call over a table, with settings that make any parallel-safe plan
    parallel: both forms answer (marked PARALLEL SAFE, they failed with "cannot start
    subtransactions during a parallel operation" and the backend crashed)."""
    conn = calibrated
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    conn.execute("CREATE TEMP TABLE ids AS SELECT player_id FROM"
                 " segmentation.player_current_segment WHERE game_id = 'g1'")
    conn.execute("ANALYZE ids")
    expected = conn.execute("SELECT count(*), sum(c.membership) FROM ids t, LATERAL"
                            " segmentation.categorize_player('g1', t.player_id, %s) c",
                            (AS_OF,)).fetchone()
    for setting in ("max_parallel_workers_per_gather = 2", "parallel_setup_cost = 0",
                    "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
                    "force_parallel_mode = on"):
        conn.execute(f"SET {setting}")
    try:
        assert conn.execute("SELECT count(*), sum(c.membership) FROM ids t, LATERAL"
                            " segmentation.categorize_player('g1', t.player_id, %s) c",
                            (AS_OF,)).fetchone() == expected
        assert conn.execute("SELECT count(*) FROM ids t, LATERAL segmentation.categorize_player("
                            "'g1', jsonb_build_object('sessions', length(t.player_id))) c"
                            ).fetchone()[0] == 2500
    finally:
        conn.execute("RESET ALL")
    assert expected[0] == 2500


def test_cache_follows_reactivation_in_one_session(calibrated: psycopg.Connection) -> None:
    conn = calibrated
    first = conn.execute("SELECT taxonomy_id FROM segmentation.categorize_player("
                         "'g1', 'p0000001', %s)", (AS_OF,)).fetchone()[0]
    second = calibrate(conn)["taxonomy_id"]
    again = conn.execute("SELECT taxonomy_id FROM segmentation.categorize_player("
                         "'g1', 'p0000001', %s)", (AS_OF,)).fetchone()[0]
    assert (first, again) == (first, second) and first != second
    conn.execute("SELECT segmentation.activate_taxonomy(%s)", (first,))
    back = conn.execute("SELECT taxonomy_id, taxonomy_version FROM"
                        " segmentation.categorize_player('g1', 'p0000001', %s)",
                        (AS_OF,)).fetchone()
    assert back == (first, 1)


def test_views_answer_for_a_reader_role(calibrated: psycopg.Connection, dsn: str) -> None:
    conn = calibrated
    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    conn.execute("DROP ROLE IF EXISTS seg_test_reader")
    conn.execute("CREATE ROLE seg_test_reader LOGIN IN ROLE segmentation_reader")
    try:
        with psycopg.connect(dsn, user="seg_test_reader", autocommit=True) as reader:
            n = reader.execute("SELECT count(*) FROM segmentation.player_current_segment"
                               ).fetchone()[0]
            assert n == 2500
            assert reader.execute("SELECT count(*) FROM segmentation.segment_summary"
                                  ).fetchone()[0] == 7
            for forbidden in ("SELECT count(*) FROM segmentation.player_activity",
                              "SELECT segmentation.categorize_all('g1')",
                              "SELECT * FROM segmentation.categorize_player('g1', 'p0000001')"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(forbidden)
    finally:
        conn.execute("DROP OWNED BY seg_test_reader")
        conn.execute("DROP ROLE seg_test_reader")
    assert json.dumps  # keep import used


def test_rerun_refreshes_current_rows_without_index_writes(
        calibrated: psycopg.Connection) -> None:
    """The in-place refresh of current rows is HOT (migration 0002: fill factor 50)."""
    conn = calibrated
    table = "'segmentation.player_segment_memberships'::regclass"

    def counters() -> tuple[int, int]:
        conn.execute("SELECT pg_stat_force_next_flush()")  # flushed at that statement's end
        return conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                            f" WHERE relid = {table}").fetchone()

    conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
    size = conn.execute(f"SELECT pg_relation_size({table})").fetchone()[0]
    for _ in range(2):
        upd0, hot0 = counters()
        result = conn.execute("SELECT segmentation.categorize_all('g1', %s)",
                              (AS_OF,)).fetchone()[0]
        upd1, hot1 = counters()
        assert result["unchanged"] == 2500 and upd1 - upd0 == 2500
        assert hot1 - hot0 >= 0.95 * 2500, (hot1 - hot0)
    # Old versions are pruned by the next run: the table does not grow.
    assert conn.execute(f"SELECT pg_relation_size({table})").fetchone()[0] == size


def test_small_chunks_score_every_player_once(calibrated: psycopg.Connection) -> None:
    """Chunks are block ranges of the staged table: together they hold each player once."""
    conn = calibrated
    whole = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    stored = dict(conn.execute("SELECT player_id, memberships FROM"
                               " segmentation.player_segment_memberships WHERE valid_to IS NULL"
                               ).fetchall())
    anomalies = conn.execute("SELECT player_id, anomaly_score FROM"
                             " segmentation.detect_anomalies('g1', %s)", (AS_OF,)).fetchall()
    # The backend's module is shared by all its PL/Python code, so a DO block can shrink
    # the chunk size of the functions called next in this session.
    conn.execute("DO $$\nimport segmentation.sql_api\nsegmentation.sql_api.BATCH_CHUNK = 97\n$$"
                 " LANGUAGE plpython3u")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    again = conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,)).fetchone()[0]
    assert sum("categorized" in m for m in notices) > 20  # many chunks
    assert again["players"] == whole["players"] == 2500
    assert again["unchanged"] == 2500 and again["segments"] == whole["segments"]
    assert again["drift"] == whole["drift"]
    rows = conn.execute("SELECT player_id, memberships FROM"
                        " segmentation.player_segment_memberships WHERE valid_to IS NULL"
                        " AND run_id = %s", (again["run_id"],)).fetchall()
    assert dict(rows) == stored and len(rows) == 2500
    assert conn.execute("SELECT player_id, anomaly_score FROM segmentation.detect_anomalies("
                        "'g1', %s)", (AS_OF,)).fetchall() == anomalies
