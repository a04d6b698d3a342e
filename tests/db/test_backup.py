"""Backup and restore with pg_dump / pg_restore (issue 7); the procedure is in
docs/operations.md.

A custom-format dump of the whole database holds everything the system needs: the
plpython3u extension, the tables with their identity sequences, the yoyo bookkeeping
tables (so the restored database knows which migrations it has), the functions,
views and materialized views, the per-game feature sources (a regclass column, dumped
as a qualified name) and, unless left out, owners and grants. What it does not hold:
the roles (cluster-wide), database-level settings such as segmentation.python_lib_dir
(only with ``pg_dump --create``) and the server-side library on disk. Hence: restore,
then ``segmentation install``, which re-provisions the library, sets the library
directory, re-applies functions, ownership and grants and applies no migration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from segmentation_loader import install, migrate

from tests.conftest import LIB_DIR, server_dsn
from tests.db.helpers import AS_OF, calibrate, load_population
from tests.db.test_faults import Cluster, own_cluster

__all__ = ["own_cluster"]  # the throwaway-cluster fixture of test_faults, used here too

pytestmark = pytest.mark.db

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PLAYERS = 2000
TABLES = {
    "player_activity": "game_id, player_id, activity_date",
    "feature_sources": "game_id",
    "game_behavioral_taxonomy": "taxonomy_id",
    "behavioral_axes": "taxonomy_id, axis_index",
    "segment_definitions": "taxonomy_id, segment_id",
    "player_segment_memberships": "membership_id",
    "runs": "run_id",
    "segment_transitions": "game_id, run_id, from_taxonomy_id, from_segment_id,"
                           " to_taxonomy_id, to_segment_id",
}
ANSWER = ("SELECT taxonomy_id, taxonomy_version, segment_id, membership, memberships,"
          " axis_scores, anomaly_score, is_anomaly"
          " FROM segmentation.categorize_player(%s, %s, %s)")
FEATURES = """
CREATE TABLE public.g2_features AS
SELECT player_id,
       count(*)::int AS active_days,
       sum((metrics ->> 'sessions')::float8) AS sessions,
       sum(coalesce((metrics ->> 'minutes_played')::float8, 0)) AS minutes,
       sum(coalesce((metrics ->> 'spend_usd')::float8, 0)) AS spend,
       sum(coalesce((metrics ->> 'pvp_matches')::float8, 0)) AS pvp,
       bool_or(coalesce((metrics ->> 'friends_invited')::float8, 0) > 0) AS invites
  FROM segmentation.player_activity WHERE game_id = 'g1' GROUP BY player_id
"""


def tool(name: str) -> str:
    """The PostgreSQL 15 client tool (matching the server), else the one on PATH."""
    path = PG_BIN / name
    return str(path) if path.exists() else name


def checksums(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    out = {}
    for table, key in TABLES.items():
        order = ", ".join(f"t.{c.strip()}" for c in key.split(","))
        out[table] = conn.execute(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {}), ''))"
            " FROM segmentation.{} t").format(sql.SQL(order), sql.Identifier(table))).fetchone()
    return out


def summary_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT * FROM segmentation.segment_summary"
                        " ORDER BY taxonomy_id, segment_id").fetchall()


def history(conn: psycopg.Connection, game: str) -> list[tuple]:
    return conn.execute("SELECT * FROM segmentation.taxonomy_history(%s)", (game,)).fetchall()


@dataclass
class Source:
    """A populated database, what it answers, and its custom-format dump."""

    dump: Path
    answers: dict[tuple[str, str], tuple]
    checksums: dict[str, tuple[int, str]]
    summary: list[tuple]
    histories: dict[str, list[tuple]]


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    """Two taxonomy versions of an activity game, one feature-source game, memberships
    with history and both materialized views refreshed; dumped with pg_dump -Fc."""
    name = f"seg_backup_src_{os.getpid()}"
    workdir = Path(tempfile.mkdtemp(prefix=f"seg-backup-{os.getpid()}-"))
    with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = server_dsn(name)
        install.install(dsn, lib_base=LIB_DIR)
        with psycopg.connect(dsn, autocommit=True) as conn:
            load_population(conn, "g1", players=PLAYERS, seed=6)
            calibrate(conn, "g1")
            conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
            calibrate(conn, "g1", n_segments=5)
            conn.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
            conn.execute(FEATURES)
            conn.execute("SELECT segmentation.register_feature_source('g2',"
                         " 'public.g2_features')")
            calibrate(conn, "g2")
            conn.execute("SELECT segmentation.categorize_all('g2', %s)", (AS_OF,))
            players = [r[0] for r in conn.execute(
                "SELECT player_id FROM segmentation.player_activity WHERE game_id = 'g1'"
                " GROUP BY player_id ORDER BY md5(player_id) LIMIT 20").fetchall()]
            answers = {(g, p): conn.execute(ANSWER, (g, p, AS_OF)).fetchone()
                       for g in ("g1", "g2") for p in players}
            expected = Source(workdir / "segmentation.dump", answers, checksums(conn),
                              summary_rows(conn), {g: history(conn, g) for g in ("g1", "g2")})
        subprocess.run([tool("pg_dump"), "--format=custom", "--file", str(expected.dump),
                        "--dbname", dsn], check=True, capture_output=True, text=True)
        yield expected
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture
def target() -> Iterator[str]:
    """Name of an empty database on the shared server to restore into, dropped afterwards."""
    name = f"seg_restored_{os.getpid()}"
    with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
            sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(server_dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def pg_restore(dump: Path, dsn: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("pg_restore"), "--exit-on-error", *options, "--dbname", dsn,
                           str(dump)], capture_output=True, text=True, check=False)


def restore_and_verify(source: Source, dsn: str, *options: str) -> None:
    """The documented procedure (restore, then segmentation install), then the checks."""
    proc = pg_restore(source.dump, dsn, *options)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # the yoyo tables came along
    assert migrate.applied(dsn) == ["0001_initial", "0002_memberships_fillfactor",
                                     "0003_segment_transition_counts", "0004_window_cache",
                                     "0005_window_cache_as_of_day",
                                     "0006_window_cache_partitions", "0007_segment_totals",
                                     "0008_activity_changes_player_index"]
    report = install.install(dsn, lib_base=LIB_DIR)
    assert report.migrations_applied == []

    with psycopg.connect(dsn, autocommit=True) as restored:
        assert checksums(restored) == source.checksums
        # The materialized views are computed again on restore (and by install): their
        # float sums may differ in the last bits (rows come back in another order).
        summary = summary_rows(restored)
        assert len(summary) == len(source.summary)
        for got, want in zip(summary, source.summary, strict=True):
            for a, b in zip(got, want, strict=True):
                assert a == (pytest.approx(b, rel=1e-12) if isinstance(b, float) else b)
        for game, rows in source.histories.items():
            assert history(restored, game) == rows
        # The regclass came back as the restored table's new oid.
        assert restored.execute("SELECT game_id, source = 'public.g2_features'::regclass"
                                " FROM segmentation.feature_sources").fetchall() == [
            ("g2", True)]
        owners = restored.execute(
            "SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relkind = 'm'"
            " AND relnamespace = 'segmentation'::regnamespace ORDER BY 1").fetchall()
        assert owners == [("segment_summary", "segmentation_admin"),
                          ("segment_transitions", "segmentation_admin")]
        assert restored.execute(
            "SELECT has_table_privilege('segmentation_reader',"
            " 'segmentation.player_current_segment', 'SELECT'),"
            " has_function_privilege('segmentation_app',"
            " 'segmentation.categorize_player(text, text, date)', 'EXECUTE'),"
            " has_function_privilege('segmentation_app',"
            " 'segmentation.calibrate_taxonomy(text, integer, integer, date, boolean)',"
            " 'EXECUTE')").fetchone() == (True, True, False)

        health = restored.execute("SELECT segmentation.health()").fetchone()[0]
        assert health["status"] == "healthy"
        assert {t["game_id"] for t in health["components"]["taxonomies"]["active"]} == {
            "g1", "g2"}
        for (game, player), answer in source.answers.items():
            again = restored.execute(ANSWER, (game, player, AS_OF)).fetchone()
            assert again[:3] == answer[:3] and again[7] == answer[7]
            for j in (3, 4, 5, 6):
                assert again[j] == pytest.approx(answer[j], abs=1e-12)
        for game in ("g1", "g2"):
            result = restored.execute("SELECT segmentation.categorize_all(%s, %s)",
                                      (game, AS_OF)).fetchone()[0]
            assert result["players"] == result["unchanged"] == PLAYERS
        # Identity sequences were restored: new rows do not collide with restored ones.
        new = calibrate(restored, "g1")
        assert new["version"] == 3
        assert new["taxonomy_id"] > max(r[0] for rows in source.histories.values()
                                        for r in rows)


def test_full_restore_on_the_same_server(source: Source, target: str) -> None:
    """Owners and grants as dumped: the roles exist on this server."""
    restore_and_verify(source, server_dsn(target))


def test_portable_restore_on_a_new_server_without_the_roles(source: Source,
                                                            own_cluster: Cluster) -> None:
    """A new server has none of the roles: a full restore stops at the first owner;
    without owners and grants it goes through and install re-creates them."""
    with psycopg.connect(own_cluster.dsn("postgres"), autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE"
                             " 'segmentation\\_%'").fetchone()[0] == 0
        admin.execute("CREATE DATABASE attempt")
        admin.execute("CREATE DATABASE restored")
    proc = pg_restore(source.dump, own_cluster.dsn("attempt"))
    assert proc.returncode != 0
    assert 'role "segmentation_' in proc.stderr and "does not exist" in proc.stderr
    restore_and_verify(source, own_cluster.dsn("restored"), "--no-owner", "--no-privileges")
