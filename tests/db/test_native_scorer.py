"""categorize_player(game_id, features) in C (native/categorize_features.c).

It must answer what the PL/Python implementation answers (same arrays, same math),
hand every unusual input to it (same errors), and see a re-activation at once
through the relcache invalidation its trigger sends, without a lookup per call.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from segmentation import __version__
from segmentation_loader import install

from tests.conftest import LIB_DIR, server_dsn
from tests.db.helpers import calibrate, cloned_database, load_population

pytestmark = pytest.mark.db

NATIVE = "segmentation.categorize_player"
PLPYTHON = "segmentation._categorize_player_plpython"


class World:
    def __init__(self, dsn: str, first: int, second: int, keys: list[str]) -> None:
        self.dsn, self.first, self.second, self.keys = dsn, first, second, keys

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)


@pytest.fixture(scope="module")
def world(segmentation_server: Any) -> Iterator[World]:
    """Game g1 calibrated twice (the second taxonomy active)."""
    with cloned_database(segmentation_server, f"seg_native_{os.getpid()}") as (dsn, su):
        load_population(su, "g1", players=2500, seed=5)
        first = calibrate(su)["taxonomy_id"]
        second = calibrate(su)["taxonomy_id"]
        keys = su.execute("SELECT keys FROM segmentation._scoring_kernel(%s)",
                          (second,)).fetchone()[0]
        yield World(dsn, first, second, keys)


def active_of(conn: psycopg.Connection, features: dict[str, Any] | None = None) -> int:
    return conn.execute(f"SELECT taxonomy_id FROM {NATIVE}('g1', %s)",
                        (Jsonb(features or {"sessions": 3}),)).fetchone()[0]


def test_the_native_scorer_is_installed(world: World) -> None:
    with world.connect() as conn:
        assert conn.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.oid = 'segmentation.categorize_player(text, jsonb)'::regprocedure"
        ).fetchone()[0] == "c"
        assert conn.execute("SELECT segmentation._native_version()").fetchone()[0] == __version__
        assert conn.execute("SELECT segmentation.python_runtime() ->> 'feature_scorer'"
                            ).fetchone()[0] == "c"
        # Fires for every write, also under session_replication_role = replica.
        assert conn.execute(
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'game_behavioral_taxonomy_changed'"
            " AND tgrelid = 'segmentation.game_behavioral_taxonomy'::regclass").fetchone() == ("A",)


def _random_vectors(keys: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    values = [0, 1, 3, 17, 250, 12_000, 10**9, -5, 0.5, 2.25, 1e-9, 123.456789012345678,
              9.87654321e-5, 3e12]
    out = []
    for _ in range(n):
        chosen = rng.sample(keys, rng.randint(1, len(keys)))
        vector: dict[str, Any] = {}
        for key in chosen:
            if rng.random() < 0.5:
                vector[key] = rng.choice(values)
            elif rng.random() < 0.5:
                vector[key] = rng.randint(0, 5000)
            else:
                vector[key] = rng.lognormvariate(2, 2)
        out.append(vector)
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_answers_agree_with_the_plpython_implementation(world: World) -> None:
    """Same segment, memberships, axis scores, anomaly and explanation, to rounding.

    Both read the same arrays; only the order of a few additions differs (BLAS in
    numpy, a loop in C), so numbers agree to about 1e-15, and a choice between two
    candidates may differ only where they tie to that precision.
    """
    vectors = _random_vectors(world.keys, 600, seed=11)
    vectors += [{"active_days": 0, "sessions": 4}, {"active_days": 9}, {"sessions": 0}]
    with world.connect() as conn:
        rows = conn.execute(
            f"SELECT to_jsonb(c), to_jsonb(p) FROM unnest(%s::jsonb[]) f(v),"
            f" LATERAL {NATIVE}('g1', f.v) c, LATERAL {PLPYTHON}('g1', f.v) p",
            ([Jsonb(v) for v in vectors],)).fetchall()
    assert len(rows) == len(vectors)
    segments_seen = set()
    for (c, p), vector in zip(rows, vectors, strict=True):
        where = f"features {vector}"
        assert (c["taxonomy_id"], c["taxonomy_version"]) == (
            p["taxonomy_id"], p["taxonomy_version"]), where
        ranked = sorted(p["memberships"].values(), reverse=True)
        if len(ranked) < 2 or ranked[0] - ranked[1] > 1e-9:
            assert (c["segment_id"], c["segment_name"]) == (
                p["segment_id"], p["segment_name"]), where
            assert c["explanation"]["runner_up"] == p["explanation"]["runner_up"], where
        segments_seen.add(p["segment_id"])
        for field in ("membership", "anomaly_score"):
            assert _close(c[field], p[field]), (field, where)
        if abs(p["anomaly_score"] - 1.0) > 1e-9:
            assert c["is_anomaly"] == p["is_anomaly"], where
            assert c["explanation"]["anomaly_kind"] == p["explanation"]["anomaly_kind"], where
        for field in ("memberships", "axis_scores"):
            assert c[field].keys() == p[field].keys(), (field, where)
            for name, value in p[field].items():
                assert _close(c[field][name], value), (field, name, where)
        assert abs(sum(c["memberships"].values()) - 1.0) < 1e-9
        ce, pe = c["explanation"], p["explanation"]
        assert ce.keys() == pe.keys(), where
        assert ce["imputed_features"] == pe["imputed_features"], where
        assert _close(ce["margin"], pe["margin"]), where
        scores = sorted((abs(v) for v in p["axis_scores"].values()), reverse=True)
        if len(scores) < 3 or scores[1] - scores[2] > 1e-9:
            assert [t["axis"] for t in ce["top_axes"]] == [t["axis"] for t in pe["top_axes"]]
            for ct, pt in zip(ce["top_axes"], pe["top_axes"], strict=True):
                assert _close(ct["score"], pt["score"]), where
    # The vectors reach more than one segment: the comparison covers the branches.
    assert len(segments_seen) >= 3


def test_answer_objects_are_well_formed_jsonb(world: World) -> None:
    """The C function builds its jsonb without sorting keys: every key must still be
    found by a lookup (jsonb's binary search) and the values be numbers or strings."""
    vectors = _random_vectors(world.keys, 50, seed=2)
    with world.connect() as conn:
        missing = conn.execute(
            f"SELECT count(*) FROM unnest(%s::jsonb[]) f(v), LATERAL {NATIVE}('g1', f.v) c,"
            " LATERAL (SELECT c.memberships AS o UNION ALL SELECT c.axis_scores"
            "          UNION ALL SELECT c.explanation"
            "          UNION ALL SELECT c.explanation -> 'top_axes' -> 0) objects,"
            " LATERAL jsonb_object_keys(objects.o) k"
            " WHERE objects.o -> k IS NULL",
            ([Jsonb(v) for v in vectors],)).fetchone()[0]
        assert missing == 0
        kinds = conn.execute(
            f"SELECT DISTINCT jsonb_typeof(c.memberships -> k) FROM unnest(%s::jsonb[]) f(v),"
            f" LATERAL {NATIVE}('g1', f.v) c, LATERAL jsonb_object_keys(c.memberships) k",
            ([Jsonb(v) for v in vectors],)).fetchall()
        assert kinds == [("number",)]


def test_two_games_keep_their_own_taxonomies(world: World) -> None:
    with world.connect() as conn:
        load_population(conn, "g2", players=800, seed=9)
        g2 = calibrate(conn, "g2")["taxonomy_id"]
        try:
            for _ in range(2):
                assert active_of(conn) == world.second
                assert conn.execute(f"SELECT taxonomy_id FROM {NATIVE}('g2', %s)",
                                    (Jsonb({"sessions": 3}),)).fetchone()[0] == g2
        finally:
            conn.execute("UPDATE segmentation.game_behavioral_taxonomy SET is_active = false"
                         " WHERE game_id = 'g2'")
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"SELECT * FROM {NATIVE}('g2', %s)", (Jsonb({"sessions": 3}),))
        assert err.value.sqlstate == "SG004"
        assert active_of(conn) == world.second


def test_numbers_print_as_the_plpython_path_prints_them(world: World) -> None:
    """Where both paths computed the same double, the jsonb holds the same numeric: the
    digits Python's repr() writes ("1.0" keeps its decimal, 1.4e-05 its scale)."""
    vectors = _random_vectors(world.keys, 300, seed=5)
    with world.connect() as conn:
        rows = conn.execute(
            f"SELECT cv, pv FROM unnest(%s::jsonb[]) f(v),"
            f" LATERAL {NATIVE}('g1', f.v) c, LATERAL {PLPYTHON}('g1', f.v) p,"
            " LATERAL (SELECT * FROM jsonb_each_text(c.memberships) UNION ALL"
            "          SELECT * FROM jsonb_each_text(c.axis_scores)) ce(k, cv)"
            " JOIN LATERAL (SELECT * FROM jsonb_each_text(p.memberships) UNION ALL"
            "               SELECT * FROM jsonb_each_text(p.axis_scores)) pe(k, pv) USING (k)",
            ([Jsonb(v) for v in vectors],)).fetchall()
    same = [(c, p) for c, p in rows if float(c) == float(p)]
    assert [c for c, _ in same] == [p for _, p in same]
    # Enough equal doubles of every kind to make that comparison mean something.
    assert len(same) > 500
    assert any(c.endswith(".0") for c, _ in same)
    assert any(abs(float(c)) < 1e-4 and float(c) != 0 for c, _ in same)


BAD_INPUTS: list[tuple[str, Any, Any]] = [
    ("NULL features", "g1", None),
    ("empty object", "g1", Jsonb({})),
    ("array", "g1", Jsonb([1, 2, 3])),
    ("scalar", "g1", Jsonb("sessions")),
    ("a string value", "g1", Jsonb({"sessions": "many"})),
    ("a boolean value", "g1", Jsonb({"sessions": True})),
    ("a nested value", "g1", Jsonb({"sessions": {"n": 1}})),
    ("an unknown key", "g1", Jsonb({"sessions": 3, "no_such_metric": 1})),
    ("beyond float8", "g1", Jsonb({"sessions": 10**400})),
    ("NULL game", None, Jsonb({"sessions": 3})),
    ("empty game", "  ", Jsonb({"sessions": 3})),
    ("long game", "g" * 300, Jsonb({"sessions": 3})),
    ("unknown game", "no_such_game", Jsonb({"sessions": 3})),
]


@pytest.mark.parametrize(("case", "game", "features"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_unusual_input_gets_the_plpython_answer(world: World, case: str, game: Any,
                                                features: Any) -> None:
    """Handed to the PL/Python implementation: the same error (SQLSTATE, message, hint)."""
    outcomes = []
    with world.connect() as conn:
        for function in (NATIVE, PLPYTHON):
            try:
                outcomes.append(("ok", conn.execute(
                    f"SELECT * FROM {function}(%s::text, %s::jsonb)", (game, features)
                ).fetchone()))
            except psycopg.Error as exc:
                outcomes.append((exc.sqlstate, exc.diag.message_primary, exc.diag.message_hint))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] != "ok" and outcomes[0][0].startswith("SG"), outcomes[0]
    assert outcomes[0][2], "no hint"


def test_nulls_and_nothing_usable_are_imputed_as_in_plpython(world: World) -> None:
    with world.connect() as conn:
        c, p = conn.execute(
            f"SELECT to_jsonb(c), to_jsonb(p) FROM {NATIVE}('g1', %(v)s) c,"
            f" {PLPYTHON}('g1', %(v)s) p", {"v": Jsonb({"sessions": None, "purchases": 2})}
        ).fetchone()
    assert c == p


def _scans(observer: psycopg.Connection) -> int:
    observer.execute("SELECT pg_stat_clear_snapshot()")
    return observer.execute(
        "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
        " WHERE relid = 'segmentation.game_behavioral_taxonomy'::regclass").fetchone()[0]


def _flush(conn: psycopg.Connection) -> None:
    # Stats reach the shared counters before the server answers the next statement.
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def test_no_lookup_per_call_until_the_table_is_written(world: World) -> None:
    """The C scorer reads game_behavioral_taxonomy only when it was written: 40 calls,
    each its own transaction, scan it (almost) never; the PL/Python twin scans it once
    per call, which shows the counter sees those lookups."""
    with world.connect() as caller, world.connect() as observer:
        assert active_of(caller) == world.second
        _flush(caller)
        before = _scans(observer)
        for n in range(40):
            active_of(caller, {"sessions": n})
        _flush(caller)
        native = _scans(observer) - before
        for n in range(40):
            caller.execute(f"SELECT * FROM {PLPYTHON}('g1', %s)", (Jsonb({"sessions": n}),))
        _flush(caller)
        plpython = _scans(observer) - before - native
        # An autovacuum ANALYZE of the table also invalidates it: allow one lookup.
        assert native <= 2
        assert plpython >= 40
        # A write makes the next calls look again: the one in the transaction that
        # received the invalidation, and the first one after it.
        observer.execute("UPDATE segmentation.game_behavioral_taxonomy SET game_id = game_id"
                         " WHERE false")
        before = _scans(observer)
        for n in range(5):
            active_of(caller, {"sessions": n})
        _flush(caller)
        assert 1 <= _scans(observer) - before <= 3


def test_an_activation_elsewhere_is_seen_by_the_next_call(world: World) -> None:
    with world.connect() as caller, world.connect() as admin:
        assert active_of(caller) == world.second
        try:
            admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.first,))
            assert active_of(caller) == world.first
            # Not committed yet: not seen; rolled back: never seen.
            with admin.transaction(force_rollback=True):
                admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.second,))
                assert active_of(caller) == world.first
            assert active_of(caller) == world.first
        finally:
            admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.second,))
        assert active_of(caller) == world.second


def test_a_snapshot_taken_before_an_activation_is_not_trusted_after_it(world: World) -> None:
    """A caller in a REPEATABLE READ transaction keeps its snapshot's taxonomy (as any
    query of it would), and gets the new one in its next transaction: the lookup made
    with the old snapshot is not kept as current."""
    with world.connect() as caller, world.connect() as admin:
        try:
            with caller.transaction():
                caller.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                assert active_of(caller) == world.second
                admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.first,))
                assert active_of(caller) == world.second
                assert active_of(caller) == world.second
                assert caller.execute(
                    "SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                    " WHERE game_id = 'g1' AND is_active").fetchone()[0] == world.second
            assert active_of(caller) == world.first
        finally:
            admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.second,))
        assert active_of(caller) == world.second


def test_no_active_taxonomy_and_replica_writes(world: World) -> None:
    with world.connect() as caller, world.connect() as admin:
        assert active_of(caller) == world.second
        try:
            # A logical replica's apply runs as session_replication_role = replica.
            admin.execute("SET session_replication_role = replica")
            admin.execute("UPDATE segmentation.game_behavioral_taxonomy SET is_active = false"
                          " WHERE game_id = 'g1'")
            with pytest.raises(psycopg.Error) as err:
                active_of(caller)
            assert err.value.sqlstate == "SG004"
        finally:
            admin.execute("RESET session_replication_role")
            admin.execute("SELECT segmentation.activate_taxonomy(%s)", (world.second,))
        assert active_of(caller) == world.second


def test_the_kernel_is_reloaded_after_the_ttl(world: World) -> None:
    with world.connect() as caller, world.connect() as observer:
        caller.execute("SET track_functions = 'pl'")
        caller.execute("SET segmentation.cache_ttl_seconds = 0")

        def loads() -> int:
            _flush(caller)
            observer.execute("SELECT pg_stat_clear_snapshot()")
            row = observer.execute(
                "SELECT calls FROM pg_stat_user_functions"
                " WHERE funcid = 'segmentation._scoring_kernel(bigint)'::regprocedure"
            ).fetchone()
            return row[0] if row else 0

        active_of(caller)
        before = loads()
        for n in range(3):
            active_of(caller, {"sessions": n})
        assert loads() - before == 3
        caller.execute("RESET segmentation.cache_ttl_seconds")
        active_of(caller)
        before = loads()
        for n in range(3):
            active_of(caller, {"sessions": n})
        assert loads() - before == 0


@pytest.fixture
def library_without_native(segmentation_server: Any) -> Iterator[Path]:
    """A library base whose <version>/ has everything but the native library."""
    base = Path(f"/var/tmp/seg-no-native-{os.getpid()}")
    real = LIB_DIR / __version__
    shutil.rmtree(base, ignore_errors=True)
    (base / __version__).mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "segmentation_native.so":
            (base / __version__ / entry.name).symlink_to(entry)
    for path in (base, base / __version__):
        path.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_without_the_library_plpython_answers_and_the_library_comes_back(
        segmentation_server: Any, library_without_native: Path) -> None:
    features = Jsonb({"sessions": 12, "minutes_played": 400, "active_days": 9})
    name = f"seg_native_fallback_{os.getpid()}"
    with cloned_database(segmentation_server, name) as (dsn, su):
        load_population(su, "g1", players=1500, seed=3)
        calibrate(su)
        expected = su.execute(f"SELECT * FROM {PLPYTHON}('g1', %s)", (features,)).fetchone()
        su.execute(f"ALTER DATABASE {name} SET segmentation.python_lib_dir ="
                   f" '{library_without_native}'")
        report = install.install(server_dsn(name), provision_library=False)
        assert report.feature_scorer == "plpython3u"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'game_behavioral_taxonomy_changed'"
            ).fetchone()[0] == 0
            assert conn.execute("SELECT to_regprocedure('segmentation._native_version()')"
                                ).fetchone()[0] is None
            answer = conn.execute(f"SELECT * FROM {NATIVE}('g1', %s)", (features,)).fetchone()
            assert answer == expected
            assert conn.execute("SELECT segmentation.python_runtime() ->> 'feature_scorer'"
                                ).fetchone()[0] == "plpython3u"
        if LIB_DIR == install.library.DEFAULT_BASE:
            su.execute(f"ALTER DATABASE {name} RESET segmentation.python_lib_dir")
        else:
            su.execute(f"ALTER DATABASE {name} SET segmentation.python_lib_dir = '{LIB_DIR}'")
        assert install.install(server_dsn(name), provision_library=False).feature_scorer == "c"
        with psycopg.connect(dsn, autocommit=True) as conn:
            answer = conn.execute(f"SELECT * FROM {NATIVE}('g1', %s)", (features,)).fetchone()
            assert answer[:4] == expected[:4]
            assert math.isclose(answer[4], expected[4], rel_tol=1e-12)
