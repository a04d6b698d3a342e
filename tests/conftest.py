"""Shared fixtures: a real PostgreSQL 15 server with plpython3u.

The server is the project-local cluster started by ``make test``
(``scripts/pg-cluster.sh``) or the one ``DATABASE_URL`` points at. A template
database gets the system installed once by the real loader; every test then gets
a fresh clone of it (pytest-postgresql's noproc + template mechanism).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories
from segmentation_loader import install

_url = os.environ.get("DATABASE_URL") or (
    f"postgresql://postgres@localhost:{os.environ.get('SEG_PGPORT', '55432')}/postgres")
_params = conninfo_to_dict(_url)
HOST = str(_params.get("host", "localhost"))
PORT = int(_params.get("port", 5432))
USER = str(_params.get("user", "postgres"))
PASSWORD = _params.get("password")
LIB_DIR = Path(os.environ.get("SEG_LIB_DIR", "/usr/local/lib/segmentation"))


def server_dsn(dbname: str, **overrides: object) -> str:
    params = {"host": HOST, "port": PORT, "user": USER, "dbname": dbname}
    if PASSWORD:
        params["password"] = PASSWORD
    params.update(overrides)
    return make_conninfo(**params)  # type: ignore[arg-type]


def set_library_dir(conn: psycopg.Connection) -> None:
    """Point a cloned database at the tests' library directory: ALTER DATABASE settings
    are not copied by CREATE DATABASE ... TEMPLATE (autocommit connection)."""
    from segmentation_loader.library import DEFAULT_BASE

    if LIB_DIR != DEFAULT_BASE:
        conn.execute(sql.SQL("ALTER DATABASE {} SET segmentation.python_lib_dir = {}").format(
            sql.Identifier(conn.info.dbname), sql.Literal(str(LIB_DIR))))


def _install_template(host: str, port: int, user: str, dbname: str, password: str | None = None,
                      **_: object) -> None:
    install.install(server_dsn(dbname), lib_base=LIB_DIR)


# Per-process database names: several pytest sessions may share one server.
segmentation_server = factories.postgresql_noproc(
    host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=f"seg_test_{os.getpid()}",
    load=[_install_template])
_db = factories.postgresql("segmentation_server")

bare_server = factories.postgresql_noproc(
    host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=f"seg_bare_{os.getpid()}")
bare_db = factories.postgresql("bare_server")


@pytest.fixture
def db(_db: psycopg.Connection) -> psycopg.Connection:
    """The per-test clone. Database-level settings are not cloned from the template, so a
    non-default library directory is set again (the loader sets it on install)."""
    _db.autocommit = True
    set_library_dir(_db)
    return _db


@pytest.fixture
def dsn(db: psycopg.Connection) -> str:
    """libpq DSN of the per-test database that has the system installed."""
    return server_dsn(db.info.dbname)


@pytest.fixture
def bare_dsn(bare_db: psycopg.Connection) -> str:
    """libpq DSN of a per-test database without the system."""
    return server_dsn(bare_db.info.dbname)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the per-test database."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c
