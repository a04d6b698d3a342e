"""Upgrades in place and migration rollback (issue 7).

"Version N" is simulated honestly: a copy of the working tree's ``sql/``,
``migrations/`` (without the ones added since, see ``NEW_MIGRATIONS``) and ``plpython/``
whose package says 0.0.9, installed by the loader (run as a separate process that
imports that copy, so the SQL is rendered with 0.0.9 and the library lands in
``<lib>/0.0.9/``). The upgrade is then the working tree's loader installing 0.1.0 over
it, which applies the newer migrations to a populated database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from segmentation import __version__
from segmentation_loader import install, library, migrate
from segmentation_loader.resources import project_root

from tests.conftest import LIB_DIR
from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db

OLD = "0.0.9"
# Migrations the simulated old release does not have; the upgrade applies them.
NEW_MIGRATIONS = ["0002_memberships_fillfactor"]
ALL_MIGRATIONS = ["0001_initial", "0002_memberships_fillfactor",
                  "0003_segment_transition_counts", "0004_window_cache",
                  "0005_window_cache_as_of_day", "0006_window_cache_partitions",
                  "0007_segment_totals", "0008_activity_changes_player_index"]
GAME = "g1"
PLAYERS = 2000
TABLES = {
    "player_activity": "game_id, player_id, activity_date",
    "game_behavioral_taxonomy": "taxonomy_id",
    "behavioral_axes": "taxonomy_id, axis_index",
    "segment_definitions": "taxonomy_id, segment_id",
    "player_segment_memberships": "membership_id",
    "runs": "run_id",
    "feature_sources": "game_id",
}
# segment_transitions as defined before migration 0003 (from the history alone).
OLD_TRANSITIONS = """
WITH h AS (
    SELECT m.game_id, m.run_id, m.valid_from, m.taxonomy_id, m.segment_id,
           lag(m.taxonomy_id) OVER w AS from_taxonomy_id,
           lag(m.segment_id) OVER w AS from_segment_id
      FROM segmentation.player_segment_memberships m
    WINDOW w AS (PARTITION BY m.game_id, m.player_id ORDER BY m.valid_from, m.membership_id)
)
SELECT h.game_id, h.run_id, min(h.valid_from) AS changed_at, h.from_taxonomy_id,
       h.from_segment_id, fs.name AS from_segment_name, h.taxonomy_id AS to_taxonomy_id,
       h.segment_id AS to_segment_id, ts.name AS to_segment_name, count(*) AS players
  FROM h
  LEFT JOIN segmentation.segment_definitions fs
    ON fs.taxonomy_id = h.from_taxonomy_id AND fs.segment_id = h.from_segment_id
  JOIN segmentation.segment_definitions ts
    ON ts.taxonomy_id = h.taxonomy_id AND ts.segment_id = h.segment_id
 GROUP BY h.game_id, h.run_id, h.from_taxonomy_id, h.from_segment_id, fs.name,
          h.taxonomy_id, h.segment_id, ts.name
 ORDER BY game_id, run_id, from_taxonomy_id, from_segment_id, to_segment_id"""
TRANSITIONS = ("SELECT * FROM segmentation.segment_transitions"
               " ORDER BY game_id, run_id, from_taxonomy_id, from_segment_id, to_segment_id")
ANSWER = ("SELECT taxonomy_id, taxonomy_version, segment_id, membership, memberships,"
          " axis_scores, anomaly_score FROM segmentation.categorize_player(%s, %s, %s)")


# segment_summary's counts (fuzzy_size, a float sum, is the fifth column).
SUMMARY = ("SELECT taxonomy_id, segment_id, is_active, players, fuzzy_size, anomalies"
           " FROM segmentation.segment_summary ORDER BY taxonomy_id, segment_id")


def conn_partitions(dsn: str) -> int:
    """Partitions of segmentation.window_cache (one per game with a cache)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_inherits"
                            " WHERE inhparent = 'segmentation.window_cache'::regclass"
                            ).fetchone()[0]


def checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every table's rows in key order."""
    out = {}
    for table, key in TABLES.items():
        out[table] = conn.execute(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {}), ''))"
            " FROM segmentation.{} t").format(sql.SQL(key), sql.Identifier(table))).fetchone()
    return out


@pytest.fixture
def release_dirs() -> Iterator[tuple[Path, Path]]:
    """(home, lib): a 0.0.9 copy of the tree, and a library base dir the server can read.

    The library base gets ``0.0.9/`` and ``0.1.0/`` whose pinned dependencies are
    symlinks to the already provisioned ``LIB_DIR/0.1.0`` (with its marker), so the
    loader skips pip and only copies the ``segmentation`` package of its version.
    """
    library.provision(LIB_DIR, log=lambda _: None)  # normally done by the test template
    deps = library.library_dir(LIB_DIR)
    # Under /var/tmp and world-readable: the server runs as another OS user.
    base = Path(tempfile.mkdtemp(prefix=f"seg-upgrade-{os.getpid()}-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        home = base / "home"
        root = project_root()
        shutil.copytree(root / "sql", home / "sql")
        shutil.copytree(root / "migrations", home / "migrations", ignore=lambda _, names: [
            n for n in names if n.split(".")[0] in NEW_MIGRATIONS])
        shutil.copytree(root / "plpython", home / "plpython",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        init = home / "plpython" / "segmentation" / "__init__.py"
        text = init.read_text()
        assert f'__version__ = "{__version__}"' in text
        init.write_text(text.replace(f'__version__ = "{__version__}"', f'__version__ = "{OLD}"'))
        lib = base / "lib"
        for version in (OLD, __version__):
            target = lib / version
            target.mkdir(parents=True)
            for entry in deps.iterdir():
                # The native library is built per version: each install builds its own.
                if entry.name not in ("segmentation", ".segmentation.new", "__pycache__",
                                      library.NATIVE_LIBRARY, ".native.sha256"):
                    (target / entry.name).symlink_to(entry)
        yield home, lib
    finally:
        shutil.rmtree(base, ignore_errors=True)


def install_old(dsn: str, home: Path, lib: Path) -> None:
    """``segmentation install`` of version 0.0.9: the CLI in a process importing the copy."""
    env = {**os.environ, "SEGMENTATION_HOME": str(home),
           "PYTHONPATH": str(home / "plpython")}
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation_loader.cli", "install", "--dsn", dsn,
         "--lib-dir", str(lib)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"segmentation {OLD} installed" in proc.stdout


def test_upgrade_in_place_keeps_data_and_fences_open_sessions(
        bare_dsn: str, release_dirs: tuple[Path, Path]) -> None:
    home, lib = release_dirs
    install_old(bare_dsn, home, lib)
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT segmentation.version()").fetchone()[0] == OLD
        runtime = conn.execute("SELECT segmentation.python_runtime()").fetchone()[0]
        assert runtime["package"] == OLD and runtime["lib_dir"] == str(lib / OLD)
        load_population(conn, GAME, players=PLAYERS, seed=4)
        calibrate(conn, GAME)
        conn.execute("SELECT segmentation.categorize_all(%s, %s)", (GAME, AS_OF))
        assert conn.execute("SELECT package_version FROM segmentation.game_behavioral_taxonomy"
                            ).fetchone()[0] == OLD
        players = [r[0] for r in conn.execute(
            "SELECT player_id FROM segmentation.player_current_segment ORDER BY md5(player_id)"
            " LIMIT 25").fetchall()]
        before = checksums(conn)
        transitions = conn.execute(TRANSITIONS).fetchall()
        assert sum(r[-1] for r in transitions) == PLAYERS

    # A session that has used the old library and stays open across the upgrade, and
    # one that was open but had not loaded it yet.
    old_session = psycopg.connect(bare_dsn, autocommit=True)
    idle_session = psycopg.connect(bare_dsn, autocommit=True)
    try:
        old_answers = [old_session.execute(ANSWER, (GAME, p, AS_OF)).fetchone()
                       for p in players]

        report = install.install(bare_dsn, lib_base=lib)
        assert report.version == __version__
        assert report.lib_dir == str(lib / __version__)
        assert report.migrations_applied == NEW_MIGRATIONS

        # Its next call fails cleanly, and keeps failing: it never mixes versions.
        for _ in range(2):
            with pytest.raises(psycopg.Error) as err:
                old_session.execute(ANSWER, (GAME, players[0], AS_OF))
            assert err.value.sqlstate == "SG010"
            assert f"from {OLD} to {__version__}" in err.value.diag.message_primary
            assert "Reconnect" in (err.value.diag.message_hint or "")
        health = old_session.execute("SELECT segmentation.health()").fetchone()[0]
        assert health["status"] == "unhealthy"
        assert health["components"]["python_runtime"]["sqlstate"] == "SG010"
        # Nothing loaded before the upgrade: the session simply loads the new library.
        assert idle_session.execute("SELECT segmentation.python_runtime()").fetchone()[0][
            "package"] == __version__
    finally:
        old_session.close()
        idle_session.close()

    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute(TRANSITIONS).fetchall() == transitions
        assert conn.execute("SELECT segmentation.version()").fetchone()[0] == __version__
        stale = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'segmentation'::regnamespace"
            " AND prosrc LIKE %s", (f"%{OLD}%",)).fetchone()[0]
        assert stale == 0  # every function was replaced
        health = conn.execute("SELECT segmentation.health()").fetchone()[0]
        assert health["status"] == "healthy"
        assert health["components"]["python_runtime"]["lib_dir"] == str(lib / __version__)
        new_answers = [conn.execute(ANSWER, (GAME, p, AS_OF)).fetchone() for p in players]
        for old, new in zip(old_answers, new_answers, strict=True):
            assert new[:3] == old[:3]  # taxonomy, version, primary segment
            assert new[3] == pytest.approx(old[3], abs=1e-12)
            assert new[4] == pytest.approx(old[4], abs=1e-12)
            assert new[5] == pytest.approx(old[5], abs=1e-12)
            assert new[6] == pytest.approx(old[6], abs=1e-12)
        result = conn.execute("SELECT segmentation.categorize_all(%s, %s)", (GAME, AS_OF)
                              ).fetchone()[0]
        assert result["players"] == PLAYERS and result["unchanged"] == PLAYERS
        assert result["changed_segment"] == 0 and result["new"] == 0
        assert conn.execute("SELECT reloptions FROM pg_class"
                            " WHERE oid = 'segmentation.player_segment_memberships'::regclass"
                            ).fetchone()[0] == ["fillfactor=50"]
    status = install.status(bare_dsn)
    assert status["sql_version"] == __version__
    assert status["migrations"] == ALL_MIGRATIONS


def test_rollback_of_the_latest_migration_then_reinstall(bare_dsn: str) -> None:
    install.install(bare_dsn, lib_base=LIB_DIR)
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        load_population(conn, GAME, players=800, seed=9)
        calibrate(conn, GAME)

    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        conn.execute("SELECT segmentation.categorize_all(%s, %s)", (GAME, AS_OF))
        before = checksums(conn)
        from_history = conn.execute(OLD_TRANSITIONS).fetchall()
        assert sum(r[-1] for r in from_history) == 800
        summary = conn.execute(SUMMARY).fetchall()
        assert sum(r[3] for r in summary) == 800
    assert conn_partitions(bare_dsn) == 1
    # 0008 puts back the change log's index by game.
    assert migrate.rollback_latest(bare_dsn) == ["0008_activity_changes_player_index"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT to_regclass('segmentation.activity_changes_game_idx')"
                            " IS NOT NULL AND to_regclass('segmentation.activity_changes"
                            "_player_idx') IS NULL").fetchone()[0]
    # 0007 drops only the per-game segment totals.
    assert migrate.rollback_latest(bare_dsn) == ["0007_segment_totals"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT to_regclass('segmentation.segment_totals')"
                            ).fetchone()[0] is None
    # 0006 puts the cache back into one table (empty: the next run rebuilds it).
    assert migrate.rollback_latest(bare_dsn) == ["0006_window_cache_partitions"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid ="
                            " 'segmentation.window_cache'::regclass").fetchone() == ("r",)
        assert conn_partitions(bare_dsn) == 0
    # 0005 drops only the cache's as_of day totals.
    assert migrate.rollback_latest(bare_dsn) == ["0005_window_cache_as_of_day"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'segmentation.window_cache'"
            "::regclass AND attname = 'as_of_totals' AND NOT attisdropped").fetchone()[0] == 0
    # 0004 drops only the window cache and the change log (which the triggers fill:
    # they go with the functions, and come back with the install below).
    assert migrate.rollback_latest(bare_dsn) == ["0004_window_cache"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT to_regclass('segmentation.window_cache')").fetchone()[0] is None
    # 0003 drops only the transition counts ...
    assert migrate.rollback_latest(bare_dsn) == ["0003_segment_transition_counts"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT to_regclass('segmentation.segment_transition_counts')"
                            ).fetchone()[0] is None
    # ... and applied to a populated database it counts the existing history.
    assert install.install(bare_dsn, lib_base=LIB_DIR).migrations_applied == [
        "0003_segment_transition_counts", "0004_window_cache", "0005_window_cache_as_of_day",
        "0006_window_cache_partitions", "0007_segment_totals",
        "0008_activity_changes_player_index"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert conn.execute(TRANSITIONS).fetchall() == from_history
        # 0007 counted the current memberships: the summary reads as before.
        again = conn.execute(SUMMARY).fetchall()
        assert [r[:4] + r[5:] for r in again] == [r[:4] + r[5:] for r in summary]
        for got, want in zip(again, summary, strict=True):
            assert got[4] == pytest.approx(want[4], rel=1e-12)
    assert migrate.rollback_latest(bare_dsn) == ["0008_activity_changes_player_index"]
    assert migrate.rollback_latest(bare_dsn) == ["0007_segment_totals"]
    assert migrate.rollback_latest(bare_dsn) == ["0006_window_cache_partitions"]
    assert migrate.rollback_latest(bare_dsn) == ["0005_window_cache_as_of_day"]
    assert migrate.rollback_latest(bare_dsn) == ["0004_window_cache"]
    assert migrate.rollback_latest(bare_dsn) == ["0003_segment_transition_counts"]
    # 0002 only resets a storage parameter.
    assert migrate.rollback_latest(bare_dsn) == ["0002_memberships_fillfactor"]
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT reloptions FROM pg_class"
                            " WHERE oid = 'segmentation.player_segment_memberships'::regclass"
                            ).fetchone()[0] is None
    # Rolling back 0001 drops every table and its data. The views and functions that
    # depend on the tables are removed first by the loader.
    assert migrate.rollback_latest(bare_dsn) == ["0001_initial"]
    assert migrate.applied(bare_dsn) == []
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'segmentation'::regnamespace"
            " AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1").fetchall()
        assert [r[0] for r in left] == ["_yoyo_log", "_yoyo_migration", "_yoyo_version",
                                        "yoyo_lock"]
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace ="
                            " 'segmentation'::regnamespace").fetchone()[0] == 0

    report = install.install(bare_dsn, lib_base=LIB_DIR)
    assert report.migrations_applied == ALL_MIGRATIONS
    assert migrate.applied(bare_dsn) == ALL_MIGRATIONS
    with psycopg.connect(bare_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM segmentation.player_activity").fetchone()[0] == 0
        assert conn.execute("SELECT segmentation.health()").fetchone()[0]["status"] == "healthy"
        load_population(conn, GAME, players=800, seed=9)
        assert calibrate(conn, GAME)["version"] == 1
        result = conn.execute("SELECT segmentation.categorize_all(%s, %s)", (GAME, AS_OF)
                              ).fetchone()[0]
        assert result["players"] == 800
