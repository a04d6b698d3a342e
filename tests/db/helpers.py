"""Helpers for database tests: populations from the project's generator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import psycopg
from pytest_postgresql.janitor import DatabaseJanitor
from segmentation_loader.generator import simulate, write_population

from tests.conftest import server_dsn, set_library_dir

AS_OF = date(2026, 6, 30)


def load_population(conn: psycopg.Connection, game_id: str = "g1", players: int = 3000,
                    seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Write a synthetic population (labels go to segmentation_lab.planted_labels)."""
    population = simulate(players, seed=seed, as_of=AS_OF, **kwargs)
    return write_population(conn, game_id, population)


def calibrate(conn: psycopg.Connection, game_id: str = "g1", **kwargs: Any) -> dict[str, Any]:
    args = ", ".join(f"{k} => %({k})s" for k in kwargs)
    sql = "SELECT segmentation.calibrate_taxonomy(%(g)s, as_of => %(as_of)s" + (
        f", {args})" if args else ")")
    return conn.execute(sql, {"g": game_id, "as_of": AS_OF, **kwargs}).fetchone()[0]


def planted_labels(conn: psycopg.Connection, game_id: str) -> dict[str, str]:
    return dict(conn.execute("SELECT player_id, archetype FROM segmentation_lab.planted_labels"
                             " WHERE game_id = %s", (game_id,)).fetchall())


@contextmanager
def cloned_database(server: Any, name: str) -> Iterator[tuple[str, psycopg.Connection]]:
    """A module-scoped clone of the template the loader installed: (dsn, autocommit conn).

    ``server`` is the ``segmentation_server`` fixture; the clone is dropped afterwards.
    """
    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port, dbname=name,
                              template_dbname=server.template_dbname, password=server.password)
    with janitor:
        dsn = server_dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            set_library_dir(conn)
            yield dsn, conn
