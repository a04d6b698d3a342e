"""Install, upgrade, inspect and remove Unified Segmentation in one database."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from segmentation import __version__

from segmentation_loader import library, migrate
from segmentation_loader.errors import LoaderError
from segmentation_loader.resources import sql_dir

ROLES = ("segmentation_reader", "segmentation_app", "segmentation_admin")
VERSION_TOKEN = "@VERSION@"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise LoaderError(
            f"cannot connect to the database: {str(exc).strip()}",
            "pass --dsn or set DATABASE_URL, e.g. postgresql://user@host:5432/dbname",
        ) from exc


def _ensure_plpython(conn: psycopg.Connection) -> None:
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS plpython3u")
    except psycopg.errors.UndefinedFile as exc:
        raise LoaderError(
            "PL/Python (plpython3u) is not installed on the database server",
            "on Debian/Ubuntu: apt-get install postgresql-plpython3-15 "
            "(match your server's major version), then run install again",
        ) from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise LoaderError(
            "creating the plpython3u extension needs a superuser",
            "run install as a superuser (it is an untrusted language), "
            "or ask your DBA to run CREATE EXTENSION plpython3u first",
        ) from exc


def server_python_version(conn: psycopg.Connection) -> str:
    """major.minor of the Python embedded in the server (via a temporary function)."""
    with conn.transaction():
        conn.execute(
            "CREATE OR REPLACE FUNCTION pg_temp.segmentation_pyver() RETURNS text "
            "LANGUAGE plpython3u AS $$ import sys; return '%d.%d' % sys.version_info[:2] $$"
        )
        row = conn.execute("SELECT pg_temp.segmentation_pyver()").fetchone()
    assert row is not None
    return str(row[0])


def _ensure_roles(conn: psycopg.Connection, log: Log) -> None:
    for role in ROLES:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            log(f"created role {role}")
    # Admins can do what apps and readers can.
    conn.execute("GRANT segmentation_reader TO segmentation_app")
    conn.execute("GRANT segmentation_app TO segmentation_admin")


def sql_files() -> list[Path]:
    return sorted(sql_dir().glob("*.sql"))


def render(path: Path) -> str:
    return path.read_text().replace(VERSION_TOKEN, __version__)


@dataclass
class InstallReport:
    version: str
    lib_dir: str | None
    migrations_applied: list[str] = field(default_factory=list)
    sql_files: list[str] = field(default_factory=list)
    server_python: str = ""
    # Language of categorize_player(game_id, features): "c" or "plpython3u".
    feature_scorer: str = ""


def install(dsn: str, *, lib_base: Path | None = None, provision_library: bool = True,
            log: Log = _quiet) -> InstallReport:
    """Install or upgrade in place. Idempotent: a second run changes nothing."""
    with connect(dsn, autocommit=True) as conn:
        major = conn.info.server_version // 10000
        if major < 15:
            raise LoaderError(f"PostgreSQL {major} is not supported", "use PostgreSQL 15 or newer")
        _ensure_plpython(conn)
        pyver = server_python_version(conn)
        lib_dir: Path | None = None
        if provision_library:
            here = "%d.%d" % sys.version_info[:2]
            if pyver != here:
                raise LoaderError(
                    f"the server runs Python {pyver} but the loader runs Python {here}",
                    f"run the loader with a Python {pyver} environment (binary wheels must "
                    "match the server's Python), or use --no-library and provision it yourself",
                )
            base = lib_base or library.DEFAULT_BASE
            lib_dir = library.provision(base, pg_major=major, log=log)
            if lib_base is not None and lib_base != library.DEFAULT_BASE:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET segmentation.python_lib_dir = {}").format(
                        sql.Identifier(conn.info.dbname), sql.Literal(str(lib_base))))
                conn.execute("SELECT set_config('segmentation.python_lib_dir', %s, false)",
                             (str(lib_base),))
        with conn.transaction():
            conn.execute("CREATE SCHEMA IF NOT EXISTS segmentation")
    applied = migrate.apply(dsn)
    for mid in applied:
        log(f"applied migration {mid}")
    files = []
    with connect(dsn) as conn, conn.transaction():
        _ensure_roles(conn, log)
        for path in sql_files():
            conn.execute(render(path).encode())
            files.append(path.name)
        scorer = conn.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.oid = 'segmentation.categorize_player(text, jsonb)'::regprocedure"
        ).fetchone()[0]  # type: ignore[index]
    log(f"installed segmentation {__version__} ({len(files)} SQL files)")
    return InstallReport(__version__, str(lib_dir) if lib_dir else None, applied, files, pyver,
                         scorer)


def status(dsn: str) -> dict[str, Any]:
    """What is installed; raises LoaderError when the system is not installed."""
    with connect(dsn, autocommit=True) as conn:
        installed = conn.execute(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'segmentation' AND p.proname = 'version'").fetchone()
        if not installed:
            raise LoaderError(
                f"Unified Segmentation is not installed in database {conn.info.dbname!r}",
                "run: segmentation install --dsn ...",
            )
        dbname = conn.info.dbname
        sql_version = conn.execute("SELECT segmentation.version()").fetchone()[0]  # type: ignore[index]
        try:
            runtime = conn.execute("SELECT segmentation.python_runtime()").fetchone()[0]  # type: ignore[index]
        except psycopg.Error as exc:
            runtime = {"status": "unhealthy", "error": exc.diag.message_primary,
                       "hint": exc.diag.message_hint}
        active = conn.execute(
            "SELECT game_id, taxonomy_id, version, calibrated_at::text, population, n_segments "
            "FROM segmentation.game_behavioral_taxonomy WHERE is_active ORDER BY game_id"
        ).fetchall()
    return {
        "database": dbname,
        "sql_version": sql_version,
        "loader_version": __version__,
        "migrations": migrate.applied(dsn),
        "python_runtime": runtime,
        "active_taxonomies": [
            dict(zip(("game_id", "taxonomy_id", "version", "calibrated_at", "population",
                      "n_segments"), r, strict=True)) for r in active
        ],
    }


def uninstall(dsn: str, *, drop_data: bool = False, log: Log = _quiet) -> None:
    """Remove functions and views; tables and their data only with ``drop_data``."""
    with connect(dsn) as conn, conn.transaction():
        if drop_data:
            conn.execute("DROP SCHEMA IF EXISTS segmentation CASCADE")
            conn.execute("DROP SCHEMA IF EXISTS segmentation_lab CASCADE")
            conn.execute("DROP SCHEMA IF EXISTS segmentation_ext CASCADE")
            log("dropped schema segmentation with all data")
            return
        for kind, objs in (
            ("MATERIALIZED VIEW", "SELECT c.oid::regclass::text FROM pg_class c "
                                  "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                  "WHERE n.nspname = 'segmentation' AND c.relkind = 'm'"),
            ("VIEW", "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n "
                     "ON n.oid = c.relnamespace WHERE n.nspname = 'segmentation' "
                     "AND c.relkind = 'v'"),
            ("FUNCTION", "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                         "ON n.oid = p.pronamespace WHERE n.nspname = 'segmentation'"),
            ("TYPE", "SELECT t.oid::regtype::text FROM pg_type t JOIN pg_namespace n "
                     "ON n.oid = t.typnamespace WHERE n.nspname = 'segmentation' "
                     "AND t.typtype = 'c' AND NOT EXISTS (SELECT 1 FROM pg_class c "
                     "WHERE c.oid = t.typrelid AND c.relkind <> 'c')"),
        ):
            for (name,) in conn.execute(objs).fetchall():
                # names come from regclass/regprocedure/regtype output: already quoted
                conn.execute(f"DROP {kind} IF EXISTS {name} CASCADE")
        log("removed segmentation functions and views; tables and data kept")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
