"""Table migrations with yoyo-migrations; its bookkeeping tables live in the
``segmentation`` schema next to the tables they describe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations
from yoyo.backends.base import DatabaseBackend

from segmentation_loader.resources import migrations_dir

SCHEMA = "segmentation"


def yoyo_url(dsn: str) -> str:
    """A yoyo URL for a libpq DSN (URL or key=value); every libpq parameter is
    passed through as a query argument, so sockets and options keep working."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    dbname = params.pop("dbname", "")
    params["schema"] = SCHEMA
    return f"postgresql+psycopg:///{dbname}?{urlencode(params)}"


@contextmanager
def _backend(dsn: str) -> Iterator[DatabaseBackend]:
    """A yoyo backend whose connection is closed on exit.

    yoyo leaves that to garbage collection, and a connection left open to the target
    database makes a later CREATE DATABASE ... TEMPLATE of it fail (55006).
    """
    backend = get_backend(yoyo_url(dsn))
    try:
        yield backend
    finally:
        backend.connection.close()


def apply(dsn: str) -> list[str]:
    """Apply pending migrations under yoyo's lock; return their ids."""
    migrations = read_migrations(str(migrations_dir()))
    with _backend(dsn) as backend, backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def rollback_latest(dsn: str) -> list[str]:
    """Roll back the most recently applied migration; return its id.

    The idempotent SQL layer (views, materialized views, functions, types) depends on
    the tables, so a rollback that drops or changes a table would fail on an installed
    system: it is removed first (tables and data kept). ``segmentation install`` of the
    version that matches the remaining migrations re-creates it.
    """
    from segmentation_loader.install import uninstall  # install imports this module

    migrations = read_migrations(str(migrations_dir()))
    with _backend(dsn) as backend, backend.lock():
        applied = backend.to_rollback(migrations)
        latest = applied[:1]
        if latest:
            uninstall(dsn)
        backend.rollback_migrations(latest)
    return [m.id for m in latest]


def applied(dsn: str) -> list[str]:
    migrations = read_migrations(str(migrations_dir()))
    with _backend(dsn) as backend:
        return [m.id for m in migrations if backend.is_applied(m)]
