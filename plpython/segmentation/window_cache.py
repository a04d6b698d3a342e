"""Per-player window aggregates kept between categorize_all runs (a thin SPI adapter).

The window of ``as_of`` A with lookback L is the L days (A - L, A]. The cache of a game
holds every player's aggregates over the other L - 1 days, (A - L, A - 1], of its last
run: the active days as a bit string of L - 1 bits (bit i from the left is day
``cached_through - i``) and each metric's total; beside them, each metric's total on the
as_of day A (``as_of_totals``), which is not a cached day: it may still be filling. A run
at a later as_of A' (cached days through T = A' - 1) reads only what changed since the
cache's C = A - 1:

- the days that entered the cached span, (C, T], added; the first of them, A, from
  ``as_of_totals`` unless A was written since the last run read it (no note for it in
  the log), else from its rows;
- the days that left it, (C - L + 1, T - L + 1], subtracted from the totals (the bit
  strings shift them out);
- the players whose days were written since, recomputed from their rows
  (``segmentation.activity_changes``, filled by triggers on player_activity);
- the as_of day itself (at the same as_of again, from ``as_of_totals`` on the same terms).

A write to day A committed after the last run read it is noted as a written day (A was
not cached then): a run that sees the note reads A again; a run that does not (the write
committed after it read the log) misses it like any later write, and the run after it
finds a written cached day whose players are unknown, so it rebuilds.

Writes to a game without a cache leave no notes while no run is building one (READ
COMMITTED writers; see ``_lock_if_uncached`` in sql/150_window_cache.sql): the
writer holds the game's cache lock shared, so a run waits for it and reads its rows.

The cache is rebuilt whole when it cannot be trusted or would cost more than a rebuild:
no cache, another lookback or metric list, an as_of a window past the cached days, a
written cached day whose players the trigger could not know (a write that
raced a run), more than a quarter of the players to recompute, and once every
lookback_days days (additions and subtractions of non-integer metrics drift by float
rounding; this bounds it to one window's worth of operations). A one-day window, an
as_of before the cached days or outside the years 1000-9999, and a player_activity fed by
logical replication (whose apply worker fires no statement triggers) bypass the cache and
leave it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from segmentation import population
from segmentation.features import (
    FeatureRecipe,
    day_rows_sql,
    days_aggregate_sql,
    days_delta_sql,
    player_days_sql,
)
from segmentation.population import POPULATION_TABLE, drop_temp_table

CACHE_TABLE = "pg_temp.segmentation_window_cache"
CHANGES_TABLE = "pg_temp.segmentation_changes"
DIRTY_TABLE = "pg_temp.segmentation_dirty"
DELTA_TABLE = "pg_temp.segmentation_delta"
_TEMP_TABLES = ("segmentation_window_cache", "segmentation_changes", "segmentation_dirty",
                "segmentation_delta")
# Above this share of the cached players to recompute one by one, a rebuild is cheaper.
MAX_DIRTY_SHARE = 0.25
# Advisory lock namespace (beside sql_api's 7_301_00x): one user of a game's cache at a
# time (categorize_all, detect_anomalies, taxonomy_drift). Writers of a game without a
# cache hold it shared (sql/150_window_cache.sql, which repeats the number).
CACHE_LOCK = 7_301_004


@dataclass(frozen=True)
class Refresh:
    """How a run brought the cache up to date (reported by categorize_all)."""

    mode: str  # "incremental", "rebuilt" or "whole window" (cache bypassed)
    reason: str
    recomputed_players: int
    players: int  # staged: players in the window

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason,
                "recomputed_players": self.recomputed_players}


def stage(plpy: Any, game_id: str, as_of: str, recipe: FeatureRecipe) -> Refresh:
    """Stage the window's aggregates of an activity recipe, through the cache if it applies.

    The population table (:data:`population.POPULATION_TABLE`) gets the columns
    player_id, c1..c(3 + m): active_days, days_since_last, tenure_days and the m metric
    totals, as :func:`features.activity_aggregate_sql` computes them over the window
    (and, for the cache, ``days`` and ``totals`` of the cached days and ``fresh``, the
    as_of day's totals).
    """
    lookback, metrics = int(recipe.lookback_days or 0), list(recipe.metrics)
    kept = lookback - 1  # cached days: the window without its as_of day
    # ISO text whatever the session's DateStyle; dates Python cannot shift by a window
    # (infinity, BC, far years) take the whole-window path, which answers as before.
    row = plpy.execute(plpy.prepare(
        "SELECT to_char($1::date, 'YYYY-MM-DD') AS d,"
        " $1::date BETWEEN '1000-01-01' AND '9999-12-31' AS ok,"
        " pg_catalog.current_setting('transaction_isolation') = 'read committed' AS rc,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel"
        "  WHERE srrelid = 'segmentation.player_activity'::pg_catalog.regclass) AS subscribed",
        ["date"]), [as_of])[0]
    skip = ("as_of is outside the years 1000-9999" if not row["ok"] else
            "a one-day window has no days to cache" if kept < 1 else
            # The apply worker of logical replication fires no statement triggers.
            "player_activity is a logical replication target" if row["subscribed"] else None)
    if skip is not None:
        if row["subscribed"]:
            # Replicated writes go unnoticed: a cache kept from before is stale for good.
            plpy.execute(plpy.prepare(
                "DELETE FROM segmentation.window_cache_state WHERE game_id = $1", ["text"]),
                [game_id])
        n = population.stage_window(plpy, game_id, as_of, recipe)
        return Refresh("whole window", skip, 0, n)
    a = date.fromisoformat(row["d"])
    through = a - timedelta(days=1)
    for table in _TEMP_TABLES:
        drop_temp_table(plpy, table)
    population.drop_population_table(plpy)
    plpy.execute(plpy.prepare("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                              ["int4", "text"]), [CACHE_LOCK, game_id])
    # Before the state is read: a TRUNCATE in progress (which empties the cache) finishes
    # first.
    plpy.execute("LOCK TABLE segmentation.player_activity IN ACCESS SHARE MODE")
    # FOR UPDATE: under REPEATABLE READ or SERIALIZABLE a state row changed or deleted
    # since the snapshot (by a run, an install or by hand; writers may have noted
    # nothing since) fails the run with a serialization error instead of being trusted.
    rows = plpy.execute(plpy.prepare(
        "SELECT to_char(cached_through, 'YYYY-MM-DD') AS cached_through,"
        " to_char(built_through, 'YYYY-MM-DD') AS built_through, lookback_days, metrics,"
        " players, holds_as_of_day FROM segmentation.window_cache_state WHERE game_id = $1"
        " FOR UPDATE",
        ["text"]), [game_id])
    state = rows[0] if rows else None
    # The game's partition of window_cache (migration 0006), if a run created it.
    part = plpy.execute(plpy.prepare(
        "SELECT pg_catalog.to_regclass('segmentation.' || pg_catalog.quote_ident("
        "'window_cache_' || pg_catalog.md5($1)))::text AS rel", ["text"]), [game_id])[0]["rel"]
    if part is None:
        state = None  # dropped by hand: nothing cached to trust
    if state is not None and through < date.fromisoformat(state["cached_through"]):
        # A look back in time (say taxonomy_drift of last month) leaves the cache, and
        # its log, to the nightly run.
        n = population.stage_window(plpy, game_id, as_of, recipe)
        return Refresh("whole window", "as_of is before the cached days", 0, n)
    if state is None and not row["rc"]:
        # Writers of a game without a cache note nothing while they hold its lock; a
        # run waits for them, but an older snapshot (REPEATABLE READ, SERIALIZABLE)
        # may not see their rows. Such a run answers from its snapshot and builds no
        # cache; the next READ COMMITTED run does.
        n = population.stage_window(plpy, game_id, as_of, recipe)
        return Refresh("whole window", "no cache yet, and the transaction is not READ"
                                       " COMMITTED", 0, n)
    # The change log is read before any activity row: a write committed later is
    # either seen by the reads below or still logged for the next run.
    population.create_temp_table(plpy, "segmentation_changes",
                                 "activity_date date, player_id text")
    plpy.execute(plpy.prepare(
        f"WITH gone AS (DELETE FROM segmentation.activity_changes WHERE game_id = $1"
        f" RETURNING activity_date, player_id) INSERT INTO {CHANGES_TABLE} SELECT * FROM gone",
        ["text"]), [game_id])
    reason = _rebuild_reason(plpy, state, lookback, metrics, through)
    mode, n_dirty, built = "rebuilt", 0, through
    if state is not None and reason is None:
        cached = date.fromisoformat(state["cached_through"])
        # Two cached spans back: a write to a day the previous run subtracted, committed
        # while that run ran, may have been subtracted in its new form (its own snapshot).
        n_dirty = _mark_dirty(plpy, cached - timedelta(days=2 * kept), cached)
        if n_dirty > MAX_DIRTY_SHARE * max(int(state["players"]), 1):
            reason = f"{n_dirty} players with written cached days"
        else:
            # The last run's as_of day, as that run read it, unless written since (or the
            # cache was written by a version that did not keep it).
            day = cached + timedelta(days=1)
            reuse = bool(state["holds_as_of_day"]) and not plpy.execute(plpy.prepare(
                f"SELECT EXISTS (SELECT 1 FROM {CHANGES_TABLE} WHERE activity_date = $1)"
                " AS written", ["date"]), [day.isoformat()])[0]["written"]
            n = _advance(plpy, game_id, part, cached, through, a, kept, metrics, n_dirty,
                         reuse)
            mode, reason = "incremental", f"{(through - cached).days} day(s) advanced"
            if reuse:
                reason += f", {day.isoformat()} from the cache"
            built = date.fromisoformat(state["built_through"])
    if mode == "rebuilt":
        n = _rebuild(plpy, game_id, through, a, kept, metrics)
        n_dirty = 0
    _save(plpy, game_id, through, lookback, metrics, built)
    return Refresh(mode, str(reason), n_dirty, n)


def _rebuild_reason(plpy: Any, state: dict[str, Any] | None, lookback: int,
                    metrics: list[str], through: date) -> str | None:
    if state is None:
        return "no cache"
    if int(state["lookback_days"]) != lookback or list(state["metrics"]) != metrics:
        return "the taxonomy reads another window or other metrics"
    kept = lookback - 1
    cached = date.fromisoformat(state["cached_through"])
    if (through - cached).days >= kept:
        return "the cached days have all left the window"
    if (through - date.fromisoformat(state["built_through"])).days >= lookback:
        return "periodic rebuild (once per window length)"
    # Two cached spans back, like the dirty players: a write that opened before the run
    # that cached its day and committed during the next one was subtracted in its new
    # form, and the trigger could not name its player.
    unknown = plpy.execute(plpy.prepare(
        f"SELECT count(*) AS n FROM {CHANGES_TABLE} WHERE player_id IS NULL"
        f" AND activity_date > $1::date - $2 AND activity_date <= $1::date",
        ["date", "int4"]), [cached.isoformat(), 2 * kept])[0]["n"]
    if unknown:
        return "cached days were written while a run was building the cache"
    return None


def _mark_dirty(plpy: Any, after: date, through: date) -> int:
    """Collect the players whose days (after, through] were written; their count."""
    n = plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE segmentation_dirty ON COMMIT DROP AS"
        f" SELECT DISTINCT player_id FROM {CHANGES_TABLE} WHERE player_id IS NOT NULL"
        f" AND activity_date > $1::date AND activity_date <= $2::date",
        ["date", "date"]), [after.isoformat(), through.isoformat()]).nrows()
    # With statistics the recomputation below probes the primary key per player instead
    # of scanning the window.
    plpy.execute(f"ANALYZE {DIRTY_TABLE}")
    return n


def _population_sql(m: int, merged: str, *, by_player: bool = False) -> str:
    """SELECT of the population table's rows from ``merged``.

    ``merged`` is a FROM item with player_id, ``days`` (bit(kept): the new cached
    days), ``totals`` (float8[m]: their totals) and ``fresh`` (float8[m]: the as_of
    day's totals, NULL if the player was not active that day). Columns: player_id,
    c1..c(3 + m) as the whole-window aggregate has them (active days, days since the
    last active day, tenure: as_of minus the first active day, plus one; the metric
    totals), then days, totals and fresh for the cache. A player active on no day is left
    out.
    ``by_player``: stored in player id order.
    """
    # A player whose cached days all left the window counts the as_of day alone, not
    # the rounding left over from subtracting them.
    totals = ", ".join(f"(CASE WHEN bit_count(n.days) = 0 THEN 0 ELSE n.totals[{i}] END"
                       f" + coalesce(n.fresh[{i}], 0)) AS c{3 + i}" for i in range(1, m + 1))
    # octet_length, not length: the bit string's text is ASCII, and length would count
    # its UTF-8 characters one by one (1M players x lookback_days characters).
    return (
        "SELECT n.player_id,"
        " (bit_count(n.days) + (n.fresh IS NOT NULL)::int)::float8 AS c1,"
        " (CASE WHEN n.fresh IS NOT NULL THEN 0 ELSE position(B'1' IN n.days) END)::float8"
        " AS c2,"
        " (CASE WHEN bit_count(n.days) = 0 THEN 1"
        "  ELSE octet_length(rtrim(n.days::text, '0')) + 1 END)::float8 AS c3,"
        f" {totals}, n.days, n.totals, n.fresh"
        # OFFSET 0: each row's days and totals are computed once, not once per use.
        f" FROM ({merged} OFFSET 0) n WHERE bit_count(n.days) > 0 OR n.fresh IS NOT NULL"
        + (" ORDER BY n.player_id" if by_player else ""))


def _advance(plpy: Any, game_id: str, part: str, cached: date, through: date, as_of: date,
             kept: int, metrics: list[str], n_dirty: int, reuse: bool) -> int:
    """The population table, with the cache of ``kept`` days through ``through``, from
    the cache through ``cached`` (the game's partition ``part``, a regclass's text):
    days in, days out, the as_of day, then the dirty players recomputed. Returns the
    players staged.

    ``reuse``: the day after ``cached`` (the last run's as_of day) comes from the
    cache's as_of_totals instead of its rows. The days that entered, the days that left
    and the as_of day are read together first into one delta table (aggregated, or for
    a run one day later joined by player: each is then one day's players), so that the
    game's cached players are joined once.
    """
    m = len(metrics)
    shift = (through - cached).days
    zero = f"B'0'::bit({kept})"
    # The game's partition itself: the statement touches no other game's partition
    # whatever its plan (another game's run may hold its own locked, see _save).
    old = f"(SELECT c.player_id, c.days, c.totals, c.as_of_totals FROM {part} c) o"
    if shift == 0 and reuse:
        # The same as_of again: nothing entered or left, and the as_of day is cached.
        merged = (f"SELECT o.player_id, o.days::bit({kept}) AS days, o.totals,"
                  f" o.as_of_totals AS fresh FROM {old}")
    else:
        # Only a cached player has days to subtract (a player with expired rows is cached
        # unless dirty, and dirty players are recomputed below).
        totals = ", ".join(
            f"coalesce(o.totals[{i}] - coalesce(d.expired[{i}], 0), 0)"
            f" + coalesce(d.added[{i}], 0)"
            + (f" + coalesce(o.as_of_totals[{i}], 0)" if reuse else "")
            for i in range(1, m + 1))
        # shift < kept (else _rebuild_reason rebuilds): the days that left end before the
        # days that entered begin, as days_delta_sql requires.
        if shift == 1:
            _create_day_delta(plpy, game_id, through, as_of, kept, metrics, reuse)
        else:
            first_added = cached + timedelta(days=1) if reuse else cached
            plpy.execute(plpy.prepare(
                f"CREATE TEMP TABLE {DELTA_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
                f" {days_delta_sql(m, bits_length=kept)}",
                ["text", "date", "date", "text[]", "date", "date", "date"]),
                [game_id, first_added.isoformat(), through.isoformat(), metrics,
                 (cached - timedelta(days=kept)).isoformat(),
                 (through - timedelta(days=kept)).isoformat(), as_of.isoformat()])
        # With its true size (the planner's guess for the aggregate is far off) the join
        # below can hash the delta and read the cached players in their stored order; the
        # population, the batch and its history write then mostly follow the order of the
        # game's current rows (see _rebuild). Only speed depends on it.
        plpy.execute(f"ANALYZE {DELTA_TABLE}")
        # The reused day, cached + 1, is bit shift - 1 of the new days.
        reused_day = (f" | CASE WHEN o.as_of_totals IS NULL THEN {zero}"
                      f" ELSE B'1'::bit({kept}) >> {shift - 1} END" if reuse else "")
        # A player with expired rows is in the old cache unless marked dirty: a later
        # write to those days was logged (or forced a rebuild).
        merged = (
            f"SELECT player_id, coalesce(o.days::bit({kept}) >> {shift}, {zero})"
            f" | coalesce(d.days, {zero}){reused_day} AS days,"
            f" ARRAY[{totals}]::float8[] AS totals, d.fresh"
            f" FROM {old} FULL JOIN {DELTA_TABLE} d USING (player_id)")
    if n_dirty:
        # Without dirty players (the usual night) the clause is left out: the planner
        # would probe the empty table once per player (about 1 s at 1M players).
        player = "o.player_id" if shift == 0 and reuse else "coalesce(o.player_id, d.player_id)"
        merged += (f" WHERE NOT EXISTS (SELECT 1 FROM {DIRTY_TABLE} x"
                   f"  WHERE x.player_id = {player})")
    # The merge reads the delta table; of the parameters, only the game ($1).
    n = plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE {POPULATION_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
        f" {_population_sql(m, merged)}", ["text"]), [game_id]).nrows()
    if not n_dirty:
        return n
    # The dirty players, from their rows.
    span = days_aggregate_sql(m, bits_length=kept, players_from=DIRTY_TABLE)
    fresh = days_aggregate_sql(m, bits_length=None, players_from=DIRTY_TABLE, bounds=(3, 5))
    return n + plpy.execute(plpy.prepare(
        f"INSERT INTO {POPULATION_TABLE}"
        f" {_population_sql(m, _with_fresh(span, fresh, m, kept))}",
        ["text", "date", "date", "text[]", "date"]),
        [game_id, (through - timedelta(days=kept)).isoformat(), through.isoformat(), metrics,
         as_of.isoformat()]).nrows()


def _create_day_delta(plpy: Any, game_id: str, through: date, as_of: date, kept: int,
                      metrics: list[str], reuse: bool) -> None:
    """The delta table of a run one day after the cache's, as days_delta_sql has it.

    Each span is then at most one day - the day that left, the day that entered (unless
    reused) and the as_of day - so their rows are joined by player, not aggregated: on
    two days at 1M players, 2.4-2.6 s against 3.1-4.9 s for the aggregate.
    """
    m = len(metrics)
    days, added, joined = f"NULL::bit({kept})", "NULL::float8[]", ""
    params = ["text", "date", "date", "text[]"]
    args: list[Any] = [game_id, (through - timedelta(days=kept)).isoformat(),
                       as_of.isoformat(), metrics]
    if not reuse:
        # The entered day is the newest cached day: bit 0.
        days = f"CASE WHEN a.player_id IS NOT NULL THEN B'1'::bit({kept}) END"
        added = "a.totals"
        joined = (f" FULL JOIN ({day_rows_sql(m, day='$5', metrics='$4')}) a"
                  " USING (player_id)")
        params.append("date")
        args.append(through.isoformat())
    plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE {DELTA_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
        f" SELECT player_id, {days} AS days, {added} AS added, e.totals AS expired,"
        f" f.totals AS fresh FROM ({day_rows_sql(m, day='$2', metrics='$4')}) e"
        f" FULL JOIN ({day_rows_sql(m, day='$3', metrics='$4')}) f USING (player_id)"
        f"{joined}", params), args)


def _with_fresh(span: str, fresh: str, m: int, kept: int) -> str:
    """``span`` (cached days) joined with ``fresh`` (the as_of day) for _population_sql."""
    return (f"SELECT player_id, coalesce(c.days, B'0'::bit({kept})) AS days,"
            f" coalesce(c.totals, array_fill(0::float8, ARRAY[{m}])) AS totals,"
            f" f.totals AS fresh FROM ({span}) c FULL JOIN ({fresh}) f USING (player_id)")


def _rebuild(plpy: Any, game_id: str, through: date, as_of: date, kept: int,
             metrics: list[str]) -> int:
    """The population table, with the cache of ``kept`` days through ``through``, from
    the rows; the players staged."""
    m = len(metrics)
    # The cached days first, as CREATE TABLE AS: their aggregation may run with
    # parallel workers (not so an INSERT).
    plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE {CACHE_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
        f" {days_aggregate_sql(m, bits_length=kept)}", ["text", "date", "date", "text[]"]),
        [game_id, (through - timedelta(days=kept)).isoformat(), through.isoformat(), metrics])
    fresh = days_aggregate_sql(m, bits_length=None, bounds=(3, 5))
    merged = _with_fresh(f"SELECT * FROM {CACHE_TABLE}", fresh, m, kept)
    # In player id order, which the cache then mostly keeps (see _advance) and a game's
    # first batch gives its current rows: later runs update those rows in about their
    # stored order (only speed depends on it).
    return plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE {POPULATION_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
        f" {_population_sql(m, merged, by_player=True)}",
        ["text", "date", "date", "text[]", "date"]),
        [game_id, (through - timedelta(days=kept)).isoformat(), through.isoformat(), metrics,
         as_of.isoformat()]).nrows()


def _save(plpy: Any, game_id: str, through: date, lookback: int, metrics: list[str],
          built: date) -> None:
    """Replace the game's cache by the cached days and as_of day of the population table.

    The game's partition is emptied (TRUNCATE; created on the game's first run) and
    filled again: at 1M players 0.7-0.8 s, against 1.7 s for DELETE and INSERT into one
    indexed table, which also left a million dead rows a night.
    """
    part = plpy.execute(plpy.prepare(
        "SELECT segmentation._empty_window_cache($1)::text AS rel", ["text"]),
        [game_id])[0]["rel"]
    n = plpy.execute(plpy.prepare(
        f"INSERT INTO {part} (game_id, player_id, days, totals, as_of_totals)"
        f" SELECT $1, player_id, days, totals, fresh FROM {POPULATION_TABLE}",
        ["text"]), [game_id]).nrows()
    plpy.execute(plpy.prepare("SELECT segmentation._index_window_cache($1)", ["text"]),
                 [game_id])
    plpy.execute(plpy.prepare(
        "INSERT INTO segmentation.window_cache_state (game_id, cached_through, built_through,"
        " lookback_days, metrics, players, holds_as_of_day)"
        " VALUES ($1, $2, $3, $4, $5, $6, true)"
        " ON CONFLICT (game_id) DO UPDATE SET cached_through = excluded.cached_through,"
        " built_through = excluded.built_through, lookback_days = excluded.lookback_days,"
        " metrics = excluded.metrics, players = excluded.players, holds_as_of_day = true,"
        " updated_at = now()",
        ["text", "date", "date", "int4", "text[]", "int8"]),
        [game_id, through.isoformat(), built.isoformat(), lookback, metrics, n])


class PlayerReader:
    """One player's window aggregates through the game's cache, for categorize_player.

    Where the exact path reads one heap page per active day of the player's window,
    this reads the player's cache row (through the partition's player index, which each
    run builds: segmentation._index_window_cache) and only the player's rows of the days
    that entered or left the window since the run's cached days: at the run's as_of,
    that day's row; a day later, the two newest days' rows and the one of the day that
    left. Plans for one game and recipe, kept with the cached taxonomy.
    """

    def __init__(self, plpy: Any, game_id: str, recipe: FeatureRecipe) -> None:
        self.game_id = game_id
        self.metrics = list(recipe.metrics)
        self.lookback = int(recipe.lookback_days or 0)
        # The game's partition and its player index, schema-qualified and quoted, named
        # once here (as _empty_window_cache and _index_window_cache name them).
        names = plpy.execute(plpy.prepare(
            "SELECT 'segmentation.' || pg_catalog.quote_ident('window_cache_'"
            " || pg_catalog.md5($1)) AS part, 'segmentation.' || pg_catalog.quote_ident("
            "'window_cache_' || pg_catalog.md5($1) || '_player') AS index", ["text"]),
            [game_id])[0]
        self.part_name, self.index_name = names["part"], names["index"]
        # The cache lock tried shared (never waited for): a run holds it exclusively
        # while it rewrites the game's cache, whose partition it then holds ACCESS
        # EXCLUSIVE until it commits; held, it keeps a run from starting until this
        # transaction ends. The partition is looked up on every call (a run creates it,
        # an admin may drop it). A partition without its player index (a run in progress
        # dropped it, or an older version wrote it) is not read; nor is the cache on a
        # hot standby, where unlogged tables cannot be read (and are empty).
        self.gate = plpy.prepare(
            "SELECT pg_catalog.isfinite($3::date) AS finite,"
            " CASE WHEN pg_catalog.pg_is_in_recovery() THEN false"
            "  ELSE pg_catalog.pg_try_advisory_xact_lock_shared($1, pg_catalog.hashtext($2))"
            " END AS free,"
            " pg_catalog.to_regclass($4)::pg_catalog.oid AS part,"
            " pg_catalog.to_regclass($5) IS NOT NULL AS indexed",
            ["int4", "text", "date", "text", "text"])
        self.part: int | None = None
        self.cached: Any = None
        self.days = plpy.prepare(player_days_sql(len(self.metrics)),
                                 ["text", "text", "date", "text[]", "int4", "int4"])

    def _prepare_cached(self, plpy: Any, part: int) -> None:
        # The cached days of the player, when the cache holds the recipe's window, ends
        # before as_of by less than a window, and no write since the run touched the
        # player's cached days (or those two cached spans back, which a run may have
        # subtracted in a newer form: window_cache._mark_dirty) or any cached day of an
        # unknown player (window_cache._rebuild_reason).
        self.cached = plpy.prepare(
            "SELECT $2::date - s.cached_through AS ahead, w.days::text AS days, w.totals"
            f" FROM segmentation.window_cache_state s JOIN {self.part_name} w"
            " ON w.player_id = $3"
            " WHERE s.game_id = $1 AND s.lookback_days = $4 AND s.metrics = $5"
            " AND s.cached_through < $2::date AND $2::date - s.cached_through < s.lookback_days"
            " AND NOT EXISTS (SELECT 1 FROM segmentation.activity_changes n"
            "  WHERE n.game_id = $1 AND (n.player_id = $3 OR n.player_id IS NULL)"
            "  AND n.activity_date > s.cached_through - 2 * (s.lookback_days - 1)"
            "  AND n.activity_date <= s.cached_through)",
            ["text", "date", "text", "int4", "text[]"])
        self.part = part

    def aggregates(self, plpy: Any, player_id: str, as_of: str) -> list[float] | None:
        """[active_days, days_since_last, tenure_days, metric totals...] of the player's
        window up to ``as_of``, as features.activity_aggregate_sql computes them; None
        when the cache cannot answer (the caller then reads the whole window)."""
        kept = self.lookback - 1
        if kept < 1:
            return None
        gate = plpy.execute(self.gate, [CACHE_LOCK, self.game_id, as_of, self.part_name,
                                        self.index_name])[0]
        if not (gate["finite"] and gate["free"] and gate["indexed"]) or gate["part"] is None:
            return None
        if gate["part"] != self.part:
            # A new partition (created, or dropped and created again): plan for it.
            self._prepare_cached(plpy, gate["part"])
        rows = plpy.execute(self.cached, [self.game_id, as_of, player_id, self.lookback,
                                          self.metrics])
        if not rows:
            return None
        ahead, bits, cached_totals = int(rows[0]["ahead"]), rows[0]["days"], rows[0]["totals"]
        m = len(self.metrics)
        if len(bits) != kept or len(cached_totals) != m:
            return None
        # Bit i is the day ahead + i before as_of; those past the window's start left it.
        remain = kept + 1 - ahead
        backs = [ahead + i for i in range(remain) if bits[i] == "1"]
        leaving = {ahead + i for i in range(remain, kept) if bits[i] == "1"}
        totals = [float(v) for v in cached_totals]
        entered: list[tuple[int, list[float]]] = []
        for row in plpy.execute(self.days, [self.game_id, player_id, as_of, self.metrics,
                                            ahead, kept]):
            back, values = int(row["back"]), row["totals"]
            if back < ahead:
                entered.append((back, values))
            elif back in leaving:
                leaving.discard(back)
                totals = [t - v for t, v in zip(totals, values, strict=True)]
            else:
                return None  # a row the cache did not count: written since, unnoted
        if leaving:
            return None  # a row the cache counted is gone
        if not backs:
            # As the runs do: no cached day left counts nothing, not the rounding left
            # over from subtracting them (window_cache._population_sql).
            totals = [0.0] * m
        for back, values in entered:
            backs.append(back)
            totals = [t + v for t, v in zip(totals, values, strict=True)]
        if not backs:
            return None
        return [float(len(backs)), float(min(backs)), float(max(backs) + 1), *totals]
