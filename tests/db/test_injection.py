"""SQL injection: hostile text in every text parameter, and odd names that must work.

Every text parameter of every public function (game ids, player ids, feature keys and
values, feature source relation and column names, setting names, strings inside an
import document) gets quotes, semicolons, comments, ``'); DROP TABLE ...``, unicode and
100k-character strings. Nothing may execute beyond the intended: a canary table stays
unchanged, an event trigger records every DDL command (only the functions' own
temporary tables and materialized view refreshes may appear), and the reference game's
data is untouched. Errors are clean: an SG SQLSTATE or a standard class (22, 42 except
syntax errors, 3F), never XX000, a short message without a Python traceback. Odd but
legitimate names (a feature source ``"we;ird""tab"`` with a column ``"pl'ayer"``, metric
keys with quotes and semicolons) calibrate and categorize.

One database per module (cloned from the loader's template); calls run as a superuser,
the worst case for an injection.
"""

from __future__ import annotations

import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.db.helpers import AS_OF, calibrate, cloned_database, load_population

pytestmark = pytest.mark.db

DROP = "'); DROP TABLE public.canary; --"
PAYLOADS: list[str] = [
    "'", "''", '"', "\\", "';", "\\'; --", DROP, '"); DROP TABLE public.canary; --',
    "x' OR '1'='1", "1; DELETE FROM public.canary", "'; UPDATE public.canary SET note = 'x'; --",
    "/* */", "a/*b*/c", "/*", "-- comment", "$$; DROP TABLE public.canary; $$", "$q$'$q$",
    "%s %(x)s {0} %", "\t\n\r; COMMIT; DROP TABLE public.canary;", "Ω≈ç√∫ 😀 中文 עברית \u202e",
    "public.canary", "segmentation.player_activity", "pg_catalog.pg_class",
    "x" * 100_000, (DROP + " /* ; */ \"'") * 3_000,
    # Incompressible: too big for any index entry even after TOAST compression.
    "".join(random.Random(7).choices(string.ascii_letters + string.punctuation, k=100_000)),
]
ODD_TABLE = '"we;ird""tab"'  # as SQL: the relation is named  we;ird"tab
ODD_COLUMNS = ["f'1; --", 'a"b/* */', DROP, "é—ü ; $$"]
ODD_GAME = "o'dd\"; --g /* */"
ODD_METRICS = {"sessions": "se'ss;--", "spend_usd": '"); DROP TABLE public.canary; --',
               "minutes_played": "/* mi */ nutes", "purchases": "ρ'ürch;ases"}
ALLOWED = re.compile(r"^(SG\d{3}|22...|42(?!601)...|3F000)$")


@dataclass
class World:
    dsn: str
    conn: psycopg.Connection
    tried: int = 0
    failures: list[str] = field(default_factory=list)



SETUP = [
    "CREATE TABLE public.canary (id int PRIMARY KEY, note text NOT NULL)",
    "INSERT INTO public.canary VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    # Every DDL command, also those run inside our functions, lands here.
    "CREATE TABLE public.ddl_log (tag text, ident text, schema_name text, is_temp bool)",
    # SECURITY DEFINER: a REFRESH runs as the materialized view's owner, who cannot
    # write to this test-only table.
    "CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER"
    " SET search_path = pg_catalog, pg_temp AS $$ BEGIN INSERT INTO public.ddl_log"
    " SELECT command_tag, object_identity, schema_name, NULL"
    " FROM pg_event_trigger_ddl_commands(); END $$",
    "CREATE FUNCTION public.log_drop() RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER"
    " SET search_path = pg_catalog, pg_temp AS $$ BEGIN INSERT INTO public.ddl_log"
    " SELECT 'DROP', object_identity, schema_name, is_temporary"
    " FROM pg_event_trigger_dropped_objects(); END $$",
    "CREATE EVENT TRIGGER seg_log_ddl ON ddl_command_end EXECUTE FUNCTION public.log_ddl()",
    "CREATE EVENT TRIGGER seg_log_drop ON sql_drop EXECUTE FUNCTION public.log_drop()",
]


@pytest.fixture(scope="module")
def world(segmentation_server: Any) -> Iterator[World]:
    dbname = f"seg_inject_{os.getpid()}"
    with cloned_database(segmentation_server, dbname) as (dsn, conn):
        load_population(conn, "g1", players=600, seed=31)
        calibrate(conn)
        conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
        for statement in SETUP:
            conn.execute(statement)
        w = World(dsn, conn)
        before = _reference_state(conn)
        yield w
        assert _reference_state(conn) == before
        _assert_nothing_escaped(conn)
        conn.execute("DROP EVENT TRIGGER seg_log_ddl")
        conn.execute("DROP EVENT TRIGGER seg_log_drop")


def _reference_state(conn: psycopg.Connection) -> tuple[Any, ...]:
    """Game g1 and the catalog of public/segmentation relations: must never change."""
    return conn.execute("""
        SELECT (SELECT md5(string_agg(player_id || activity_date || metrics::text, ','
                                      ORDER BY player_id, activity_date))
                  FROM segmentation.player_activity WHERE game_id = 'g1'),
               (SELECT md5(string_agg(taxonomy_id || ':' || is_active || ':' || version, ','
                                      ORDER BY taxonomy_id))
                  FROM segmentation.game_behavioral_taxonomy WHERE game_id = 'g1'),
               (SELECT md5(string_agg(m::text, ',' ORDER BY membership_id))
                  FROM segmentation.player_segment_memberships m WHERE game_id = 'g1'),
               (SELECT string_agg(oid::regclass::text, ',' ORDER BY oid::regclass::text)
                  FROM pg_class WHERE relnamespace IN ('public'::regnamespace,
                                                       'segmentation'::regnamespace)
                   AND NOT oid IN (SELECT inhrelid FROM pg_inherits
                                    WHERE inhparent = 'segmentation.window_cache'::regclass)
                   AND NOT oid IN (SELECT i.indexrelid FROM pg_index i JOIN pg_inherits h
                                     ON h.inhrelid = i.indrelid
                                    WHERE h.inhparent = 'segmentation.window_cache'::regclass)),
               (SELECT string_agg(p.oid::regprocedure::text || md5(p.prosrc), ','
                                  ORDER BY p.oid::regprocedure::text)
                  FROM pg_proc p WHERE pronamespace IN ('public'::regnamespace,
                                                        'segmentation'::regnamespace))
    """).fetchone()


CANARY = "SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM public.canary"


def _assert_nothing_escaped(conn: psycopg.Connection) -> None:
    assert conn.execute(CANARY).fetchone()[0] == "1=one,2=two,3=three"
    # DDL since setup: the functions' own temporary objects, the refresh of our
    # materialized views, a new game's partition of the window cache (named after the
    # game's md5, its bound checked by test_odd_metric_names_work) and the partition's
    # player index (rebuilt by each run), and what the odd-name
    # test creates in odd_schema.
    strays = conn.execute("""
        SELECT tag, ident FROM public.ddl_log
         WHERE NOT (coalesce(is_temp, false) OR schema_name IN ('pg_temp', 'odd_schema')
                    OR ident LIKE 'pg\\_temp.%' OR ident = 'odd_schema'
                    OR (tag = 'REFRESH MATERIALIZED VIEW'
                        AND ident IN ('segmentation.segment_summary',
                                      'segmentation.segment_transitions'))
                    OR (tag IN ('CREATE TABLE', 'COMMENT', 'GRANT')
                        AND ident ~ '^segmentation\\.window_cache_[0-9a-f]{32}$')
                    OR (tag IN ('CREATE INDEX', 'DROP INDEX', 'DROP')
                        AND ident ~ '^segmentation\\.window_cache_[0-9a-f]{32}_player$'))
    """).fetchall()
    assert strays == []


def _call(w: World, label: str, statement: str | sql.Composable,
          params: Any = None, *, must_succeed: bool = False) -> Any:
    """Run one statement; record a failure unless it succeeds or fails cleanly."""
    w.tried += 1
    try:
        cur = w.conn.execute(statement, params)
        result = cur.fetchall() if cur.description else None
    except psycopg.Error as exc:
        state = exc.sqlstate or "?"
        message = exc.diag.message_primary or ""
        problems = []
        if must_succeed or not ALLOWED.match(state):
            problems.append(f"SQLSTATE {state}")
        if "Traceback" in message or len(message) > 2000:
            problems.append(f"message of {len(message)} characters: {message[:120]!r}")
        if state.startswith("SG") and not exc.diag.message_hint:
            problems.append("no hint")
        if problems:
            w.failures.append(f"{label}: {', '.join(problems)}: {message[:200]}")
        result = exc
    canary = w.conn.execute(CANARY).fetchone()[0]
    if canary != "1=one,2=two,3=three":
        w.failures.append(f"{label}: canary changed to {canary!r}")
    return result


def _report(w: World, what: str) -> None:
    print(f"\n{what}: {w.tried} calls, {len(w.failures)} failures")
    assert w.failures == [], "\n".join(w.failures)


def test_hostile_text_in_every_text_parameter(world: World) -> None:
    w = world
    w.tried, w.failures = 0, []
    calls: dict[str, str] = {
        "calibrate_taxonomy(game_id)":
            "SELECT segmentation.calibrate_taxonomy(%(p)s, as_of => %(as_of)s)",
        "taxonomy_history(game_id)": "SELECT * FROM segmentation.taxonomy_history(%(p)s)",
        "unregister_feature_source(game_id)":
            "SELECT segmentation.unregister_feature_source(%(p)s)",
        "categorize_all(game_id)": "SELECT segmentation.categorize_all(%(p)s, %(as_of)s)",
        "detect_anomalies(game_id)":
            "SELECT * FROM segmentation.detect_anomalies(%(p)s, %(as_of)s)",
        "taxonomy_drift(game_id)": "SELECT segmentation.taxonomy_drift(%(p)s, %(as_of)s)",
        "categorize_player(game_id, player_id)":
            "SELECT * FROM segmentation.categorize_player(%(p)s, 'p0000001', %(as_of)s)",
        "categorize_player(player_id)":
            "SELECT * FROM segmentation.categorize_player('g1', %(p)s, %(as_of)s)",
        "categorize_player(game_id, features)":
            "SELECT * FROM segmentation.categorize_player(%(p)s, '{\"sessions\": 1}'::jsonb)",
        "categorize_player(features key)":
            "SELECT * FROM segmentation.categorize_player('g1', %(key)s)",
        "categorize_player(features value)":
            "SELECT * FROM segmentation.categorize_player('g1', %(value)s)",
        "register_feature_source(game_id)":
            "SELECT segmentation.register_feature_source(%(p)s, 'public.canary', 'id')",
        "register_feature_source(source)":
            "SELECT segmentation.register_feature_source('g_src', %(p)s, 'player_id')",
        "register_feature_source(player_column)":
            "SELECT segmentation.register_feature_source('g_src', 'segmentation.runs', %(p)s)",
        "import_taxonomy(game_id)":
            "SELECT segmentation.import_taxonomy(segmentation.export_taxonomy("
            "(SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
            " WHERE game_id = 'g1' AND is_active)), %(p)s, false)",
        "setting_value(setting_name)": "SELECT segmentation.setting_value(%(p)s)",
    }
    for payload in PAYLOADS:
        params = {"p": payload, "as_of": AS_OF, "key": Jsonb({payload: 1}),
                  "value": Jsonb({"sessions": payload})}
        for label, statement in calls.items():
            _call(w, f"{label} <- {payload[:40]!r}", statement, params)
    _assert_nothing_escaped(w.conn)
    _report(w, "hostile parameters")


def _document(w: World) -> dict[str, Any]:
    return w.conn.execute(
        "SELECT segmentation.export_taxonomy(taxonomy_id) FROM"
        " segmentation.game_behavioral_taxonomy WHERE game_id = 'g1' AND is_active").fetchone()[0]


def test_hostile_strings_inside_an_import_document(world: World) -> None:
    """Strings in the document are data: an odd name imports and then scores cleanly."""
    w = world
    w.tried, w.failures = 0, []
    doc = _document(w)
    for i, payload in enumerate(PAYLOADS):
        variants = {
            "taxonomy.game_id": {**doc, "taxonomy": {**doc["taxonomy"], "game_id": payload}},
            "segment_names[0]": {**doc, "segment_names": [payload, *doc["segment_names"][1:]]},
            "axes.names[0]": {**doc, "axes": {**doc["axes"],
                                              "names": [payload, *doc["axes"]["names"][1:]]}},
            "format": {**doc, "format": payload},
            "feature_recipe.metrics[0]": {**doc, "feature_recipe": {
                **doc["feature_recipe"],
                "metrics": [payload, *doc["feature_recipe"]["metrics"][1:]]}},
        }
        for where, variant in variants.items():
            game = None if where == "taxonomy.game_id" else f"g_doc_{i}_{where}"
            label = f"import_taxonomy({where}) <- {payload[:40]!r}"
            result = _call(w, label, "SELECT segmentation.import_taxonomy(%s, %s)",
                           (Jsonb(variant), game))
            if isinstance(result, list):  # imported: the odd name must score
                target = result[0][0]["game_id"]
                _call(w, f"categorize_player after {label}",
                      "SELECT * FROM segmentation.categorize_player(%s, %s)",
                      (target, Jsonb({"sessions": 3, "active_days": 2})), must_succeed=True)
    _assert_nothing_escaped(w.conn)
    _report(w, "hostile import documents")


def test_odd_source_table_and_column_names_work(world: World) -> None:
    """A feature source whose names need quoting calibrates and categorizes."""
    w = world
    w.tried, w.failures = 0, []
    cols = ", ".join(f"{sql.Identifier(c).as_string(w.conn)} float8" for c in ODD_COLUMNS)
    w.conn.execute("CREATE SCHEMA odd_schema")
    w.conn.execute(f"CREATE TABLE odd_schema.{ODD_TABLE} (\"pl'ayer\" text, {cols})")
    exprs = ", ".join(f"(i % {n + 3}) * random()" for n in range(len(ODD_COLUMNS)))
    w.conn.execute(f"INSERT INTO odd_schema.{ODD_TABLE} SELECT 'p''' || i || '; --', {exprs}"
                   " FROM generate_series(1, 600) i")
    source = f"odd_schema.{ODD_TABLE}"
    steps = [
        ("register", "SELECT segmentation.register_feature_source(%s, %s, %s)",
         (ODD_GAME, source, "pl'ayer")),
        ("calibrate", "SELECT segmentation.calibrate_taxonomy(%s)", (ODD_GAME,)),
        ("categorize_player(id)", "SELECT * FROM segmentation.categorize_player(%s, %s)",
         (ODD_GAME, "p'7; --")),
        ("categorize_player(features)",
         "SELECT * FROM segmentation.categorize_player(%s, %s)",
         (ODD_GAME, Jsonb({c: 1.5 for c in ODD_COLUMNS}))),
        ("categorize_all", "SELECT segmentation.categorize_all(%s)", (ODD_GAME,)),
        ("detect_anomalies", "SELECT * FROM segmentation.detect_anomalies(%s, min_score => 0)",
         (ODD_GAME,)),
        ("taxonomy_drift", "SELECT segmentation.taxonomy_drift(%s)", (ODD_GAME,)),
        ("views", "SELECT count(*) FROM segmentation.player_current_segment"
                  " WHERE game_id = %s", (ODD_GAME,)),
    ]
    results = {name: _call(w, name, statement, params, must_succeed=True)
               for name, statement, params in steps}
    _report(w, "odd feature source names")
    assert results["register"][0][0]["features"] == ODD_COLUMNS
    assert results["calibrate"][0][0]["features"]["used"] == ODD_COLUMNS
    assert results["categorize_all"][0][0]["players"] == 600
    assert results["views"][0][0] == 600
    assert len(results["detect_anomalies"]) == 600  # min_score 0 lists everyone
    # The DDL watcher is live: it saw the functions' temporary staging table.
    assert w.conn.execute("SELECT count(*) FROM public.ddl_log"
                          " WHERE ident = 'pg_temp.segmentation_population'").fetchone()[0] > 0
    _assert_nothing_escaped(w.conn)


def test_odd_metric_names_work(world: World) -> None:
    """Metric keys with quotes, semicolons and comments are just names."""
    w = world
    w.tried, w.failures = 0, []
    game = "m'etric;g"
    renames = " ".join(f"WHEN {sql.Literal(k).as_string(w.conn)} THEN"
                       f" {sql.Literal(v).as_string(w.conn)}" for k, v in ODD_METRICS.items())
    w.conn.execute(
        "INSERT INTO segmentation.player_activity SELECT %s, a.player_id, a.activity_date,"
        f" (SELECT coalesce(jsonb_object_agg(CASE e.key {renames} ELSE e.key END, e.value),"
        " '{}') FROM jsonb_each(a.metrics) e)"
        " FROM segmentation.player_activity a WHERE a.game_id = 'g1'", (game,))
    summary = _call(w, "calibrate", "SELECT segmentation.calibrate_taxonomy(%s, as_of => %s)",
                    (game, AS_OF), must_succeed=True)
    features = {k: 2 for k in ODD_METRICS.values()} | {"active_days": 3}
    steps = [
        ("categorize_player(id)", "SELECT * FROM segmentation.categorize_player(%s, %s, %s)",
         (game, "p0000003", AS_OF)),
        ("categorize_player(features)",
         "SELECT memberships, axis_scores FROM segmentation.categorize_player(%s, %s)",
         (game, Jsonb(features))),
        ("categorize_all", "SELECT segmentation.categorize_all(%s, %s)", (game, AS_OF)),
        ("detect_anomalies", "SELECT * FROM segmentation.detect_anomalies(%s, %s)",
         (game, AS_OF)),
        ("taxonomy_drift", "SELECT segmentation.taxonomy_drift(%s, %s)", (game, AS_OF)),
        ("segment_summary", "SELECT count(*) FROM segmentation.segment_summary"
                            " WHERE game_id = %s AND is_active", (game,)),
    ]
    results = {name: _call(w, name, statement, params, must_succeed=True)
               for name, statement, params in steps}
    _report(w, "odd metric names")
    used = summary[0][0]["features"]["used"]
    assert {f"{m}_total" for m in ODD_METRICS.values()} <= set(used)
    memberships, axis_scores = results["categorize_player(features)"][0]
    assert abs(sum(memberships.values()) - 1) < 1e-9 and axis_scores
    assert results["segment_summary"][0][0] >= 2
    # The game's window cache partition: the odd name reached its bound as a literal.
    assert w.conn.execute(
        "SELECT pg_get_expr(relpartbound, oid), obj_description(oid, 'pg_class') FROM pg_class"
        " WHERE oid = to_regclass('segmentation.window_cache_' || md5(%s))", (game,)
    ).fetchone() == ("FOR VALUES IN ('m''etric;g')",
                     "Window cache of game m'etric;g (a partition of window_cache).")
    _assert_nothing_escaped(w.conn)
