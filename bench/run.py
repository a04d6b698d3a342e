"""`make bench`: measure the system beside its baselines in the same run; write BENCHMARKS.md.

Every figure is printed beside its baseline measured in the same run on the same
server, as a ratio. Sizes are parameters; the defaults are meant to finish within
about 15 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from segmentation_loader import install
from segmentation_loader.generator import simulate, write_population

from bench import client_pipeline
from bench.load import LoadResult, run_pgbench

AS_OF = date(2026, 6, 30)
NEXT_DAY = AS_OF + timedelta(days=1)
ROOT = Path(__file__).resolve().parents[1]


def _dsn(base: str, dbname: str) -> str:
    params = conninfo_to_dict(base)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def _fresh_db(base: str, dbname: str, lib_dir: Path | None) -> str:
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(dbname)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    dsn = _dsn(base, dbname)
    install.install(dsn, lib_base=lib_dir)
    return dsn


class PeakMemory:
    """Peak memory (MiB) of one backend during a call, from /proc/<pid>/status.

    ``private``: the largest RssAnon seen (sampled every 50 ms): the backend's own heap,
    Python objects and numpy arrays. ``resident``: VmHWM, which also counts the pages of
    shared_buffers the backend touched, so it grows with the tables a call reads.
    """

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.private = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _field(self, name: str) -> float | None:
        try:
            for line in self.path.read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.private = max(self.private, self._field("RssAnon:") or 0.0)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.private = max(self.private, self._field("RssAnon:") or 0.0)
        self.resident = self._field("VmHWM:") or 0.0

    def describe(self) -> str:
        return f"{self.private:.0f} MiB ({self.resident:.0f} MiB)"


def _timed_call(dsn: str, query: str, params: tuple = ()) -> tuple[Any, float, str]:
    """Run one statement on a new backend; return (result, seconds, peak memory text)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("SELECT segmentation.python_runtime()")  # imports are not the workload
        with PeakMemory(pid) as mem:
            t0 = time.perf_counter()
            result = conn.execute(query, params).fetchone()[0]
            seconds = time.perf_counter() - t0
        return result, seconds, mem.describe()


def _timed_rolled_back(dsn: str, query: str, params: tuple = ()) -> float:
    """Run one statement on a new backend in a transaction that is rolled back; seconds."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT segmentation.python_runtime()")
        t0 = time.perf_counter()
        conn.execute(query, params).fetchone()
        seconds = time.perf_counter() - t0
        conn.rollback()
    return seconds


def _populate(dsn: str, game: str, players: int, seed: int) -> dict[str, Any]:
    pop = simulate(players, days=90, seed=seed, as_of=AS_OF)
    with psycopg.connect(dsn, autocommit=True) as conn:
        stats = write_population(conn, game, pop)
        conn.execute("ANALYZE segmentation.player_activity")
    return stats


def _store_day_by_day(dsn: str) -> float:
    """Rewrite player_activity in (game, day) order; returns seconds.

    The generator writes each player's 90 days together, so one player's rows share a
    page or two. Daily ingestion stores a day's rows together instead, and a player's
    window then spans as many pages as active days: what categorize_player(player_id)
    really reads. Full-window scans (calibration, categorize_all) read every page either
    way.
    """
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CLUSTER segmentation.player_activity USING player_activity_game_date_idx")
        conn.execute("ANALYZE segmentation.player_activity")
    return time.perf_counter() - t0


def _batch_row(n: int, run: str, batch: dict[str, Any], seconds: float, memory: str,
               client: dict[str, Any], trials: list[float] | None = None) -> str:
    """A categorize_all row beside the client pipeline on the same window.

    ``trials``: every run's seconds when ``seconds`` is their median.
    """
    wall = f"{seconds:.1f} s" + (
        f" (median of {', '.join(f'{t:.1f}' for t in trials)})" if trials else "")
    return (f"| {n:,} | {run} | {wall} | {_parts(batch['timings'])} | {memory}"
            f" | {client['total_s']:.1f} s (copy out {client['copy_out_s']:.1f}, score"
            f" {client['score_s']:.1f}, copy back {client['copy_back_s']:.1f})"
            f" | {_ratio(client['total_s'], seconds)}"
            f" | {client['total_full_s']:.1f} s (score {client['score_full_s']:.1f},"
            f" copy back {client['copy_back_full_s']:.1f})"
            f" | {_ratio(client['total_full_s'], seconds)} |")


def _ingest_next_day(dsn: str, game: str) -> tuple[int, float]:
    """Append day NEXT_DAY (a copy of the rows a week before it); (rows, seconds).

    A plain INSERT ... SELECT, so the figure includes the change-log triggers.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        rows = conn.execute(
            "INSERT INTO segmentation.player_activity SELECT game_id, player_id, %s, metrics"
            " FROM segmentation.player_activity WHERE game_id = %s AND activity_date = %s",
            (NEXT_DAY, game, NEXT_DAY - timedelta(days=7))).rowcount
        seconds = time.perf_counter() - t0
        conn.execute("ANALYZE segmentation.player_activity")
    return rows, seconds


def _machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem,
            "os": platform.platform(), "python (client)": platform.python_version()}


def _parts(timings: dict[str, float]) -> str:
    """categorize_all's phases in seconds, in the order they run."""
    keys = ("features", "read_features", "score", "stage_results", "write_history",
            "refresh_views")
    return " / ".join(f"{timings[k]:.1f}" for k in keys)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _reads(conn: psycopg.Connection) -> tuple[int, float, int]:
    """The database's blocks read from outside shared buffers, their read time in ms
    (track_io_timing) and its committed transactions, from pg_stat_database."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT blks_read, blk_read_time, xact_commit FROM pg_stat_database"
                       " WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), float(row[1]), int(row[2])


def _evict_from_page_cache(conn: psycopg.Connection, table: str) -> int | None:
    """Drop ``table``'s and its indexes' files from the kernel's page cache.

    posix_fadvise(DONTNEED) on each 1 GB segment file, so that the next reads come from
    the disk; pages still in shared_buffers stay there. Needs the server on this machine
    and read access to its data directory (make bench runs as root). Returns the files
    evicted, or None when that is not possible here.
    """
    rows = conn.execute(
        "SELECT current_setting('data_directory') || '/' || pg_relation_filepath(c.oid)"
        " FROM pg_class c WHERE c.oid = %s::regclass OR c.oid IN"
        " (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)",
        (table, table)).fetchall()
    evicted = 0
    try:
        for (first,) in rows:
            segment = Path(first)
            files = [segment, *sorted(segment.parent.glob(segment.name + ".[0-9]*"))]
            for f in files:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
                evicted += 1
    except OSError:
        return None
    return evicted


def _fmt_load(r: LoadResult) -> str:
    return (f"{r.tps:,.0f}/s | {r.p50_ms:.3f} | {r.p95_ms:.3f} | {r.p99_ms:.3f}"
            f" | {r.failed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000",
                        help="populations (players x 90 days) for calibration and batch")
    parser.add_argument("--scaling", default="25000,50000",
                        help="extra sizes for calibration time growth")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--seconds", type=int, default=10, help="per pgbench run")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL") or (
        f"postgresql://postgres@localhost:{os.environ.get('SEG_PGPORT', '55432')}/postgres")
    lib_env = os.environ.get("SEG_LIB_DIR")
    lib_dir = Path(lib_env) if lib_env else None
    sizes = [int(s) for s in args.sizes.split(",") if s]
    scaling = sorted({int(s) for s in args.scaling.split(",") if s} | set(sizes))
    clients = [int(c) for c in args.clients.split(",") if c]
    started = time.perf_counter()
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    dsn = _fresh_db(base, "segmentation_bench", lib_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        versions = conn.execute("SELECT version(), segmentation.python_runtime()").fetchone()
    runtime = versions[1]
    say("# Benchmarks")
    say()
    say(f"Written by `make bench` (bench/run.py) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        f" with sizes {sizes}, pgbench {args.seconds} s per run. Every figure is measured in"
        " the same run as its baseline; ratios are system / baseline. Memory is the"
        " backend's peak private memory (RssAnon, sampled every 50 ms: heap, Python,"
        " numpy) and, in parentheses, its peak resident memory (VmHWM), which also counts"
        " the shared buffers it touched.")
    say()
    say("| machine | |")
    say("|---|---|")
    for k, v in _machine().items():
        say(f"| {k} | {v} |")
    say(f"| PostgreSQL | {versions[0].split(',')[0]} |")
    say(f"| server Python / numpy / scikit-learn | {runtime['python']} / {runtime['numpy']}"
        f" / {runtime['scikit_learn']} |")
    say(f"| Unified Segmentation | {runtime['package']} |")
    say()

    # ---- generator, calibration and batch at each size
    rows_gen: list[str] = []
    rows_cal: list[str] = []
    rows_batch: list[str] = []
    ingests: list[str] = []
    largest = max(sizes)
    relayout_s: float | None = None
    for n in scaling:
        game = f"bench_{n}"
        gen = _populate(dsn, game, n, seed=n)
        rows_gen.append(f"| {n:,} | {gen['rows']:,} | {gen['seconds']:.1f} s"
                        f" | {gen['rows_per_second']:,.0f} |")
        if n == largest:
            relayout_s = _store_day_by_day(dsn)
        summary, cal_s, cal_mem = _timed_call(
            dsn, "SELECT segmentation.calibrate_taxonomy(%s, as_of => %s)", (game, AS_OF))
        pop = summary["population"]
        rows_cal.append(
            f"| {n:,} | first | {pop['calibrated_on']:,}{' (sample)' if pop['sampled'] else ''}"
            f" | {cal_s:.1f} s | {summary['timings']['load']:.1f} s"
            f" | {cal_mem} |")
        if not pop["sampled"]:
            # A recalibration knows the game's size from the version before: below the
            # sample size it aggregates every player in one pass.
            summary, cal_s, cal_mem = _timed_call(
                dsn, "SELECT segmentation.calibrate_taxonomy(%s, as_of => %s)", (game, AS_OF))
            rows_cal.append(
                f"| {n:,} | again | {summary['population']['calibrated_on']:,}"
                f" | {cal_s:.1f} s | {summary['timings']['load']:.1f} s | {cal_mem} |")
        if n in sizes:
            batch, batch_s, batch_mem = _timed_call(
                dsn, "SELECT segmentation.categorize_all(%s, %s)", (game, AS_OF))
            client = client_pipeline.run(dsn, game, AS_OF.isoformat())
            rows_batch.append(_batch_row(n, "first", batch, batch_s, batch_mem, client))
            # What a nightly job pays from then on: every current row refreshed in place.
            again, again_s, again_mem = _timed_call(
                dsn, "SELECT segmentation.categorize_all(%s, %s)", (game, AS_OF))
            rows_batch.append(
                f"| {n:,} | second | {again_s:.1f} s | {_parts(again['timings'])}"
                f" | {again_mem} | - | - | - | - |")
            # The next night: one more day arrives, then the nightly run and the pipeline
            # on that window (categorize_all reads only the changes, see window_cache).
            ingest = _ingest_next_day(dsn, game)
            ingests.append(f"| {n:,} | {ingest[0]:,} | {ingest[1]:.1f} s"
                           f" | {ingest[0] / ingest[1]:,.0f} |")
            # The machine is shared and one run can be off by seconds: the same run twice
            # in transactions that roll back, then the one that commits; the median.
            query = "SELECT segmentation.categorize_all(%s, %s)"
            trials = [_timed_rolled_back(dsn, query, (game, NEXT_DAY)) for _ in range(2)]
            nightly, nightly_s, nightly_mem = _timed_call(dsn, query, (game, NEXT_DAY))
            trials.append(nightly_s)
            client = client_pipeline.run(dsn, game, NEXT_DAY.isoformat())
            rows_batch.append(_batch_row(
                n, f"next day ({nightly['window_cache']['mode']})", nightly,
                statistics.median(trials), nightly_mem, client, trials))
        if n != largest:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DELETE FROM segmentation.player_activity WHERE game_id = %s",
                             (game,))
        print(f"... size {n} done at {time.perf_counter() - started:.0f} s", flush=True)

    say("## Generator throughput")
    say()
    say("| players | activity rows | wall | rows/s |")
    say("|---|---|---|---|")
    for row in rows_gen:
        say(row)
    if relayout_s is not None:
        say()
        say(f"The {largest:,}-player population is then rewritten in (game, day) order, the"
            f" layout daily ingestion produces (CLUSTER, {relayout_s:.0f} s): its figures"
            " below are measured on that layout, where a player's window spans as many heap"
            " pages as active days. Smaller populations keep the generator's"
            " player-by-player layout.")
    say()
    say("## calibrate_taxonomy: wall time, backend peak memory, growth with players")
    say()
    say("Populations above `segmentation.calibration_sample_size` (200,000) are fitted on a"
        " uniform sample; the feature load still scans every activity row of the window (to"
        " find the players and draw the sample) but reads metrics only from the sampled"
        " players' rows. A first calibration does that at every size, since it cannot know"
        " the size; a recalibration (`again`) of a game whose last version was not sampled"
        " aggregates every player in one pass.")
    say()
    say("| players | run | fitted on | wall | of which feature load"
        " | backend peak private (resident) |")
    say("|---|---|---|---|---|---|")
    for row in rows_cal:
        say(row)
    say()
    say("## categorize_all beside the client-side pipeline")
    say()
    say("Baseline (bench/client_pipeline.py): psycopg COPY of the same per-player aggregates"
        " out, the same preparation and projection in numpy, scikit-learn"
        " `GaussianMixture.predict_proba` with the stored parameters, then COPY back, finished"
        " two ways from the one export: *minimal* - player, segment, primary degree and"
        " memberships into an unlogged table; *same outputs* - also the axis scores and the"
        " anomaly score and flag (the taxonomy's anomaly model), into a logged table keyed by"
        " player, i.e. every value categorize_all stores per player. Neither keeps history"
        " or refreshes views. Ratio = baseline time / system time (above 1: the system is"
        " faster). The first run aggregates every player's window and keeps the aggregates"
        " (the window cache). The second run repeats categorize_all on the same data and"
        " as_of (its as_of day comes from the cache, no activity is read): every current row"
        " is refreshed in place, which is what each nightly run pays for history. *Next"
        " day*: one more day of activity is inserted (a copy of the same weekday's rows a"
        " week before, table below), then categorize_all and the pipeline run at as_of + 1"
        " day; categorize_all reads the day that left the window and the new as_of day (the"
        " day that entered the cached days, the last as_of, comes from the cache), and the"
        " pipeline exports the whole window as before. The next day's categorize_all runs"
        " three times on a new backend each - twice in a transaction that is rolled back,"
        " then once for good - and its wall time is their median (all three listed; the"
        " phases, memory and run mode are those of the last).")
    say()
    say("| players | run | categorize_all | features / reading / scoring / staging / history"
        " / views"
        " | backend peak private (resident) | pipeline, minimal | speed-up"
        " | pipeline, same outputs | speed-up |")
    say("|---|---|---|---|---|---|---|---|---|")
    for row in rows_batch:
        say(row)
    say()
    say("The next day's rows, inserted by one INSERT ... SELECT (the change-log triggers on"
        " player_activity included):")
    say()
    say("| players | rows | wall | rows/s |")
    say("|---|---|---|---|")
    for row in ingests:
        say(row)
    say()

    # ---- per-call latency under load, beside a primary-key SELECT
    game = f"bench_{largest}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_pk")
        conn.execute("CREATE TABLE bench_pk (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO bench_pk SELECT g, md5(g::text)"
                     " FROM generate_series(1, 1000000) g")
        conn.execute("VACUUM ANALYZE bench_pk")
        # For the reads of categorize_player(player_id): whether its pages came from the
        # page cache or from the disk (the figure swung from p95 2.4 to 184 ms between
        # runs on this machine).
        conn.execute(sql.SQL("ALTER DATABASE {} SET track_io_timing = on").format(
            sql.Identifier(conn.info.dbname)))
        # The platform's floor for a PL/Python categorize_player(features): a PL/Python
        # function of the same signature and result type that does no scoring.
        answer = ("(1, 1, 1, 'segment', 0.9, '{\"a\": 0.9, \"b\": 0.1}', '{\"x\": 0.5}', 0.1,"
                  " False, '{}')")
        conn.execute("CREATE OR REPLACE FUNCTION public.bench_floor(game_id text, f jsonb)"
                     " RETURNS segmentation.categorization LANGUAGE plpython3u STABLE AS $$\n"
                     f"return {answer}\n$$")
        scorer = conn.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
            " WHERE p.oid = 'segmentation.categorize_player(text, jsonb)'::regprocedure"
        ).fetchone()[0]
    pk = "\\set id random(1, 1000000)\nSELECT * FROM bench_pk WHERE id = :id;\n"

    def features_script(function: str) -> str:
        return ("\\set s random(1, 60)\n\\set m random(1, 3000)\n\\set d random(1, 90)\n"
                f"SELECT * FROM {function}('{game}', ('{{\"sessions\": ' || :s"
                " || ', \"minutes_played\": ' || :m || ', \"active_days\": ' || :d"
                " || '}')::jsonb);\n")

    feats = features_script("segmentation.categorize_player")
    floor = features_script("public.bench_floor")
    feats_plpython = features_script("segmentation._categorize_player_plpython")
    def by_id_script(as_of: date) -> str:
        return (f"\\set p random(0, {largest - 1})\n"
                f"SELECT * FROM segmentation.categorize_player('{game}',"
                f" 'p' || lpad(:p::text, 7, '0'), '{as_of}');\n")

    # At the last run's as_of (NEXT_DAY), through the window cache; a day later, what a
    # request path asks the day after a nightly run; and at an as_of before the cached
    # days, which reads the whole window from the activity rows.
    by_id = by_id_script(NEXT_DAY)
    by_id_later = by_id_script(NEXT_DAY + timedelta(days=1))
    by_id_whole = by_id_script(AS_OF)
    cache_part = "segmentation.window_cache_" + hashlib.md5(game.encode()).hexdigest()
    stored = (f"\\set p random(0, {largest - 1})\n"
              f"SELECT * FROM segmentation.player_current_segment WHERE game_id = '{game}'"
              " AND player_id = 'p' || lpad(:p::text, 7, '0');\n")
    say("## categorize_player under concurrent load (pgbench)")
    say()
    say(f"Baseline: `SELECT * FROM bench_pk WHERE id = :id` on a 1,000,000-row table with an"
        f" integer primary key. categorize_player(player_id) runs on the {largest:,}-player,"
        " 90-day population. Latencies in ms, from pgbench's per-transaction log."
        f" categorize_player(features) is the function installed here (language: {scorer}):"
        " with the native library, C (native/categorize_features.c); its PL/Python twin,"
        " segmentation._categorize_player_plpython, runs the same taxonomy in the row below it,"
        " and the floor row is a PL/Python function of the same signature and result type"
        " that returns a constant record. Each call sends a jsonb of three raw metrics"
        " (sessions, minutes_played, active_days); the answer names 7 segments and 3 axes."
        " The player_current_segment row is the last categorize_all's answer for a player"
        " (one row found through an index on (game_id, player_id)), what a request path reads"
        " when the nightly answer is recent enough. categorize_player(player_id) runs at the"
        f" last categorize_all's as_of ({NEXT_DAY}): it reads the player's row of the window"
        " cache and the player's activity row of that day; a day later, the activity rows of"
        " three days; at an as_of before the cached days, the player's whole window: one"
        " heap page per active day in this layout.")
    say()
    say("| statement | clients | throughput | p50 | p95 | p99 | failed | throughput vs PK SELECT |")
    say("|---|---|---|---|---|---|---|---|")
    io: list[str] = []
    base_tps: dict[int, float] = {}
    with psycopg.connect(dsn, autocommit=True) as stats:
        for c in clients:
            base_r = run_pgbench(dsn, pk, c, args.seconds)
            base_tps[c] = base_r.tps
            f_r = run_pgbench(dsn, feats, c, args.seconds)
            before = _reads(stats)
            p_r = run_pgbench(dsn, by_id, c, args.seconds)
            time.sleep(1.0)  # pgbench's backends report their counters as they exit
            after = _reads(stats)
            calls = max(1, after[2] - before[2])
            io.append(f"| {c} | {(after[0] - before[0]) / calls:.1f}"
                      f" | {(after[1] - before[1]) / calls:.3f} |")
            s_r = run_pgbench(dsn, stored, c, args.seconds)
            say(f"| PK SELECT (baseline) | {c} | {_fmt_load(base_r)} | 1.00x |")
            say(f"| categorize_player(features) | {c} | {_fmt_load(f_r)}"
                f" | {_ratio(f_r.tps, base_r.tps)} |")
            say(f"| categorize_player(player_id) | {c} | {_fmt_load(p_r)}"
                f" | {_ratio(p_r.tps, base_r.tps)} |")
            say(f"| player_current_segment, one player | {c} | {_fmt_load(s_r)}"
                f" | {_ratio(s_r.tps, base_r.tps)} |")
            if c == 4:
                for label, script in (
                        ("categorize_player(player_id), a day later"
                         f" ({NEXT_DAY + timedelta(days=1)})", by_id_later),
                        (f"categorize_player(player_id), whole window (as_of {AS_OF})",
                         by_id_whole),
                        ("categorize_player(features), PL/Python twin", feats_plpython),
                        ("floor: PL/Python, same record, no work", floor)):
                    r = run_pgbench(dsn, script, c, args.seconds)
                    say(f"| {label} | {c} | {_fmt_load(r)} | {_ratio(r.tps, base_r.tps)} |")
    say()
    say("Reads of categorize_player(player_id) during its runs above, per call (per"
        " transaction committed in the database): blocks read from outside shared buffers,"
        " and the time spent reading them (track_io_timing): a read the page cache serves"
        " takes a few microseconds.")
    say()
    say("| clients | blocks read per call | read time per call (ms) |")
    say("|---|---|---|")
    for row in io:
        say(row)
    say()
    # The bar of issue #4 (>= 0.7x the PK SELECT at 4 clients, p95 < 1 ms) in pairs run
    # back to back: on this shared 2-core machine one pgbench run's throughput moves by
    # several percent from the next, so one pair can land either side of a close bar.
    say("## categorize_player(features) against the PK SELECT, in pairs")
    say()
    say("Five pairs at 4 clients, each the PK SELECT run and then categorize_player(features)"
        " run right after it (same scripts as above); the verdict uses the median ratio.")
    say()
    say("| pair | PK SELECT | categorize_player(features) | p95 (ms) | ratio |")
    say("|---|---|---|---|---|")
    ratios = []
    for pair in range(1, 6):
        base_r = run_pgbench(dsn, pk, 4, args.seconds)
        f_r = run_pgbench(dsn, feats, 4, args.seconds)
        ratios.append(f_r.tps / base_r.tps)
        say(f"| {pair} | {base_r.tps:,.0f}/s | {f_r.tps:,.0f}/s | {f_r.p95_ms:.3f}"
            f" | {ratios[-1]:.2f}x |")
    median = sorted(ratios)[len(ratios) // 2]
    say()
    say(f"Median ratio {median:.2f}x: the bar (0.7x) is {'met' if median >= 0.7 else 'missed'}.")
    say()
    # The same player-id calls with the window's pages read from the disk: the figures
    # above depend on what the kernel happened to keep in its page cache.
    cold: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as stats:
        for label, script, c in (("through the cache", by_id, 1),
                                 ("through the cache", by_id, 4),
                                 (f"whole window (as_of {AS_OF})", by_id_whole, 4)):
            if (_evict_from_page_cache(stats, "segmentation.player_activity") is None
                    or _evict_from_page_cache(stats, cache_part) is None):
                break
            before = _reads(stats)
            r = run_pgbench(dsn, script, c, args.seconds)
            time.sleep(1.0)
            after = _reads(stats)
            calls = max(1, after[2] - before[2])
            cold.append(f"| {label} | {c} | {_fmt_load(r)}"
                        f" | {(after[0] - before[0]) / calls:.1f}"
                        f" | {(after[1] - before[1]) / calls:.3f}"
                        f" | {_ratio(r.tps, base_tps.get(c, 0.0))} |")
    say("## categorize_player(player_id) from the disk")
    say()
    if cold:
        say("Before each run, player_activity, the game's partition of the window cache and"
            " their indexes are dropped from the kernel's page cache (posix_fadvise DONTNEED"
            " on their files; what shared_buffers holds stays: the nightly run has just read"
            " and written some of those pages), so that what is not in shared buffers comes"
            " from the disk. Same statements and population as above; the ratio is against"
            " the PK SELECT above.")
        say()
        say("| categorize_player(player_id) | clients | throughput | p50 | p95 | p99 | failed"
            " | blocks read per call | read time per call (ms) | throughput vs PK SELECT |")
        say("|---|---|---|---|---|---|---|---|---|---|")
        for row in cold:
            say(row)
    else:
        say("Not measured: the server's data files cannot be opened from this process"
            " (another machine, or no read access to its data directory).")
    say()
    say(f"Total benchmark wall time: {time.perf_counter() - started:.0f} s.")
    Path(args.output).write_text("\n".join(out) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
