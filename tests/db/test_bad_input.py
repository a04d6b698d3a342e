"""Bad-input matrix: every case has one documented outcome, and nothing is ever lost.

Each case is a call with bad input and its expected outcome (docs/bad-input.md): a clean
error with a stable SQLSTATE (SG codes carry a hint), or a documented repair (the call
succeeds and a check shows what was repaired). For every case a snapshot of the active
taxonomy of each game, the taxonomy rows and every player_segment_memberships row is
taken before and compared after: rows lost must be 0.

One database per module (cloned from the loader's template) with game g1 calibrated and
categorized; cases that need their own data use their own game ids. The summary line
(cases tried, failures, rows lost) is printed by the last test of the module.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.db.helpers import AS_OF, calibrate, cloned_database, load_population

pytestmark = pytest.mark.db

Check = Callable[[psycopg.Connection, dict[str, Any], Any], None]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
SUMMARY = {"tried": 0, "failures": 0, "rows_lost": 0}


@dataclass(frozen=True)
class Case:
    id: str
    sql: str  # the call under test; %(name)s parameters from params (+ as_of)
    expect: str  # a SQLSTATE, "ok" (a documented repair), or alternatives "SG002|ok"
    params: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()  # run first in the same session (SET lives on)
    check: Check | None = None  # what the repair did, or more about the error
    fresh_session: bool = False  # for what a backend caches (the taxonomy, its settings)


# ------------------------------------------------------------------------- helpers

DOC = ("(SELECT segmentation.export_taxonomy(taxonomy_id) FROM"
       " segmentation.game_behavioral_taxonomy WHERE game_id = 'g1' AND is_active)")
COPY_G1 = ("INSERT INTO segmentation.player_activity SELECT %(game)s, player_id, activity_date,"
           " metrics FROM segmentation.player_activity WHERE game_id = 'g1'")
POISON = ("UPDATE segmentation.player_activity SET metrics = metrics || %(bad)s::jsonb"
          " WHERE game_id = %(game)s AND player_id < 'p0000060'")
CALIBRATE = "SELECT segmentation.calibrate_taxonomy(%(game)s, as_of => %(as_of)s)"


def _scores_cleanly(conn: psycopg.Connection, game: str, player: str = "p0000001") -> None:
    membership, memberships, anomaly = conn.execute(
        "SELECT membership, memberships, anomaly_score FROM"
        " segmentation.categorize_player(%s, %s, %s)", (game, player, AS_OF)).fetchone()
    assert math.isfinite(membership) and math.isfinite(anomaly)
    assert abs(sum(memberships.values()) - 1) < 1e-9


def _ignored(metric: str, *, counted: bool) -> Check:
    """Repair of bad daily values: calibrated, counted as ignored (or not), scores."""

    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        summary = outcome[0][0]
        ignored = summary["features"]["invalid_metric_values_ignored"]
        assert (ignored.get(metric, 0) > 0) is counted, ignored
        assert f"{metric}_total" in summary["features"]["used"]
        _scores_cleanly(conn, params["game"])  # p0000001 has the bad values

    return check


def _metric_case(case_id: str, bad: str, metric: str, *, counted: bool) -> Case:
    game = f"g_{case_id}"
    return Case(case_id, CALIBRATE, "ok", {"game": game, "bad": bad},
                setup=(COPY_G1, POISON), check=_ignored(metric, counted=counted))


def _features(case_id: str, features: str, expect: str, check: Check | None = None) -> Case:
    return Case(case_id, f"SELECT * FROM segmentation.categorize_player('g1', '{features}'::jsonb)",
                expect, check=check)


def _answer(min_imputed: int = 0, anomaly: bool | None = None) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        row = outcome[0]
        memberships, anomaly_score, is_anomaly, explanation = row[5], row[7], row[8], row[9]
        assert abs(sum(memberships.values()) - 1) < 1e-9 and math.isfinite(anomaly_score)
        assert explanation["imputed_features"] >= min_imputed
        if anomaly is not None:
            assert is_anomaly is anomaly

    return check


def _rows(n: int) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        assert len(outcome) == n

    return check


def _value(expected: Any) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        assert outcome[0][0] == expected

    return check


def _same_as(statement: str) -> Check:
    """The repair is the documented default: the same answer as passing it explicitly."""

    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        assert outcome == conn.execute(statement, params).fetchall()

    return check


def _summary(**expected: Any) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        result = outcome[0][0]
        for key, value in expected.items():
            assert result[key] == value, (key, result[key])

    return check


def _as_of_is_today(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
    today = conn.execute("SELECT current_date::text").fetchone()[0]
    if isinstance(outcome, psycopg.Error):  # no activity up to today: the data is older
        assert today in (outcome.diag.message_primary or "")
    else:
        assert outcome[0][0]["as_of"] == today


def _constant_feature_dropped(feature: str, player: str) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        assert feature in outcome[0][0]["features"]["dropped"]
        _scores_cleanly(conn, params["game"], player)

    return check


def _health_lists(setting: str) -> Check:
    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        database = outcome[0][0]["components"]["database"]
        assert setting in database["invalid_settings"]

    return check


def _then_sqlstate(statement: str, sqlstate: str) -> Check:
    """The same input reaching another function fails the same way."""

    def check(conn: psycopg.Connection, params: dict[str, Any], outcome: Any) -> None:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(statement, params)
        assert err.value.sqlstate == sqlstate and err.value.diag.message_hint

    return check


# ------------------------------------------------------------------------- the cases

SETTINGS_OUT_OF_RANGE = {
    "min_player_population": "1", "variance_explained_threshold": "1.5",
    "default_lookback_days": "0", "ai_optimized_segment_count": "31",
    "max_concurrent_categorizations": "0", "cache_ttl_seconds": "-1",
    "calibration_sample_size": "10", "anomaly_contamination": "0.5", "random_seed": "-1",
    "drift_psi_watch": "-0.1", "drift_psi_recalibrate": "11", "drift_share_watch": "2",
    "drift_share_recalibrate": "-0.5",
}
SRC = "CREATE TABLE public.{t} (player_id text, f1 float8{more})"


def _cases() -> list[Case]:
    c: list[Case] = []
    # Daily metrics in player_activity (repairs per docs/data-rules.md).
    c += [
        _metric_case("metric-json-null", '{"sessions": null}', "sessions", counted=False),
        _metric_case("metric-nan-string", '{"sessions": "NaN"}', "sessions", counted=True),
        _metric_case("metric-infinity-string", '{"spend_usd": "Infinity"}', "spend_usd",
                     counted=True),
        _metric_case("metric-1e400-number", '{"purchases": 1e400}', "purchases", counted=True),
        _metric_case("metric-negative", '{"minutes_played": -50}', "minutes_played",
                     counted=True),
        _metric_case("metric-absurd-finite", '{"spend_usd": 1e22}', "spend_usd",
                     counted=False),
        _metric_case("metric-wrong-json-types",
                     '{"sessions": [1], "pvp_matches": {"a": 1}, "chat_messages": true}',
                     "sessions", counted=True),
        Case("metrics-sql-null", "INSERT INTO segmentation.player_activity"
             " VALUES ('g1', 'p_new', %(as_of)s, NULL)", "23502"),
        Case("metrics-not-an-object", "INSERT INTO segmentation.player_activity"
             " VALUES ('g1', 'p_new', %(as_of)s, '[1, 2]')", "23514"),
    ]
    # Ad-hoc feature vectors: categorize_player(game, features jsonb).
    c += [
        _features("features-nan-string", '{"sessions": "NaN"}', "SG006"),
        _features("features-infinity-string", '{"sessions": "Infinity"}', "SG006"),
        _features("features-1e400-number", '{"sessions": 1e400}', "SG006"),
        _features("features-negative", '{"sessions": -5, "active_days": 3}', "ok", _answer()),
        _features("features-huge-finite", '{"spend_usd": 1e300, "active_days": 3}', "ok",
                  _answer(anomaly=True)),
        _features("features-boolean", '{"sessions": true}', "SG006"),
        _features("features-numeric-string", '{"sessions": "5"}', "SG006"),
        _features("features-missing-keys", '{"active_days": 3}', "ok", _answer(min_imputed=10)),
        _features("features-all-null", '{"sessions": null}', "ok", _answer(min_imputed=15)),
        _features("features-extra-key", '{"sessions": 3, "no_such_metric": 1}', "SG006"),
        _features("features-array", "[1, 2, 3]", "SG006"),
        _features("features-string", '"sessions"', "SG006"),
        _features("features-number", "5", "SG006"),
        _features("features-json-null", "null", "SG006"),
        _features("features-nested-object", '{"sessions": {"value": 3}}', "SG006"),
        _features("features-empty-object", "{}", "SG006"),
    ]
    # Unknown, empty, too small, degenerate.
    c += [
        Case("unknown-game-calibrate", CALIBRATE, "SG001", {"game": "no_such_game"}),
        Case("unknown-game-categorize", "SELECT * FROM segmentation.categorize_player("
             "'no_such_game', 'p0000001', %(as_of)s)", "SG004"),
        Case("unknown-game-categorize-all",
             "SELECT segmentation.categorize_all('no_such_game', %(as_of)s)", "SG004"),
        Case("unknown-player", "SELECT * FROM segmentation.categorize_player("
             "'g1', 'no_such_player', %(as_of)s)", "SG005"),
        Case("empty-window-calibrate", CALIBRATE, "SG002",
             {"game": "g1", "as_of": "2000-01-01"}),
        Case("empty-window-categorize-all",
             "SELECT segmentation.categorize_all('g1', '2000-01-01')", "SG002"),
        Case("empty-window-drift", "SELECT segmentation.taxonomy_drift('g1', '2000-01-01')",
             "SG002"),
        Case("population-below-minimum", CALIBRATE, "SG003", {"game": "g_small"},
             setup=(COPY_G1 + " AND player_id < 'p0000100'",)),
        Case("single-player", CALIBRATE, "SG003", {"game": "g_single"},
             setup=("INSERT INTO segmentation.player_activity VALUES"
                    " (%(game)s, 'p1', %(as_of)s, '{\"sessions\": 3, \"spend_usd\": 1}')",)),
        Case("single-player-minimum-2", CALIBRATE, "SG003", {"game": "g_single2"},
             setup=("SET segmentation.min_player_population = 2",
                    "INSERT INTO segmentation.player_activity VALUES"
                    " (%(game)s, 'p1', %(as_of)s, '{\"sessions\": 3, \"spend_usd\": 1}')")),
        Case("all-identical-players", CALIBRATE, "SG007", {"game": "g_same"},
             setup=("INSERT INTO segmentation.player_activity SELECT %(game)s, 'p' || i,"
                    " %(as_of)s::date - d, '{\"sessions\": 3, \"spend_usd\": 1}'"
                    " FROM generate_series(1, 600) i, generate_series(0, 4) d",)),
        Case("activity-single-constant-metric", CALIBRATE, "ok", {"game": "g_const"},
             setup=("INSERT INTO segmentation.player_activity SELECT %(game)s, 'p' || i,"
                    " %(as_of)s::date - d, '{\"sessions\": 1}'"
                    " FROM generate_series(1, 600) i, generate_series(0, i %% 20) d",),
             check=_constant_feature_dropped("sessions_per_day", "p7")),
        Case("source-one-numeric-column",
             "SELECT segmentation.register_feature_source('g_src1', 'public.src_one')", "SG007",
             setup=(SRC.format(t="src_one", more=""),
                    "INSERT INTO public.src_one SELECT 'p' || i, i"
                    " FROM generate_series(1, 600) i")),
        Case("source-second-column-constant", CALIBRATE, "ok", {"game": "g_srcconst"},
             setup=(SRC.format(t="src_const", more=", f2 float8"),
                    "INSERT INTO public.src_const SELECT 'p' || i, i % 7, 5"
                    " FROM generate_series(1, 600) i",
                    "SELECT segmentation.register_feature_source(%(game)s, 'public.src_const')"),
             check=_constant_feature_dropped("f2", "p3")),
        Case("source-duplicate-players", CALIBRATE, "SG006", {"game": "g_srcdup"},
             setup=(SRC.format(t="src_dup", more=", f2 float8"),
                    "INSERT INTO public.src_dup SELECT 'p' || (i % 300), i, random()"
                    " FROM generate_series(1, 600) i",
                    "SELECT segmentation.register_feature_source(%(game)s, 'public.src_dup')")),
        Case("source-empty", CALIBRATE, "SG002", {"game": "g_srcempty"},
             setup=(SRC.format(t="src_empty", more=", f2 float8"),
                    "SELECT segmentation.register_feature_source(%(game)s, 'public.src_empty')")),
        Case("source-dropped-after-calibration",
             "SELECT * FROM segmentation.categorize_player(%(game)s, 'p1')", "SG006",
             {"game": "g_srcgone"},
             setup=(SRC.format(t="src_gone", more=", f2 float8"),
                    "INSERT INTO public.src_gone SELECT 'p' || i, i, random()"
                    " FROM generate_series(1, 600) i",
                    "SELECT segmentation.register_feature_source(%(game)s, 'public.src_gone')",
                    "SELECT segmentation.calibrate_taxonomy(%(game)s)",
                    "DROP TABLE public.src_gone"),
             check=_then_sqlstate("SELECT segmentation.categorize_all(%(game)s)", "SG006")),
    ]
    # Settings out of range, each read by the functions that use it.
    for name, value in SETTINGS_OUT_OF_RANGE.items():
        c.append(Case(f"setting-{name}-out-of-range", CALIBRATE, "SG020", {"game": "g1"},
                      setup=(f"SET segmentation.{name} = '{value}'",)))
    c += [
        Case("setting-malformed", CALIBRATE, "SG020", {"game": "g1"},
             setup=("SET segmentation.min_player_population = 'many'",)),
        Case("setting-1e400", CALIBRATE, "SG020", {"game": "g1"},
             setup=("SET segmentation.anomaly_contamination = '1e400'",)),
        Case("setting-integer-with-fraction", CALIBRATE, "SG020", {"game": "g1"},
             setup=("SET segmentation.random_seed = '1.5'",)),
        Case("setting-cache-ttl-categorize-player", "SELECT * FROM segmentation."
             "categorize_player('g1', 'p0000001', %(as_of)s)", "SG020", fresh_session=True,
             setup=("SET segmentation.cache_ttl_seconds = '86401'",)),
        Case("setting-slots-categorize-all",
             "SELECT segmentation.categorize_all('g1', %(as_of)s)", "SG020",
             setup=("SET segmentation.max_concurrent_categorizations = '0'",)),
        Case("setting-drift-taxonomy-drift",
             "SELECT segmentation.taxonomy_drift('g1', %(as_of)s)", "SG020",
             setup=("SET segmentation.drift_share_watch = '1.5'",)),
        Case("setting-invalid-health", "SELECT segmentation.health()", "ok",
             setup=("SET segmentation.anomaly_contamination = '1e400'",),
             check=_health_lists("segmentation.anomaly_contamination")),
    ]
    # Import documents.
    imp = "SELECT segmentation.import_taxonomy({doc}, 'g_import', false)"
    c += [
        Case("import-not-an-object", imp.format(doc="'[1, 2]'::jsonb"), "SG012"),
        Case("import-string", imp.format(doc="'\"taxonomy\"'::jsonb"), "SG012"),
        Case("import-empty-object", imp.format(doc="'{}'::jsonb"), "SG012"),
        Case("import-wrong-format-tag",
             imp.format(doc=f"jsonb_set({DOC}, '{{format}}', '\"other/format\"')"), "SG012"),
        Case("import-newer-format-version",
             imp.format(doc=f"jsonb_set({DOC}, '{{version}}', '99')"), "SG012"),
        Case("import-missing-key", imp.format(doc=f"({DOC} - 'anomaly')"), "SG012"),
        Case("import-mismatched-lengths",
             imp.format(doc=f"jsonb_set({DOC}, '{{segments,weights}}', '[0.5, 0.5]')"),
             "SG012"),
        Case("import-wrong-shape",
             imp.format(doc=f"jsonb_set({DOC}, '{{segments,covariances}}', '[[[1]]]')"),
             "SG012"),
        Case("import-wrong-type",
             imp.format(doc=f"jsonb_set({DOC}, '{{axes,loadings}}', '\"many\"')"), "SG012"),
        Case("import-details-not-objects",
             imp.format(doc=f"jsonb_set({DOC}, '{{segment_details}}', '[1,2,3,4,5,6,7]')"),
             "SG012"),
        Case("import-duplicate-segment-names",
             imp.format(doc=f"jsonb_set({DOC}, '{{segment_names,1}}',"
                            f" {DOC} -> 'segment_names' -> 0)"), "SG012"),
        Case("import-null-segment-name",
             imp.format(doc=f"jsonb_set({DOC}, '{{segment_names,0}}', 'null')"), "SG012"),
        Case("import-as-of-not-a-date",
             imp.format(doc=f"jsonb_set({DOC}, '{{taxonomy,as_of}}', '\"someday\"')"), "SG012"),
        Case("import-lookback-zero",
             imp.format(doc=f"jsonb_set({DOC}, '{{feature_recipe,lookback_days}}', '0')"),
             "SG012"),
        Case("import-1e400-number",
             imp.format(doc=f"jsonb_set({DOC}, '{{preparation,scale,0}}', '1e400')"), "SG012"),
        Case("import-zero-scale",
             imp.format(doc=f"jsonb_set({DOC}, '{{preparation,scale,0}}', '0')"), "SG012"),
        Case("import-null-document", "SELECT segmentation.import_taxonomy(NULL)", "SG012"),
    ]
    # NULL arguments to every public function.
    c += [
        Case("null-calibrate-game", "SELECT segmentation.calibrate_taxonomy(NULL)", "SG008"),
        Case("null-calibrate-defaults", "SELECT segmentation.calibrate_taxonomy(%(game)s,"
             " lookback_days => NULL, n_segments => NULL, as_of => %(as_of)s, activate => NULL)",
             "ok", {"game": "g_nulls"}, setup=(COPY_G1,),
             check=_summary(lookback_days=90, active=True)),
        Case("null-calibrate-as-of", "SELECT segmentation.calibrate_taxonomy('g1',"
             " as_of => NULL, activate => false)", "SG002|ok", check=_as_of_is_today),
        Case("null-activate", "SELECT segmentation.activate_taxonomy(NULL)", "SG008"),
        Case("unknown-taxonomy-activate", "SELECT segmentation.activate_taxonomy(-1)", "SG013"),
        Case("null-taxonomy-history", "SELECT * FROM segmentation.taxonomy_history(NULL)", "ok",
             check=_rows(0)),
        Case("null-register-game", "SELECT segmentation.register_feature_source("
             "NULL, 'segmentation.runs', 'game_id')", "SG008"),
        Case("null-register-source", "SELECT segmentation.register_feature_source("
             "'g_src_null', NULL, 'player_id')", "SG008"),
        Case("null-register-player-column", "SELECT segmentation.register_feature_source("
             "'g_src_nullcol', 'public.src_nullcol', NULL)", "ok",
             setup=(SRC.format(t="src_nullcol", more=", f2 float8"),),
             check=_summary(player_column="player_id")),
        Case("null-unregister", "SELECT segmentation.unregister_feature_source(NULL)", "ok",
             check=_value(False)),
        Case("null-export", "SELECT segmentation.export_taxonomy(NULL)", "SG008"),
        Case("unknown-taxonomy-export", "SELECT segmentation.export_taxonomy(-1)", "SG013"),
        Case("null-import-game-and-activate", "SELECT segmentation.import_taxonomy("
             f"jsonb_set({DOC}, '{{taxonomy,game_id}}', '\"g_imported\"'), NULL, NULL)", "ok",
             check=_summary(game_id="g_imported", active=True)),
        Case("null-categorize-player-game", "SELECT * FROM segmentation.categorize_player("
             "NULL, 'p0000001', %(as_of)s)", "SG008"),
        Case("null-categorize-player-player", "SELECT * FROM segmentation.categorize_player("
             "'g1', NULL, %(as_of)s)", "SG008"),
        Case("null-categorize-player-as-of", "SELECT * FROM segmentation.categorize_player("
             "'g1', 'p0000001', NULL)", "SG008"),
        Case("null-categorize-features-game", "SELECT * FROM segmentation.categorize_player("
             "NULL, '{\"sessions\": 1}'::jsonb)", "SG008"),
        Case("null-categorize-features", "SELECT * FROM segmentation.categorize_player("
             "'g1', NULL::jsonb)", "SG006"),
        Case("null-categorize-all-game", "SELECT segmentation.categorize_all(NULL)", "SG008"),
        Case("null-categorize-all-as-of", "SELECT segmentation.categorize_all('g1', NULL)",
             "SG008"),
        Case("null-detect-anomalies-game", "SELECT * FROM segmentation.detect_anomalies(NULL)",
             "SG008"),
        Case("null-detect-anomalies-as-of",
             "SELECT * FROM segmentation.detect_anomalies('g1', NULL)", "SG008"),
        Case("null-detect-anomalies-min-score", "SELECT count(*) FROM"
             " segmentation.detect_anomalies('g1', %(as_of)s, NULL)", "ok",
             check=_same_as("SELECT count(*) FROM"
                            " segmentation.detect_anomalies('g1', %(as_of)s, 1)")),
        Case("nan-detect-anomalies-min-score", "SELECT * FROM segmentation.detect_anomalies("
             "'g1', %(as_of)s, 'NaN')", "SG008"),
        Case("null-taxonomy-drift-game", "SELECT segmentation.taxonomy_drift(NULL)", "SG008"),
        Case("null-taxonomy-drift-as-of", "SELECT segmentation.taxonomy_drift('g1', NULL)",
             "SG008"),
        Case("null-setting-value", "SELECT segmentation.setting_value(NULL)", "SG020"),
    ]
    # Windows and dates.
    cal = ("SELECT segmentation.calibrate_taxonomy('g1', lookback_days => %(days)s,"
           " n_segments => %(k)s, as_of => %(as_of)s, activate => false)")
    c += [
        Case("as-of-year-1", CALIBRATE, "SG002", {"game": "g1", "as_of": "0001-01-01"}),
        Case("as-of-before-calendar-start", CALIBRATE, "22008",
             {"game": "g1", "as_of": "4713-01-01 BC"}),
        Case("as-of-infinity", CALIBRATE, "SG002", {"game": "g1", "as_of": "infinity"}),
        Case("as-of-far-future-categorize-player", "SELECT * FROM segmentation."
             "categorize_player('g1', 'p0000001', '2200-01-01')", "SG005"),
        Case("as-of-minus-infinity-categorize-player", "SELECT * FROM segmentation."
             "categorize_player('g1', 'p0000001', '-infinity')", "SG005"),
        Case("as-of-far-future-categorize-all",
             "SELECT segmentation.categorize_all('g1', '9999-12-31')", "SG002"),
        Case("lookback-zero", cal, "SG008", {"days": 0, "k": None}),
        Case("lookback-negative", cal, "SG008", {"days": -1, "k": None}),
        Case("lookback-huge", cal, "SG008", {"days": 2_147_483_647, "k": None}),
        Case("n-segments-1", cal, "SG008", {"days": None, "k": 1}),
        Case("n-segments-31", cal, "SG008", {"days": None, "k": 31}),
        Case("n-segments-negative", cal, "SG008", {"days": None, "k": -1}),
        Case("game-id-empty", CALIBRATE, "SG008", {"game": ""}),
        Case("game-id-blank", CALIBRATE, "SG008", {"game": "   "}),
        Case("game-id-too-long", CALIBRATE, "SG008", {"game": "g" * 201}),
    ]
    return c


CASES = _cases()


# ------------------------------------------------------------------------- machinery


@dataclass
class World:
    dsn: str
    conn: psycopg.Connection



@pytest.fixture(scope="module")
def world(segmentation_server: Any) -> Iterator[World]:
    dbname = f"seg_badinput_{os.getpid()}"
    with cloned_database(segmentation_server, dbname) as (dsn, conn):
        load_population(conn, "g1", players=600, seed=41)
        calibrate(conn)
        conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
        yield World(dsn, conn)


@dataclass(frozen=True)
class Snapshot:
    active: dict[str, int]
    taxonomies: frozenset[int]
    memberships: dict[int, str]


def _snapshot(conn: psycopg.Connection) -> Snapshot:
    return Snapshot(
        dict(conn.execute("SELECT game_id, taxonomy_id FROM"
                          " segmentation.game_behavioral_taxonomy WHERE is_active").fetchall()),
        frozenset(r[0] for r in conn.execute(
            "SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy")),
        dict(conn.execute("SELECT membership_id, md5(m::text) FROM"
                          " segmentation.player_segment_memberships m").fetchall()))


def _rows_lost(before: Snapshot, after: Snapshot) -> int:
    """Existing state a bad input destroyed or changed (new games may appear)."""
    return (sum(after.active.get(g) != t for g, t in before.active.items())
            + len(before.taxonomies - after.taxonomies)
            + sum(after.memberships.get(k) != v for k, v in before.memberships.items()))


def _run(w: World, case: Case) -> tuple[Any, int]:
    params = {"as_of": AS_OF, **case.params}
    before = _snapshot(w.conn)
    target = psycopg.connect(w.dsn, autocommit=True) if case.fresh_session else w.conn
    try:
        for statement in case.setup:
            target.execute(statement, params if "%(" in statement else None)
        try:
            cur = target.execute(case.sql, params)
            outcome: Any = cur.fetchall() if cur.description else cur.statusmessage
        except psycopg.Error as exc:
            outcome = exc
        if case.check is not None and str(getattr(outcome, "sqlstate", "ok")) in case.expect:
            case.check(target, params, outcome)
    finally:
        if case.fresh_session:
            target.close()
        else:
            w.conn.execute("RESET ALL")
    return outcome, _rows_lost(before, _snapshot(w.conn))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(world: World, case: Case) -> None:
    SUMMARY["tried"] += 1
    try:
        outcome, lost = _run(world, case)
        SUMMARY["rows_lost"] += lost
        assert lost == 0, f"{lost} rows lost or changed"
        expected = case.expect.split("|")
        if isinstance(outcome, psycopg.Error):
            message = outcome.diag.message_primary or ""
            assert outcome.sqlstate in expected, f"{outcome.sqlstate}: {message}"
            assert outcome.sqlstate != "XX000"
            assert "Traceback" not in message and len(message) < 2000
            # Raised by our functions: named as ours, never as a PL/Python class.
            assert not re.match(r"(plpy|spiexceptions)\.", message), message
            if re.fullmatch(r"SG\d{3}", outcome.sqlstate or ""):
                assert message.startswith("segmentation: "), message
                assert outcome.diag.message_hint, "an SG error without a hint"
        else:
            assert "ok" in expected, f"succeeded, expected {case.expect}: {str(outcome)[:200]}"
    except BaseException:
        SUMMARY["failures"] += 1
        raise


def test_every_case_is_documented() -> None:
    """docs/bad-input.md has a row for every case, with the same expected outcome."""
    text = DOCS.read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9_-]+)` \|[^|]*\| ([^|]+?) \|", text, re.M))
    missing = [c.id for c in CASES if c.id not in rows]
    assert missing == []
    wrong = [(c.id, c.expect, rows[c.id]) for c in CASES
             if not set(c.expect.split("|")) <= set(re.findall(r"SG\d{3}|\d{2}[0-9A-Z]{3}|ok",
                                                                  rows[c.id]))]
    assert wrong == []
    assert len(CASES) >= 40


def test_summary_nothing_lost(capsys: pytest.CaptureFixture[str]) -> None:
    """Last in the module: the counts of every case run before it."""
    with capsys.disabled():  # shown even under -q and output capture
        print(f"\nbad-input matrix: {SUMMARY['tried']} cases tried, {SUMMARY['failures']}"
              f" failures, {SUMMARY['rows_lost']} rows lost")
    assert SUMMARY["rows_lost"] == 0
