"""Role matrix: what segmentation_reader, _app and _admin may do, and nothing more.

Real non-superuser LOGIN roles, one granted each group role and one granted nothing,
try every action against one calibrated database (module-scoped, cloned from the
template the loader installed). Every attempt runs in a transaction that is rolled
back, so the attempts cannot disturb each other. The matrix is the one documented in
docs/security.md. Also: catalog facts (SECURITY DEFINER, search_path, PUBLIC), and that
only a superuser may point a session at another server-side library directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from segmentation import __version__

from tests.conftest import server_dsn
from tests.db.helpers import AS_OF, calibrate, cloned_database, load_population

pytestmark = pytest.mark.db

PID = os.getpid()
GROUPS = {"reader": "segmentation_reader", "app": "segmentation_app",
          "admin": "segmentation_admin", "nobody": None}
ROLES = tuple(GROUPS)

READ = frozenset({"reader", "app", "admin"})
APP = frozenset({"app", "admin"})
ADMIN = frozenset({"admin"})
NOONE: frozenset[str] = frozenset()

BASE_TABLES = {  # table -> a column that is neither generated nor an identity
    "player_activity": "game_id", "feature_sources": "game_id",
    "game_behavioral_taxonomy": "game_id", "behavioral_axes": "name",
    "segment_definitions": "name", "player_segment_memberships": "game_id",
    "runs": "game_id", "segment_transition_counts": "game_id", "segment_totals": "game_id",
    "window_cache_state": "game_id", "window_cache": "game_id", "activity_changes": "game_id",
}


def _actions() -> dict[str, tuple[str, frozenset[str]]]:
    """action id -> (statement, roles allowed). %(name)s parameters come from World."""
    a: dict[str, tuple[str, frozenset[str]]] = {}
    for view in ("player_current_segment", "player_memberships_long", "player_anomalies",
                 "settings", "metrics", "segment_summary", "segment_transitions"):
        a[f"select-{view}"] = (f"SELECT * FROM segmentation.{view} LIMIT 1", READ)
    for table in ("game_behavioral_taxonomy", "behavioral_axes", "segment_definitions", "runs"):
        a[f"select-{table}"] = (f"SELECT * FROM segmentation.{table} LIMIT 1", READ)
    a["select-player_activity"] = ("SELECT * FROM segmentation.player_activity LIMIT 1", APP)
    a["select-feature_sources"] = ("SELECT * FROM segmentation.feature_sources LIMIT 1", APP)
    a["select-player_segment_memberships"] = (
        "SELECT * FROM segmentation.player_segment_memberships LIMIT 1", ADMIN)
    a["select-segment_transition_counts"] = (
        "SELECT * FROM segmentation.segment_transition_counts LIMIT 1", ADMIN)
    a["select-segment_totals"] = ("SELECT * FROM segmentation.segment_totals LIMIT 1", ADMIN)
    # categorize_player(player_id) reads a player's window through the cache.
    for table in ("window_cache_state", "window_cache", "activity_changes"):
        a[f"select-{table}"] = (f"SELECT * FROM segmentation.{table} LIMIT 1", APP)
    # A trigger function runs for whoever writes player_activity (SECURITY DEFINER,
    # justified in its comment); it cannot be called directly.
    a["call-_log_activity_changes"] = (
        "INSERT INTO segmentation.player_activity VALUES ('g1', 'probe', %(as_of)s, '{}')",
        ADMIN)
    # Called by that trigger (as its owner); admins may call them (they may delete the
    # notes anyway; the other only takes an advisory lock).
    a["call-_forget_uncached_notes"] = (
        "SELECT segmentation._forget_uncached_notes(ARRAY['g_probe'])", ADMIN)
    a["call-_lock_if_uncached"] = ("SELECT segmentation._lock_if_uncached('g_probe')", ADMIN)
    # A run empties its game's partition of the window cache through this one (SECURITY
    # DEFINER, justified in its comment): admins cannot TRUNCATE or create it themselves.
    a["call-_empty_window_cache"] = ("SELECT segmentation._empty_window_cache('g_probe')",
                                     ADMIN)
    # And indexes it by player once filled (SECURITY DEFINER for the same reason).
    a["call-_index_window_cache"] = ("SELECT segmentation._index_window_cache('g1')", ADMIN)
    # g1's partition (from the world's categorize_all) grants what its parent does.
    g1_cache = "segmentation.window_cache_" + hashlib.md5(b"g1").hexdigest()
    a["select-window_cache-partition"] = (f"SELECT * FROM {g1_cache} LIMIT 1", APP)
    a["insert-window_cache-partition"] = (
        f"INSERT INTO {g1_cache} (game_id) SELECT NULL WHERE false", ADMIN)
    a["truncate-window_cache-partition"] = (f"TRUNCATE {g1_cache}", NOONE)
    a["ddl-drop-window_cache-partition"] = (f"DROP TABLE {g1_cache}", NOONE)
    a["select-_yoyo_migration"] = ("SELECT * FROM segmentation._yoyo_migration LIMIT 1", NOONE)

    for call in ("version()", "live()", "ready()", "health()", "python_runtime()",
                 "setting_definitions()", "setting_value('segmentation.random_seed')",
                 "taxonomy_history('g1')", "_python_bootstrap()"):
        a[f"call-{call.split('(')[0]}"] = (f"SELECT segmentation.{call}", READ)
    a["call-categorize_player(id)"] = (
        "SELECT * FROM segmentation.categorize_player('g1', 'p0000001', %(as_of)s)", APP)
    a["call-categorize_player(jsonb)"] = (
        "SELECT * FROM segmentation.categorize_player('g1', '{\"sessions\": 3}'::jsonb)", APP)
    # The C categorize_player(text, jsonb) loads a taxonomy through _scoring_kernel as
    # the caller, and hands unusual input to its PL/Python twin through fmgr (no
    # privilege check there: only admins may call the twin directly).
    a["call-_scoring_kernel"] = (
        "SELECT format FROM segmentation._scoring_kernel(%(taxonomy_id)s)", APP)
    a["call-_categorize_player_plpython"] = (
        "SELECT * FROM segmentation._categorize_player_plpython('g1',"
        " '{\"sessions\": 3}'::jsonb)", ADMIN)
    a["call-_native_version"] = ("SELECT segmentation._native_version()", READ)
    # The statement trigger that tells every backend's C scorer about a write.
    a["call-_taxonomy_changed"] = (
        "UPDATE segmentation.game_behavioral_taxonomy SET game_id = game_id WHERE false", ADMIN)
    admin_calls = {
        "calibrate_taxonomy": "SELECT segmentation.calibrate_taxonomy('g1', as_of => %(as_of)s)",
        "activate_taxonomy": "SELECT segmentation.activate_taxonomy(%(taxonomy_id)s)",
        "categorize_all": "SELECT segmentation.categorize_all('g1', %(as_of)s)",
        "export_taxonomy": "SELECT segmentation.export_taxonomy(%(taxonomy_id)s)",
        "import_taxonomy": "SELECT segmentation.import_taxonomy(%(doc)s, 'g_imported', false)",
        "register_feature_source": "SELECT segmentation.register_feature_source("
                                   "'g_src', 'public.role_source', 'player_id')",
        "unregister_feature_source": "SELECT segmentation.unregister_feature_source('g1')",
        "detect_anomalies": "SELECT * FROM segmentation.detect_anomalies('g1', %(as_of)s)",
        "taxonomy_drift": "SELECT segmentation.taxonomy_drift('g1', %(as_of)s)",
        # SECURITY DEFINER (justified in its comment): only admins may log a failed run.
        # Its loopback insert commits on its own, despite the rollback: one probe row.
        "_record_failed_run": "SELECT segmentation._record_failed_run('calibrate', 'g_probe',"
                              " '{}', now(), 'SG000', 'role matrix probe', NULL)",
    }
    for name, statement in admin_calls.items():
        a[f"call-{name}"] = (statement, ADMIN)

    # WHERE false: the privilege check happens at executor start, no row changes.
    for table, column in BASE_TABLES.items():
        t = f"segmentation.{table}"
        a[f"insert-{table}"] = (f"INSERT INTO {t} ({column}) SELECT NULL WHERE false", ADMIN)
        a[f"update-{table}"] = (f"UPDATE {t} SET {column} = NULL WHERE false", ADMIN)
        a[f"delete-{table}"] = (f"DELETE FROM {t} WHERE false", ADMIN)
        a[f"truncate-{table}"] = (f"TRUNCATE {t}", NOONE)
    a["insert-_yoyo_migration"] = (
        "INSERT INTO segmentation._yoyo_migration (migration_id) SELECT NULL WHERE false", NOONE)
    a["delete-_yoyo_migration"] = ("DELETE FROM segmentation._yoyo_migration WHERE false",
                                   NOONE)

    for mv in ("segment_summary", "segment_transitions"):
        a[f"refresh-{mv}"] = (f"REFRESH MATERIALIZED VIEW segmentation.{mv}", ADMIN)
    a["refresh-segment_summary-concurrently"] = (
        "REFRESH MATERIALIZED VIEW CONCURRENTLY segmentation.segment_summary", ADMIN)

    a["ddl-create-plpython3u-function"] = (
        "CREATE FUNCTION public.seg_probe() RETURNS int LANGUAGE plpython3u AS 'return 1'",
        NOONE)
    a["ddl-replace-segmentation-function"] = (
        "CREATE OR REPLACE FUNCTION segmentation.version() RETURNS text LANGUAGE sql"
        " AS $$ SELECT 'forged' $$", NOONE)
    a["ddl-create-table-in-schema"] = ("CREATE TABLE segmentation.probe (i int)", NOONE)
    a["ddl-alter-table"] = ("ALTER TABLE segmentation.runs ADD COLUMN probe int", NOONE)
    a["ddl-drop-table"] = ("DROP TABLE segmentation.player_activity", NOONE)
    return a


ACTIONS = _actions()


@dataclass
class World:
    dbname: str
    dsn: str
    roles: dict[str, str]
    conns: dict[str, psycopg.Connection] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)



@pytest.fixture(scope="module")
def world(segmentation_server: Any) -> Iterator[World]:
    """One calibrated, categorized game g1 (600 players) and a login role per group."""
    dbname = f"seg_roles_{PID}"
    roles = {r: f"seg_{r}_{PID}" for r in ROLES}
    with cloned_database(segmentation_server, dbname) as (dsn, su):
        load_population(su, "g1", players=600, seed=21)
        taxonomy_id = calibrate(su)["taxonomy_id"]
        su.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
        doc = su.execute("SELECT segmentation.export_taxonomy(%s)",
                         (taxonomy_id,)).fetchone()[0]
        su.execute("CREATE TABLE public.role_source (player_id text, a float8, b float8)")
        for role, login in roles.items():
            su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))
            su.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                       .format(sql.Identifier(login)))
            if GROUPS[role]:
                su.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(GROUPS[role]), sql.Identifier(login)))
        w = World(dbname, dsn, roles, params={"as_of": AS_OF, "taxonomy_id": taxonomy_id,
                                      "doc": Jsonb(doc)})
        try:
            for role, login in roles.items():
                w.conns[role] = psycopg.connect(server_dsn(dbname, user=login))
            yield w
        finally:
            for c in w.conns.values():
                c.close()
            with psycopg.connect(dsn, autocommit=True) as su:
                for login in roles.values():
                    su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(login)))
                    su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


def _attempt(conn: psycopg.Connection, statement: str, params: dict[str, Any]) -> str:
    """'ok', 'denied' (SQLSTATE 42501) or the unexpected error; always rolled back."""
    try:
        conn.execute(statement, params if "%(" in statement else None)
        return "ok"
    except psycopg.errors.InsufficientPrivilege:
        return "denied"
    except psycopg.Error as exc:
        return f"error {exc.sqlstate}: {exc.diag.message_primary}"
    finally:
        conn.rollback()


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(world: World, role: str, action: str) -> None:
    statement, allowed = ACTIONS[action]
    expected = "ok" if role in allowed else "denied"
    assert _attempt(world.conns[role], statement, world.params) == expected


def test_matrix_covers_every_function_and_relation(world: World) -> None:
    """A new public function or relation must get a row in the matrix (and docs)."""
    with psycopg.connect(world.dsn) as su:
        functions = {r[0] for r in su.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'segmentation'::regnamespace")}
        relations = {r[0] for r in su.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'segmentation'::regnamespace"
            " AND relkind IN ('r', 'p', 'v', 'm') AND NOT relispartition"
            " AND relname NOT LIKE '%yoyo%'")}
    called = {a.split("-", 1)[1].split("(")[0] for a in ACTIONS if a.startswith("call-")}
    selected = {a.split("-", 1)[1] for a in ACTIONS if a.startswith("select-")}
    assert functions - called == set()
    assert relations - selected == set()


def test_no_security_definer_and_search_path_pinned(world: World) -> None:
    with psycopg.connect(world.dsn) as su:
        rows = su.execute("""
            SELECT p.oid::regprocedure::text, p.prosecdef,
                   obj_description(p.oid, 'pg_proc'),
                   (SELECT substr(c, length('search_path=') + 1)
                      FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%')
              FROM pg_proc p WHERE p.pronamespace = 'segmentation'::regnamespace""").fetchall()
    assert len(rows) >= 20
    unpinned = {name for name, _, _, search_path in rows if search_path is None}
    # The one justified exception (sql/200_categorization.sql), proven safe by
    # test_categorize_player_features_under_a_hostile_search_path.
    assert unpinned == {"segmentation.categorize_player(text,jsonb)"}
    for name, secdef, comment, search_path in rows:
        if search_path is None:
            continue
        # pg_temp last (or an empty path): temporary objects can never shadow ours.
        parts = [p.strip() for p in search_path.split(",") if p.strip()]
        assert not parts or parts[-1] == "pg_temp", (name, search_path)
        if secdef:  # allowed only with a justification in its comment
            assert comment and "SECURITY DEFINER" in comment, name


HOSTILE = [
    "CREATE SCHEMA hostile",
    # Every text comparison, type name "text" and unqualified call resolved through
    # this schema fails loudly: search_path lists it before pg_catalog.
    "CREATE FUNCTION hostile.trap(text, text) RETURNS boolean LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'hostile operator called'; END $$",
    "CREATE OPERATOR hostile.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hostile.trap)",
    "CREATE FUNCTION hostile.current_setting(text) RETURNS text LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'hostile function called'; END $$",
    "CREATE FUNCTION hostile.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'hostile function called'; END $$",
    "CREATE DOMAIN hostile.text AS pg_catalog.int4 CHECK (false)",
    "CREATE TABLE hostile.game_behavioral_taxonomy (taxonomy_id bigint, game_id text,"
    " is_active boolean)",
]


def test_categorize_player_features_under_a_hostile_search_path(world: World) -> None:
    """categorize_player(text, jsonb) has no SET search_path (the one exception above).

    Under a search_path that puts a schema of traps before pg_catalog, a cold backend
    (taxonomy load) and a warm one (hot path) answer exactly as under a clean path,
    no trap fires, and the caller's search_path is left as it was.
    """
    call = ("SELECT * FROM segmentation.categorize_player("
            "'g1'::pg_catalog.text, '{\"sessions\": 3}'::pg_catalog.jsonb)")
    with psycopg.connect(world.dsn, autocommit=True) as su:
        expected = su.execute(call).fetchone()
        try:
            for statement in HOSTILE:
                su.execute(statement)
            with psycopg.connect(world.dsn, autocommit=True) as conn:
                conn.execute("SET search_path = hostile, pg_catalog, public")
                # The traps work: unqualified names do reach them.
                with pytest.raises(psycopg.errors.RaiseException, match="hostile operator"):
                    conn.execute("SELECT 'a'::pg_catalog.text = 'b'::pg_catalog.text")
                assert conn.execute(call).fetchone() == expected  # cold: loads the taxonomy
                assert conn.execute(call).fetchone() == expected  # warm: cached
                assert conn.execute("SHOW search_path").fetchone() == (
                    "hostile, pg_catalog, public",)
                # A reload inside a transaction (another session activated a copy of
                # the taxonomy) pins the path for the load only.
                copy = su.execute(
                    "SELECT (segmentation.import_taxonomy(segmentation.export_taxonomy(%s),"
                    " 'g1', true) ->> 'taxonomy_id')::bigint",
                    (world.params["taxonomy_id"],)).fetchone()[0]
                with conn.transaction():
                    conn.execute("SET LOCAL search_path = hostile, pg_catalog")
                    reloaded = conn.execute(call).fetchone()
                    assert reloaded[0] == copy and reloaded[2:] == expected[2:]
                    assert conn.execute("SHOW search_path").fetchone() == (
                        "hostile, pg_catalog",)
        finally:
            su.execute("DROP SCHEMA IF EXISTS hostile CASCADE")
            su.execute("SELECT segmentation.activate_taxonomy(%s)",
                       (world.params["taxonomy_id"],))


def test_public_and_a_fresh_role_have_no_privilege(world: World) -> None:
    nobody = world.roles["nobody"]
    with psycopg.connect(world.dsn) as su:
        public_grants = su.execute("""
            WITH acls AS (
                SELECT 'schema' AS kind, nspname::text AS name,
                       coalesce(nspacl, acldefault('n', nspowner)) AS acl
                  FROM pg_namespace WHERE nspname IN ('segmentation', 'segmentation_ext')
                UNION ALL
                SELECT 'relation', oid::regclass::text,
                       coalesce(relacl, acldefault(
                           (CASE relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", relowner))
                  FROM pg_class WHERE relnamespace = 'segmentation'::regnamespace
                   AND relkind IN ('r', 'v', 'm', 'S', 'f', 'p')
                UNION ALL
                SELECT 'function', oid::regprocedure::text,
                       coalesce(proacl, acldefault('f', proowner))
                  FROM pg_proc WHERE pronamespace = 'segmentation'::regnamespace
                UNION ALL
                SELECT 'type', oid::regtype::text, coalesce(typacl, acldefault('T', typowner))
                  FROM pg_type t WHERE typnamespace = 'segmentation'::regnamespace
                   AND typtype IN ('c', 'd', 'e') AND (typrelid = 0 OR EXISTS (
                       SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
            )
            SELECT kind, name, a.privilege_type FROM acls, aclexplode(acl) a
             WHERE a.grantee = 0""").fetchall()
        assert public_grants == []
        leaks = su.execute("""
            SELECT 'schema ' || n.nspname || ' ' || p
              FROM pg_namespace n, unnest(ARRAY['USAGE', 'CREATE']) p
             WHERE n.nspname IN ('segmentation', 'segmentation_ext')
               AND has_schema_privilege(%(r)s, n.oid, p)
            UNION ALL
            SELECT c.oid::regclass::text || ' ' || p
              FROM pg_class c, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                            'REFERENCES', 'TRIGGER']) p
             WHERE c.relnamespace = 'segmentation'::regnamespace
               AND c.relkind IN ('r', 'v', 'm', 'f', 'p') AND has_table_privilege(%(r)s, c.oid, p)
            UNION ALL
            SELECT c.oid::regclass::text || ' ' || p
              FROM pg_class c, unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) p
             WHERE c.relnamespace = 'segmentation'::regnamespace AND c.relkind = 'S'
               AND has_sequence_privilege(%(r)s, c.oid, p)
            UNION ALL
            SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'segmentation'::regnamespace
               AND has_function_privilege(%(r)s, p.oid, 'EXECUTE')
            UNION ALL
            SELECT 'type segmentation.categorization'
             WHERE has_type_privilege(%(r)s, 'segmentation.categorization', 'USAGE')
            UNION ALL
            -- The ACL of an untrusted language says nothing (PUBLIC by default): only
            -- superusers may create functions in it, which the matrix shows for real.
            SELECT 'language plpython3u is trusted' FROM pg_language
             WHERE lanname = 'plpython3u' AND lanpltrusted
        """, {"r": nobody}).fetchall()
        assert leaks == []
        # Views are read-only for everyone, even admin (ACL level: auto-updatable or not).
        view_dml = su.execute("""
            SELECT c.relname, r.rolname, p
              FROM pg_class c, pg_roles r, unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) p
             WHERE c.relnamespace = 'segmentation'::regnamespace AND c.relkind = 'v'
               AND r.rolname LIKE 'segmentation\\_%' AND has_table_privilege(r.oid, c.oid, p)
        """).fetchall()
        assert view_dml == []


def _planted_library() -> Path:
    """A library directory whose ``segmentation`` package announces that it ran."""
    base = Path(tempfile.mkdtemp(prefix=f"seg-planted-{PID}-", dir="/var/tmp"))
    pkg = base / __version__ / "segmentation"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('planted code ran')\n")
    for p in (base, base / __version__, pkg, pkg / "__init__.py"):
        p.chmod(0o755)  # the server runs as another OS user
    return base


def test_only_a_superuser_may_redirect_the_python_library(world: World) -> None:
    """SET segmentation.python_lib_dir would load any code as the server's OS user."""
    planted = _planted_library()
    try:
        # A superuser may (and the planted package is reachable: the check is meaningful).
        with psycopg.connect(world.dsn, autocommit=True) as su:
            su.execute("SELECT set_config('segmentation.python_lib_dir', %s, false)",
                       (str(planted),))
            with pytest.raises(psycopg.Error) as err:
                su.execute("SELECT segmentation.python_runtime()")
            assert "planted code ran" in str(err.value)
        for role in ("reader", "app", "admin"):
            dsn = server_dsn(world.dbname, user=world.roles[role])
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SELECT set_config('segmentation.python_lib_dir', %s, false)",
                          (str(planted),))
                with pytest.raises(psycopg.Error) as err:
                    c.execute("SELECT segmentation.python_runtime()")
                assert err.value.sqlstate == "SG011", (role, str(err.value))
                assert err.value.diag.message_primary.startswith(
                    "segmentation: segmentation.python_lib_dir was changed"), str(err.value)
                assert "planted code ran" not in str(err.value)
                assert err.value.diag.message_hint
                health = c.execute("SELECT segmentation.health()").fetchone()[0]
                runtime = health["components"]["python_runtime"]
                assert (health["status"], runtime["sqlstate"]) == ("unhealthy", "SG011")
                c.execute("RESET segmentation.python_lib_dir")
                assert c.execute("SELECT segmentation.ready()").fetchone()[0] is True
    finally:
        for p in sorted(planted.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        planted.rmdir()
