"""Serving from a hot standby: categorize_player on a streaming replica.

The C categorize_player(game, features) learns of a re-activation through the relcache
invalidation its trigger queues on the primary, which reaches the standby in the commit
record; categorize_player(game, player_id) finds the window cache (unlogged, so empty
on a standby) out of reach and reads the player's window.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb
from segmentation_loader import install

from tests.conftest import LIB_DIR
from tests.db.clusters import Cluster, streaming_standby, throwaway_cluster, wait_for_replay
from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db

FEATURES = Jsonb({"sessions": 12, "minutes_played": 400, "active_days": 9})
BY_FEATURES = "SELECT taxonomy_id, segment_id FROM segmentation.categorize_player('g1', %s)"
BY_ID = ("SELECT taxonomy_id, segment_id, membership FROM"
         " segmentation.categorize_player('g1', 'p0000001', %s)")


@pytest.fixture(scope="module")
def primary() -> Iterator[Cluster]:
    with throwaway_cluster("seg-primary") as cluster:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE seg_standby")
        install.install(cluster.dsn("seg_standby"), lib_base=LIB_DIR)
        yield cluster


def test_a_standby_answers_and_follows_activations(primary: Cluster) -> None:
    with psycopg.connect(primary.dsn("seg_standby"), autocommit=True) as p:
        load_population(p, "g1", players=1500, seed=4)
        first = calibrate(p)["taxonomy_id"]
        second = calibrate(p)["taxonomy_id"]
        p.execute("SELECT segmentation.categorize_all('g1', %s)", (AS_OF,))
        with streaming_standby(primary) as standby, \
                psycopg.connect(standby.dsn("seg_standby"), autocommit=True) as s:
            wait_for_replay(p, s)
            assert s.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            assert s.execute("SELECT segmentation.python_runtime() ->> 'feature_scorer'"
                             ).fetchone()[0] == "c"
            for active in (second, first, second):
                p.execute("SELECT segmentation.activate_taxonomy(%s)", (active,))
                wait_for_replay(p, s)
                # The same standby session each time: its cached taxonomy must follow.
                on_standby = s.execute(BY_FEATURES, (FEATURES,)).fetchone()
                assert on_standby == p.execute(BY_FEATURES, (FEATURES,)).fetchone()
                assert on_standby[0] == active
                by_id = s.execute(BY_ID, (AS_OF,)).fetchone()
                assert by_id == p.execute(BY_ID, (AS_OF,)).fetchone()
                assert by_id[0] == active
            # Nothing can be written there, and the error says so.
            with pytest.raises(psycopg.Error) as err:
                s.execute("SELECT segmentation.activate_taxonomy(%s)", (first,))
            assert err.value.sqlstate == "25006", err.value
