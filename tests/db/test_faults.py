"""Faults mid-run, resource limits and concurrency (issue 7).

``calibrate_taxonomy`` and ``categorize_all`` each run as one SQL statement, so a
cancel, a terminate, a ``statement_timeout`` or an immediate server restart in the
middle leaves nothing behind: no half-written taxonomy, the memberships as they were,
no committed ``running`` row in ``segmentation.runs`` (a cancelled or timed-out run is
logged there as ``failed`` with its SQLSTATE, written over a loopback connection; a
terminated one or one cut by a restart leaves no row); the next run succeeds. While a
calibration lands, concurrent ``categorize_player`` calls answer with exactly one of
the two versions, never a mix.

Measured figures are printed (``pytest -s``) with the prefix ``FIGURE``; the ones
seen on the development machine are in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from segmentation_loader import install
from segmentation_loader.library import DEFAULT_BASE

from tests.conftest import LIB_DIR, server_dsn
from tests.db.clusters import Cluster, throwaway_cluster
from tests.db.helpers import AS_OF, calibrate, load_population

pytestmark = pytest.mark.db

GAME = "g1"
# Large enough that calibrate_taxonomy and categorize_all run for several seconds on
# the 2-core development machine, small enough to keep the module near one minute.
PLAYERS = 20_000
CALIBRATE = "SELECT segmentation.calibrate_taxonomy(%(g)s, as_of => %(as_of)s)"
# Automatic k fits a mixture per candidate k: the longest stretch without an SPI call.
CALIBRATE_AUTO_K = ("SELECT segmentation.calibrate_taxonomy(%(g)s, n_segments => 0,"
                    " as_of => %(as_of)s)")
CATEGORIZE_ALL = "SELECT segmentation.categorize_all(%(g)s, %(as_of)s)"
STATEMENTS = {"calibrate": CALIBRATE, "categorize_all": CATEGORIZE_ALL}
KILL_TIMEOUT = 30.0  # seconds a cancelled or terminated run may take to stop

_counter = itertools.count()


def figure(name: str, value: Any) -> None:
    print(f"FIGURE {name}: {value}")


# ------------------------------------------------------------------------- snapshots

_CHECKSUMS = {
    "taxonomies": ("segmentation.game_behavioral_taxonomy", "taxonomy_id"),
    "axes": ("segmentation.behavioral_axes", "taxonomy_id, axis_index"),
    "segments": ("segmentation.segment_definitions", "taxonomy_id, segment_id"),
    "memberships": ("segmentation.player_segment_memberships", "membership_id"),
    "summary": ("segmentation.segment_summary", "taxonomy_id, segment_id"),
    "transitions": ("segmentation.segment_transitions",
                    "game_id, run_id, from_taxonomy_id, from_segment_id, to_taxonomy_id,"
                    " to_segment_id"),
    "change_log": ("segmentation.activity_changes", "game_id, activity_date, player_id"),
    # UNLOGGED: a crash empties them (test_server_restart_mid_batch).
    "window_cache_state": ("segmentation.window_cache_state", "game_id"),
    "window_cache": ("segmentation.window_cache", "game_id, player_id"),
}
UNLOGGED = ("window_cache_state", "window_cache")


def make_window_cache_unusable(conn: psycopg.Connection) -> None:
    """Keep the game's window cache but make the next categorize_all rebuild it.

    With a usable cache a run reads only the as_of day and ends well within the second
    these tests wait before they strike; a rebuild aggregates the whole window, the long
    SQL phase. The cache stays, so a failed run is seen to leave it as it was.
    """
    conn.execute("UPDATE segmentation.window_cache_state SET lookback_days = lookback_days + 1")


@dataclass(frozen=True)
class Snapshot:
    """What a failed run must leave untouched."""

    active_taxonomy_id: int | None
    checksums: dict[str, tuple[int, str]]
    runs: tuple[tuple[int, str, str, str | None], ...]  # id, kind, status, SQLSTATE


def snapshot(conn: psycopg.Connection) -> Snapshot:
    checksums = {}
    for key, (table, order) in _CHECKSUMS.items():
        checksums[key] = conn.execute(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {}), ''))"
            " FROM {} t").format(sql.SQL(", ".join(f"t.{c.strip()}" for c in order.split(","))),
                                 sql.SQL(table))).fetchone()
    active = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                          " WHERE game_id = %s AND is_active", (GAME,)).fetchone()
    runs = conn.execute("SELECT run_id, kind, status, error_sqlstate FROM segmentation.runs"
                        " ORDER BY run_id").fetchall()
    return Snapshot(active[0] if active else None, checksums, tuple(runs))


# --------------------------------------------------------------------------- fixtures


def _admin() -> psycopg.Connection:
    return psycopg.connect(server_dsn("postgres"), autocommit=True)


@pytest.fixture(scope="module")
def populated() -> Iterator[str]:
    """A database installed by the real loader with PLAYERS players, calibrated and
    categorized once; tests work on clones of it (a file copy, well under a second)."""
    name = f"seg_faults_src_{os.getpid()}"
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        install.install(server_dsn(name), lib_base=LIB_DIR)
        with psycopg.connect(server_dsn(name), autocommit=True) as conn:
            load_population(conn, GAME, players=PLAYERS, seed=11)
            summary = calibrate(conn, GAME)
            batch = conn.execute(CATEGORIZE_ALL, {"g": GAME, "as_of": AS_OF}).fetchone()[0]
            make_window_cache_unusable(conn)
        figure("calibrate timings (s)", {k: round(v, 2) for k, v in summary["timings"].items()})
        figure("categorize_all timings (s)",
               {k: round(v, 2) for k, v in batch["timings"].items()})
        yield name
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture
def clone(populated: str) -> Iterator[str]:
    """DSN of a private copy of the populated database."""
    name = f"seg_faults_{os.getpid()}_{next(_counter)}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(populated)))
        if LIB_DIR != DEFAULT_BASE:
            # database-level settings are not copied with the template
            admin.execute(sql.SQL("ALTER DATABASE {} SET segmentation.python_lib_dir = {}")
                          .format(sql.Identifier(name), sql.Literal(str(LIB_DIR))))
    try:
        yield server_dsn(name)
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


# ---------------------------------------------------------------------------- helpers


class Run(threading.Thread):
    """One statement on its own, already warmed-up session, in a thread."""

    def __init__(self, dsn: str, statement: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        # Load the server-side library first, so "n seconds into the run" is real work.
        self.conn.execute("SELECT segmentation.python_runtime()")
        self.pid: int = self.conn.info.backend_pid
        self.statement = statement
        self.result: Any = None
        self.error: psycopg.Error | None = None
        self.ended = 0.0

    def run(self) -> None:
        try:
            self.result = self.conn.execute(self.statement,
                                            {"g": GAME, "as_of": AS_OF}).fetchone()[0]
        except psycopg.Error as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()


def wait_until_active(admin: psycopg.Connection, pid: int, timeout: float = 30.0) -> float:
    """Monotonic time at which backend ``pid`` was first seen running a statement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
                            ).fetchone()
        if row and row[0] == "active":
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never became active")


def wait_until_fitting(dsn: str, pid: int, timeout: float = 60.0) -> float:
    """Monotonic time at which calibration ``pid`` entered the model fit.

    Right before the fit the calibration reads the active taxonomy (its continuity
    reference) and so takes its first lock on segmentation.behavioral_axes, after all
    of the window's SQL; from then on it runs numpy/scikit-learn for seconds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND relation ="
                            " 'segmentation.behavioral_axes'::regclass", (pid,)).fetchone():
                return time.monotonic()
            time.sleep(0.01)
    raise AssertionError(f"calibration {pid} never reached the fit")


def wait_until_gone(admin: psycopg.Connection, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        assert time.monotonic() < deadline, f"backend {pid} did not exit"
        time.sleep(0.02)


def failing_line(exc: psycopg.Error) -> str:
    """Where in the server-side Python the error surfaced: the innermost frames of the
    PL/Python traceback in CONTEXT (module frames carry a line number and function)."""
    frames = re.findall(r"line (\d+), in (\w+)", exc.diag.context or "")
    inner = [f"{fn}:{line}" for line, fn in frames if fn not in ("<module>", "wrapper")]
    return " > ".join(inner[-3:]) or "(no traceback)"


def assert_untouched(dsn: str, before: Snapshot, failed: list[tuple[str, str]]) -> Snapshot:
    """Nothing written but, for each ``(kind, sqlstate)`` in ``failed``, one 'failed' row in
    the run log. The 'running' row inserted by the aborted transaction never became
    visible; failures are logged over a loopback connection only where the function
    could still act (an ERROR it sees: cancel, timeout), not when the backend dies."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = snapshot(conn)
        dblink = conn.execute("SELECT to_regprocedure('segmentation_ext.dblink_exec(text,text)')"
                              " IS NOT NULL").fetchone()[0]
    assert after.active_taxonomy_id == before.active_taxonomy_id
    assert after.checksums == before.checksums
    assert after.runs[:len(before.runs)] == before.runs
    logged = [(kind, status, sqlstate) for _, kind, status, sqlstate
              in after.runs[len(before.runs):]]
    assert logged == ([(kind, "failed", sqlstate) for kind, sqlstate in failed] if dblink
                      else [])
    assert all(status != "running" for _, _, status, _ in after.runs)
    return after


# ------------------------------------------------------------------ cancel / terminate


@pytest.mark.parametrize(("kind", "action", "when"), [
    ("calibrate", "cancel", "early"),
    ("calibrate", "cancel", "fit"),
    ("calibrate", "cancel", "fit-auto-k"),
    ("calibrate", "terminate", "early"),
    ("categorize_all", "cancel", "early"),
    ("categorize_all", "terminate", "early"),
])
def test_run_killed_mid_way_leaves_nothing_and_next_run_succeeds(
        clone: str, kind: str, action: str, when: str) -> None:
    with psycopg.connect(clone, autocommit=True) as conn:
        before = snapshot(conn)
    assert before.active_taxonomy_id is not None
    # "early": 1 s in, inside the SQL that aggregates the window: SPI checks for
    # interrupts all the time. "fit": in the numpy/scikit-learn model fit, where no SPI
    # call happens, so the interrupt waits for the next one (this is the delay measured).
    run = Run(clone, CALIBRATE_AUTO_K if when == "fit-auto-k" else STATEMENTS[kind])
    with _admin() as admin:
        run.start()
        started = wait_until_active(admin, run.pid)
        if when == "early":
            time.sleep(max(0.0, started + 1.0 - time.monotonic()))
        else:
            fitting = wait_until_fitting(clone, run.pid)
            time.sleep(max(0.0, fitting + (0.3 if when == "fit" else 1.0) - time.monotonic()))
        fn = "pg_cancel_backend" if action == "cancel" else "pg_terminate_backend"
        killed_at = time.monotonic()
        assert admin.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)),
                             (run.pid,)).fetchone()[0] is True
        run.join(KILL_TIMEOUT)
        assert not run.is_alive(), f"{kind} did not stop within {KILL_TIMEOUT} s of {fn}"
        latency = run.ended - killed_at
        assert run.error is not None, f"{kind} finished before the {action} arrived"
        figure(f"{action} {kind} ({when}, {killed_at - started:.2f} s in) -> error after",
               f"{latency:.3f} s at `{failing_line(run.error)}`")
        assert latency < KILL_TIMEOUT
        if action == "cancel":
            assert run.error.sqlstate == "57014"
            assert "canceling statement due to user request" in str(run.error)
        else:
            assert run.error.sqlstate == "57P01"
            wait_until_gone(admin, run.pid)
            run.conn.close()
    failed = assert_untouched(clone, before, [(kind, "57014")] if action == "cancel" else [])
    if when != "early":
        # The session is usable after a cancel mid-fit; the "early" cases re-run in full.
        assert run.conn.execute("SELECT segmentation.health()").fetchone()[0]["status"] == (
            "healthy")
        run.conn.close()
        return

    # The next run succeeds: on the same session after a cancel, a new one after a kill.
    with contextlib.ExitStack() as stack:
        conn = run.conn if action == "cancel" else stack.enter_context(
            psycopg.connect(clone, autocommit=True))
        result = conn.execute(STATEMENTS[kind], {"g": GAME, "as_of": AS_OF}).fetchone()[0]
        after = snapshot(conn)
    run.conn.close()
    assert after.runs[:-1] == failed.runs
    assert after.runs[-1][1:] == (kind, "succeeded", None)
    if kind == "calibrate":
        assert result["version"] == 2 and result["previous_taxonomy_id"] == (
            before.active_taxonomy_id)
        assert after.active_taxonomy_id == result["taxonomy_id"]
    else:
        assert result["players"] == PLAYERS
        # Same data, same taxonomy: every player keeps the row it had.
        assert result["unchanged"] == PLAYERS
        assert after.checksums["memberships"][0] == before.checksums["memberships"][0]


def test_statement_timeout_stops_calibration_and_batch(clone: str) -> None:
    with psycopg.connect(clone, autocommit=True) as conn:
        conn.execute("SELECT segmentation.python_runtime()")
        before = snapshot(conn)
        conn.execute("SET statement_timeout = '500ms'")
        for kind, statement in STATEMENTS.items():
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled) as err:
                conn.execute(statement, {"g": GAME, "as_of": AS_OF})
            elapsed = time.monotonic() - t0
            figure(f"statement_timeout 500ms {kind} -> error after", f"{elapsed:.3f} s")
            assert err.value.sqlstate == "57014"
            assert "statement timeout" in str(err.value)
            assert elapsed < 5
        conn.execute("RESET statement_timeout")
    assert_untouched(clone, before, [(kind, "57014") for kind in STATEMENTS])


def test_lock_timeout_and_batch_slots_bound_the_wait(clone: str) -> None:
    """A calibration or batch of a game that is already being calibrated / categorized
    waits for it; lock_timeout bounds that wait. Batch slots refuse at once (SG009)."""
    from segmentation.sql_api import BATCH_GAME_LOCK, BATCH_SLOT_LOCK, CALIBRATE_LOCK

    with psycopg.connect(clone, autocommit=True) as holder, \
            psycopg.connect(clone, autocommit=True) as conn:
        conn.execute("SELECT segmentation.python_runtime()")
        before = snapshot(conn)
        # What a running calibration and a running batch of the game hold.
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s)),"
                       " pg_advisory_xact_lock(%s, hashtext(%s))",
                       (CALIBRATE_LOCK, GAME, BATCH_GAME_LOCK, GAME))
        conn.execute("SET lock_timeout = '300ms'")
        for statement in STATEMENTS.values():
            t0 = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(statement, {"g": GAME, "as_of": AS_OF})
            assert time.monotonic() - t0 < 5
        conn.execute("RESET lock_timeout")
        holder.execute("ROLLBACK")
        # Every batch slot (here: the only one) taken by batches of other games.
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, 1)", (BATCH_SLOT_LOCK,))
        conn.execute("SET segmentation.max_concurrent_categorizations = 1")
        with pytest.raises(psycopg.Error) as err:
            conn.execute(CATEGORIZE_ALL, {"g": GAME, "as_of": AS_OF})
        assert err.value.sqlstate == "SG009" and err.value.diag.message_hint
        holder.execute("ROLLBACK")
    # The lock waits failed before a run started: no run-log row. The refused batch had
    # no run yet either (slots are taken before the run row is written).
    assert_untouched(clone, before, [])


# ---------------------------------------------------------------------- concurrency


def test_single_answers_never_mix_versions_during_calibration(clone: str) -> None:
    clients, per_client = 8, 6
    with psycopg.connect(clone, autocommit=True) as conn:
        players = [r[0] for r in conn.execute(
            "SELECT player_id FROM segmentation.player_current_segment WHERE game_id = %s"
            " ORDER BY md5(player_id) LIMIT %s", (GAME, clients * per_client)).fetchall()]
        old_id = snapshot(conn).active_taxonomy_id
    stop = threading.Event()
    answers: list[list[tuple[str, int, int, int, dict, dict, float]]] = [
        [] for _ in range(clients)]
    failures: list[BaseException] = []
    slowest = [0.0] * clients
    query = ("SELECT taxonomy_id, taxonomy_version, segment_id, memberships, axis_scores,"
             " membership FROM segmentation.categorize_player(%s, %s, %s)")

    def client(i: int) -> None:
        mine = players[i * per_client:(i + 1) * per_client]
        try:
            with psycopg.connect(clone, autocommit=True) as c:
                c.execute("SELECT segmentation.python_runtime()")
                ready.wait()
                for player in itertools.cycle(mine):
                    if stop.is_set():
                        break
                    t0 = time.monotonic()
                    row = c.execute(query, (GAME, player, AS_OF)).fetchone()
                    slowest[i] = max(slowest[i], time.monotonic() - t0)
                    answers[i].append((player, *row))
                    # A paced loop: eight busy-looping clients on two cores would starve
                    # the calibration they are meant to overlap with.
                    time.sleep(0.02)
        except BaseException as exc:  # every failed call is a test failure
            failures.append(exc)

    ready = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    with psycopg.connect(clone, autocommit=True) as c:
        time.sleep(0.3)  # answers from the old version first
        # Five segments instead of seven: a mixed answer could not go unnoticed.
        new = calibrate(c, GAME, n_segments=5)
        time.sleep(1.0)  # and from the new one after
        stop.set()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    new_id = new["taxonomy_id"]
    flat = [a for per in answers for a in per]
    seen = {(a[1], a[2]) for a in flat}
    figure("categorize_player calls during calibration",
           f"{len(flat)} calls, {sum(1 for a in flat if a[1] == old_id)} old /"
           f" {sum(1 for a in flat if a[1] == new_id)} new, slowest {max(slowest):.3f} s")
    assert seen == {(old_id, 1), (new_id, 2)}
    for per in answers:
        # Per session, once the new version is seen the old one never comes back.
        versions = [a[2] for a in per]
        assert versions == sorted(versions)

    # What each exact version answers for these players, one version active at a time.
    reference: dict[tuple[str, int], tuple] = {}
    with psycopg.connect(clone, autocommit=True) as c:
        for tid in (old_id, new_id):
            c.execute("SELECT segmentation.activate_taxonomy(%s)", (tid,))
            for player in players:
                row = c.execute(query, (GAME, player, AS_OF)).fetchone()
                assert row[0] == tid
                reference[(player, tid)] = row
    worst = 0.0
    for player, *row in flat:
        ref = reference[(player, row[0])]
        assert row[2] == ref[2], (player, row[0])  # primary segment
        assert row[3].keys() == ref[3].keys()  # exactly the segments of that version
        assert row[4].keys() == ref[4].keys()
        worst = max([worst, abs(row[5] - ref[5])]
                    + [abs(row[j][key] - ref[j][key]) for j in (3, 4) for key in ref[j]])
    # Same code, same model, same data: the numbers agree to rounding at most.
    assert worst <= 1e-12


# --------------------------------------------------------------- restart mid-batch

@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL 15 cluster (never the shared one): restarted by the test,
    stopped and removed afterwards, also on failure."""
    with throwaway_cluster("seg-restart") as cluster:
        yield cluster


def test_server_restart_mid_batch(own_cluster: Cluster) -> None:
    players = 12_000
    with psycopg.connect(own_cluster.dsn("postgres"), autocommit=True) as c:
        c.execute("CREATE DATABASE seg_restart")
    dsn = own_cluster.dsn("seg_restart")
    install.install(dsn, lib_base=LIB_DIR)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('segmentation.python_lib_dir')"
                            ).fetchone()[0] == str(LIB_DIR)
        load_population(conn, GAME, players=players, seed=12)
        calibrate(conn, GAME)
        conn.execute(CATEGORIZE_ALL, {"g": GAME, "as_of": AS_OF})
        make_window_cache_unusable(conn)
        # The second batch refreshes every row in place: a partial write would show.
        before = snapshot(conn)
        assert before.checksums["window_cache"][0] == players

    run = Run(dsn, CATEGORIZE_ALL)
    with psycopg.connect(own_cluster.dsn("postgres"), autocommit=True) as admin:
        run.start()
        started = wait_until_active(admin, run.pid)
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    restart_seconds = own_cluster.pg_ctl("-m", "immediate", "-w", "-t", "60", "restart")
    run.join(KILL_TIMEOUT)
    assert not run.is_alive()
    assert run.error is not None, "categorize_all finished before the restart"
    assert isinstance(run.error, psycopg.OperationalError)
    run.conn.close()
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        reconnect = time.monotonic() - t0
        figure("pg_ctl restart -m immediate mid-batch (crash recovery included)",
               f"{restart_seconds:.2f} s; first connection after it {reconnect:.3f} s")
        assert "automatic recovery in progress" in own_cluster.log.read_text()
        after = snapshot(conn)
        # Crash recovery empties the unlogged window cache; everything else is as it was.
        for table in UNLOGGED:
            assert after.checksums.pop(table)[0] == 0
            before.checksums.pop(table)
        assert after == before
        result = conn.execute(CATEGORIZE_ALL, {"g": GAME, "as_of": AS_OF}).fetchone()[0]
        assert result["players"] == players and result["unchanged"] == players
        assert result["window_cache"]["reason"] == "no cache"
        health = conn.execute("SELECT segmentation.health()").fetchone()[0]
        assert health["status"] == "healthy"
        statuses = [status for _, _, status, _ in snapshot(conn).runs]
        assert statuses == ["succeeded"] * (len(before.runs) + 1)
