"""Foundation: the loader installs a working system into a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from segmentation import __version__
from segmentation_loader import install, migrate

from tests.conftest import LIB_DIR, server_dsn

pytestmark = pytest.mark.db


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segmentation_loader.cli", *args],
                          capture_output=True, text=True, check=False, env=env)


def _schema_dump(dsn: str) -> str:
    out = subprocess.run(["pg_dump", "--schema-only", "--schema=segmentation", "-d", dsn],
                         capture_output=True, text=True, check=True).stdout
    # \restrict lines carry a random key per dump.
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict")))


def test_health_reports_runtime_versions(conn: psycopg.Connection) -> None:
    health = conn.execute("SELECT segmentation.health()").fetchone()[0]
    assert health["status"] == "healthy"
    assert health["version"] == __version__
    runtime = health["components"]["python_runtime"]
    assert runtime["numpy"].startswith("2.")
    assert runtime["scikit_learn"] == "1.9.1"
    assert runtime["lib_dir"] == str(LIB_DIR / __version__)
    probes = conn.execute("SELECT segmentation.ready(), segmentation.live()").fetchone()
    assert probes == (True, True)


def test_server_python_is_isolated_from_site_packages(conn: psycopg.Connection) -> None:
    conn.execute("SELECT segmentation.python_runtime()")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("DO LANGUAGE plpython3u $$ import sys, numpy; "
                 "plpy.notice(repr((sys.path, numpy.__file__))) $$")
    sys_path, numpy_file = eval(notices[-1])  # a repr we produced ourselves
    assert sys_path[0] == str(LIB_DIR / __version__)
    assert not any("site-packages" in p or "dist-packages" in p for p in sys_path)
    assert numpy_file.startswith(str(LIB_DIR / __version__))


def test_install_twice_changes_nothing(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO segmentation.player_activity "
                 "VALUES ('g', 'p1', '2026-01-01', '{\"sessions\": 2}')")
    before = _schema_dump(dsn)
    install.install(dsn, lib_base=LIB_DIR)
    after = _schema_dump(dsn)
    assert before == after
    assert conn.execute("SELECT count(*) FROM segmentation.player_activity").fetchone()[0] == 1


def test_install_leaves_no_session_behind(bare_db: psycopg.Connection, bare_dsn: str) -> None:
    """A loader connection left open (yoyo's, until garbage collection) made a later
    CREATE DATABASE ... TEMPLATE of the database fail with 55006."""
    install.install(bare_dsn, lib_base=LIB_DIR)
    migrate.applied(bare_dsn)
    install.status(bare_dsn)
    with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> %s",
            (bare_db.info.dbname, bare_db.info.backend_pid)).fetchone()[0]
    assert left == 0


def test_fresh_install_via_cli_then_status(bare_dsn: str) -> None:
    result = _cli("status", "--dsn", bare_dsn)
    assert result.returncode != 0
    assert "not installed" in result.stderr
    assert "Traceback" not in result.stderr

    result = _cli("install", "--dsn", bare_dsn, "--lib-dir", str(LIB_DIR))
    assert result.returncode == 0, result.stderr
    result = _cli("status", "--dsn", bare_dsn)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["sql_version"] == __version__
    assert status["migrations"] == ["0001_initial", "0002_memberships_fillfactor",
                                    "0003_segment_transition_counts", "0004_window_cache",
                                    "0005_window_cache_as_of_day",
                                    "0006_window_cache_partitions", "0007_segment_totals",
                                    "0008_activity_changes_player_index"]
    assert status["python_runtime"]["scikit_learn"] == "1.9.1"


def test_missing_library_reports_unhealthy(conn: psycopg.Connection) -> None:
    conn.execute("SET segmentation.python_lib_dir = '/nonexistent/segmentation'")
    health = conn.execute("SELECT segmentation.health()").fetchone()[0]
    assert health["status"] == "unhealthy"
    runtime = health["components"]["python_runtime"]
    assert "missing" in runtime["error"]
    assert runtime["sqlstate"] == "SG011"
    assert conn.execute("SELECT segmentation.ready()").fetchone()[0] is False


def test_version_mismatch_in_open_session_fails_cleanly(conn: psycopg.Connection) -> None:
    conn.execute("SELECT segmentation.python_runtime()")
    # Simulate an upgrade while this session keeps the old library loaded.
    conn.execute("DO LANGUAGE plpython3u $$ GD['segmentation.version'] = '0.0.1' $$")
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT segmentation.python_runtime()")
    assert err.value.sqlstate == "SG010"
    # Raised in the caller's frame, not relayed through SPI ("plpy.SPIError: plpy.Error: ...").
    assert err.value.diag.message_primary == (
        "segmentation: the library was upgraded from 0.0.1 to"
        f" {__version__} while this session was open")
    assert "Reconnect" in (err.value.diag.message_hint or "")
    # The loaded library itself is left alone: once the SQL in place is again that of the
    # loaded version (here: the simulation undone, as after a rolled-back install), its
    # functions work in this same session.
    conn.execute("DO LANGUAGE plpython3u $$ GD['segmentation.version'] = '%s' $$"
                 % __version__)
    assert conn.execute("SELECT segmentation.python_runtime()").fetchone()[0]["package"] == (
        __version__)


def test_settings_view_and_validation(dsn: str, conn: psycopg.Connection) -> None:
    dbname = conn.info.dbname
    conn.execute(f'ALTER DATABASE "{dbname}" SET segmentation.min_player_population = 1000')
    with psycopg.connect(dsn, autocommit=True) as c2:
        row = c2.execute("SELECT setting, source, is_valid FROM segmentation.settings "
                         "WHERE name = 'segmentation.min_player_population'").fetchone()
        assert row == ("1000", "database", True)
        assert c2.execute("SELECT segmentation.setting_value("
                          "'segmentation.min_player_population')").fetchone()[0] == 1000
        c2.execute("SET segmentation.variance_explained_threshold = 1.5")
        row = c2.execute("SELECT source, is_valid FROM segmentation.settings "
                         "WHERE name = 'segmentation.variance_explained_threshold'").fetchone()
        assert row == ("session or configuration file", False)
        with pytest.raises(psycopg.Error) as err:
            c2.execute("SELECT segmentation.setting_value("
                       "'segmentation.variance_explained_threshold')")
        assert err.value.sqlstate == "SG020"
        assert err.value.diag.message_hint


def test_defaults_match_the_deployment_guide(conn: psycopg.Connection) -> None:
    rows = dict(conn.execute("SELECT name, setting FROM segmentation.settings").fetchall())
    assert rows["segmentation.min_player_population"] == "500"
    assert rows["segmentation.variance_explained_threshold"] == "0.70"
    assert rows["segmentation.default_lookback_days"] == "90"
    assert rows["segmentation.ai_optimized_segment_count"] == "7"
    assert rows["segmentation.max_concurrent_categorizations"] == "100"
    assert rows["segmentation.cache_ttl_seconds"] == "300"


def test_every_table_and_column_has_a_comment(conn: psycopg.Connection) -> None:
    missing = conn.execute("""
        SELECT c.relname || coalesce('.' || a.attname, '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = 'segmentation' AND c.relkind IN ('r', 'v', 'm')
           AND c.relname NOT LIKE '\\_yoyo%' AND c.relname <> 'yoyo_lock'
           AND ((a.attname IS NULL AND obj_description(c.oid, 'pg_class') IS NULL)
                OR (a.attname IS NOT NULL AND col_description(c.oid, a.attnum) IS NULL))
    """).fetchall()
    assert missing == []


def test_uninstall_keeps_data_unless_asked(dsn: str, conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO segmentation.player_activity VALUES ('g', 'p1', '2026-01-01', '{}')")
    install.uninstall(dsn)
    assert conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = "
                        "'segmentation'::regnamespace").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM segmentation.player_activity").fetchone()[0] == 1
    install.install(dsn, lib_base=LIB_DIR)
    assert conn.execute("SELECT segmentation.version()").fetchone()[0] == __version__
    install.uninstall(dsn, drop_data=True)
    assert conn.execute("SELECT to_regnamespace('segmentation')").fetchone()[0] is None


def test_status_without_server_says_what_to_do() -> None:
    result = _cli("status", "--dsn", server_dsn("postgres", port=1))
    assert result.returncode == 1
    assert "cannot connect" in result.stderr and "hint:" in result.stderr


def test_install_into_database_owned_by_an_application_role(conn: psycopg.Connection) -> None:
    owner, dbname = f"seg_owner_{os.getpid()}", f"seg_owned_{os.getpid()}"
    conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
    conn.execute(f"DROP ROLE IF EXISTS {owner}")
    conn.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER")
    conn.execute(f"CREATE DATABASE {dbname} OWNER {owner}")
    try:
        install.install(server_dsn(dbname), lib_base=LIB_DIR)
        with psycopg.connect(server_dsn(dbname, user=owner), autocommit=True) as app:
            # Owning the database grants nothing inside the segmentation schema ...
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SELECT segmentation.health()")
            # ... and an untrusted language stays out of reach of non-superusers.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("CREATE FUNCTION public.f() RETURNS int LANGUAGE plpython3u"
                            " AS 'return 1'")
        conn.execute(f"GRANT segmentation_app TO {owner}")
        with psycopg.connect(server_dsn(dbname, user=owner), autocommit=True) as app:
            assert app.execute("SELECT segmentation.health()").fetchone()[0]["status"] == "healthy"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("SELECT segmentation.calibrate_taxonomy('g')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("INSERT INTO segmentation.game_behavioral_taxonomy (game_id)"
                            " VALUES ('g')")
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        conn.execute(f"DROP OWNED BY {owner}")
        conn.execute(f"DROP ROLE IF EXISTS {owner}")


def test_metrics_view_counts_calls_and_runs(conn: psycopg.Connection) -> None:
    tracked = conn.execute("SHOW track_functions").fetchone()[0] != "none"
    for _ in range(3):
        conn.execute("SELECT segmentation.health()")
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT name, calls, mean_ms, note FROM segmentation.metrics"
                        " WHERE scope = 'function'").fetchall()
    by_name = {r[0]: r for r in rows}
    assert {"calibrate_taxonomy", "categorize_player", "categorize_all", "health"} <= set(by_name)
    assert not any(name.startswith("_") for name in by_name)
    if tracked:
        assert by_name["health"][1] >= 3 and by_name["health"][2] > 0
    else:
        assert "track_functions" in by_name["health"][3]


def test_database_errors_reach_the_caller_as_ours_with_every_field(
        conn: psycopg.Connection) -> None:
    """An error met through SPI inside one of our functions - a constraint, or an SG code
    raised by a nested PL/pgSQL call - reaches the caller as ``segmentation: <message>``
    with its own SQLSTATE, detail, hint and constraint, not as ``spiexceptions.X: ...``
    or ``plpy.SPIError: ...`` (where a custom SQLSTATE used to become XX000 in the run
    log)."""
    conn.execute("CREATE TEMP TABLE t (x int CONSTRAINT t_x_positive CHECK (x > 0))")
    conn.execute(
        "CREATE FUNCTION pg_temp.relay(statement text) RETURNS int LANGUAGE plpython3u AS $$\n"
        "plpy.execute('SELECT segmentation._python_bootstrap()')\n"
        "api = GD['segmentation.api']\n"
        "@api.reports_errors\n"
        "def run(plpy):\n"
        "    plpy.execute(statement)\n"
        "return run(plpy)\n$$")
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        conn.execute("SELECT pg_temp.relay('INSERT INTO pg_temp.t VALUES (-1)')")
    diag = err.value.diag
    assert diag.message_primary == (
        'segmentation: new row for relation "t" violates check constraint "t_x_positive"')
    assert diag.message_detail == "Failing row contains (-1)."
    assert (diag.table_name, diag.constraint_name) == ("t", "t_x_positive")

    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT pg_temp.relay($q$DO $d$ BEGIN RAISE EXCEPTION 'nested problem'"
                     " USING ERRCODE = 'SG020', DETAIL = 'the detail', HINT = 'the hint';"
                     " END $d$$q$)")
    assert err.value.sqlstate == "SG020"
    diag = err.value.diag
    assert diag.message_primary == "segmentation: nested problem"
    assert (diag.message_detail, diag.message_hint) == ("the detail", "the hint")


def test_native_build_is_skipped_kept_or_withdrawn(tmp_path, monkeypatch) -> None:
    """The loader builds the native library once per source, says why when it cannot,
    and leaves no library of an older build behind a failed compile."""
    from segmentation_loader import library

    said: list[str] = []
    built = library.build_native(tmp_path, log=said.append)
    assert built == tmp_path / library.NATIVE_LIBRARY and built.exists()
    assert any(line.startswith("built ") for line in said)
    said.clear()
    assert library.build_native(tmp_path, log=said.append) == built
    assert said == []  # same source, flags and headers: not rebuilt

    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    (tmp_path / ".native.sha256").write_text("an older build\n")
    assert library.build_native(tmp_path, log=said.append) is None
    assert not built.exists()
    assert "the compiler failed" in said[-1]

    monkeypatch.delenv("CC")
    monkeypatch.setenv("PG_CONFIG", "false")  # no server headers
    said.clear()
    assert library.build_native(tmp_path, log=said.append) is None
    assert "server headers" in said[-1] and "PL/Python" in said[-1]
