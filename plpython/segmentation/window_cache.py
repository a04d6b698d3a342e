"""Per-player window aggregates kept between categorize_all runs (a thin SPI adapter).

The window of ``as_of`` A with lookback L is the L days (A - L, A]. The cache of a game
holds every player's aggregates over the other L - 1 days, (A - L, A - 1], of its last
run: the active days as a bit string of L - 1 bits (bit i from the left is day
``cached_through - i``) and each metric's total. The as_of day is never cached: it may
still be filling. A run at a later as_of A' (cached days through T = A' - 1) reads only
what changed since the cache's C = A - 1:

- the days that entered the cached span, (C, T], added;
- the days that left it, (C - L + 1, T - L + 1], subtracted from the totals (the bit
  strings shift them out);
- the players whose days were written since, recomputed from their rows
  (``segmentation.activity_changes``, filled by triggers on player_activity);
- the as_of day itself.

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
from segmentation.features import FeatureRecipe, days_aggregate_sql
from segmentation.population import POPULATION_TABLE, drop_temp_table

CACHE_TABLE = "pg_temp.segmentation_window_cache"
CHANGES_TABLE = "pg_temp.segmentation_changes"
DIRTY_TABLE = "pg_temp.segmentation_dirty"
FRESH_TABLE = "pg_temp.segmentation_fresh"
_TEMP_TABLES = ("segmentation_window_cache", "segmentation_changes", "segmentation_dirty",
                "segmentation_fresh")
# Above this share of the cached players to recompute one by one, a rebuild is cheaper.
MAX_DIRTY_SHARE = 0.25
# Advisory lock namespace (beside sql_api's 7_301_00x): one user of a game's cache at a
# time (categorize_all, detect_anomalies, taxonomy_drift).
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
    totals, as :func:`features.activity_aggregate_sql` computes them over the window.
    """
    lookback, metrics, m = int(recipe.lookback_days or 0), list(recipe.metrics), len(recipe.metrics)
    kept = lookback - 1  # cached days: the window without its as_of day
    # ISO text whatever the session's DateStyle; dates Python cannot shift by a window
    # (infinity, BC, far years) take the whole-window path, which answers as before.
    row = plpy.execute(plpy.prepare(
        "SELECT to_char($1::date, 'YYYY-MM-DD') AS d,"
        " $1::date BETWEEN '1000-01-01' AND '9999-12-31' AS ok,"
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
    rows = plpy.execute(plpy.prepare(
        "SELECT to_char(cached_through, 'YYYY-MM-DD') AS cached_through,"
        " to_char(built_through, 'YYYY-MM-DD') AS built_through, lookback_days, metrics,"
        " players FROM segmentation.window_cache_state WHERE game_id = $1", ["text"]), [game_id])
    state = rows[0] if rows else None
    if state is not None and through < date.fromisoformat(state["cached_through"]):
        # A look back in time (say taxonomy_drift of last month) leaves the cache, and
        # its log, to the nightly run.
        n = population.stage_window(plpy, game_id, as_of, recipe)
        return Refresh("whole window", "as_of is before the cached days", 0, n)
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
            _advance(plpy, game_id, cached, through, kept, metrics)
            mode, reason = "incremental", f"{(through - cached).days} day(s) advanced"
            built = date.fromisoformat(state["built_through"])
    if mode == "rebuilt":
        _rebuild(plpy, game_id, through, kept, metrics)
        n_dirty = 0
    plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE segmentation_fresh ON COMMIT DROP AS"
        f" {days_aggregate_sql(m, bits_length=None)}",
        ["text", "date", "date", "text[]"]), [game_id, through.isoformat(), a.isoformat(),
                                              metrics])
    _save(plpy, game_id, through, lookback, metrics, built)
    totals = ", ".join(f"coalesce(c.totals[{i}], 0) + coalesce(f.totals[{i}], 0) AS c{3 + i}"
                       for i in range(1, m + 1))
    # Same columns as the whole-window aggregate: active days, days since the last active
    # day and tenure (as_of minus the first active day, plus one), from the bit strings.
    n = plpy.execute(
        f"CREATE TEMP TABLE {POPULATION_TABLE.removeprefix('pg_temp.')} ON COMMIT DROP AS"
        " SELECT player_id,"
        " (coalesce(bit_count(c.days), 0) + (f.player_id IS NOT NULL)::int)::float8 AS c1,"
        " (CASE WHEN f.player_id IS NOT NULL THEN 0"
        "  ELSE position(B'1' IN c.days) END)::float8 AS c2,"
        " (CASE WHEN c.player_id IS NULL THEN 1"
        "  ELSE length(rtrim(c.days::text, '0')) + 1 END)::float8 AS c3,"
        f" {totals}"
        f" FROM {CACHE_TABLE} c FULL JOIN {FRESH_TABLE} f USING (player_id)").nrows()
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


def _advance(plpy: Any, game_id: str, cached: date, through: date, kept: int,
             metrics: list[str]) -> None:
    """The cache of ``kept`` days through ``through`` from the one through ``cached``:
    days in, days out, then the dirty players recomputed."""
    m = len(metrics)
    shift = (through - cached).days
    zero = f"B'0'::bit({kept})"
    added = days_aggregate_sql(m, bits_length=kept)
    expired = days_aggregate_sql(m, bits_length=None, bounds=(5, 6))
    totals = ", ".join(
        f"coalesce(o.totals[{i}], 0) + coalesce(a.totals[{i}], 0) - coalesce(s.totals[{i}], 0)"
        for i in range(1, m + 1))
    # A player with expired rows is in the old cache unless marked dirty: a later write
    # to those days was logged (or forced a rebuild).
    plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE segmentation_window_cache ON COMMIT DROP AS"
        f" SELECT * FROM (SELECT player_id,"
        f" coalesce(o.days::bit({kept}) >> {shift}, {zero}) | coalesce(a.days, {zero})"
        f" AS days, ARRAY[{totals}]::float8[] AS totals"
        f" FROM (SELECT c.player_id, c.days, c.totals FROM segmentation.window_cache c"
        f"  WHERE c.game_id = $1 AND NOT EXISTS"
        f"  (SELECT 1 FROM {DIRTY_TABLE} d WHERE d.player_id = c.player_id)) o"
        f" LEFT JOIN ({expired}) s USING (player_id)"
        f" FULL JOIN ({added}) a USING (player_id)) n"
        f" WHERE bit_count(n.days) > 0 AND NOT EXISTS"
        f" (SELECT 1 FROM {DIRTY_TABLE} d WHERE d.player_id = n.player_id)",
        ["text", "date", "date", "text[]", "date", "date"]),
        [game_id, cached.isoformat(), through.isoformat(), metrics,
         (cached - timedelta(days=kept)).isoformat(),
         (through - timedelta(days=kept)).isoformat()])
    _aggregate_cached_span(plpy, f"INSERT INTO {CACHE_TABLE}", game_id, through, kept,
                           metrics, players_from=DIRTY_TABLE)


def _rebuild(plpy: Any, game_id: str, through: date, kept: int,
             metrics: list[str]) -> None:
    # CREATE TABLE AS: the aggregation may run with parallel workers (not so INSERT).
    _aggregate_cached_span(plpy, "CREATE TEMP TABLE segmentation_window_cache ON COMMIT DROP AS",
                           game_id, through, kept, metrics)


def _aggregate_cached_span(plpy: Any, into: str, game_id: str, through: date, kept: int,
                           metrics: list[str], players_from: str | None = None) -> None:
    """``into`` (an INSERT or CREATE TABLE AS prefix) the ``kept`` days through ``through``."""
    plpy.execute(plpy.prepare(
        f"{into} {days_aggregate_sql(len(metrics), bits_length=kept, players_from=players_from)}",
        ["text", "date", "date", "text[]"]),
        [game_id, (through - timedelta(days=kept)).isoformat(), through.isoformat(), metrics])


def _save(plpy: Any, game_id: str, through: date, lookback: int, metrics: list[str],
          built: date) -> None:
    plpy.execute(plpy.prepare("DELETE FROM segmentation.window_cache WHERE game_id = $1",
                              ["text"]), [game_id])
    n = plpy.execute(plpy.prepare(
        f"INSERT INTO segmentation.window_cache (game_id, player_id, days, totals)"
        f" SELECT $1, player_id, days, totals FROM {CACHE_TABLE}", ["text"]), [game_id]).nrows()
    plpy.execute(plpy.prepare(
        "INSERT INTO segmentation.window_cache_state (game_id, cached_through, built_through,"
        " lookback_days, metrics, players) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (game_id) DO UPDATE SET cached_through = excluded.cached_through,"
        " built_through = excluded.built_through, lookback_days = excluded.lookback_days,"
        " metrics = excluded.metrics, players = excluded.players, updated_at = now()",
        ["text", "date", "date", "int4", "text[]", "int8"]),
        [game_id, through.isoformat(), built.isoformat(), lookback, metrics, n])
