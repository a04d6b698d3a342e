"""Load a game's per-player raw features through SPI, in bulk (a thin adapter).

Values travel as one bytea per query (``float8send`` concatenated by
``string_agg``) and are read with ``numpy.frombuffer``: several times faster than
PL/Python row dictionaries. Player ids come as one text[] array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.errors import (
    EmptyWindow,
    InvalidArgument,
    InvalidFeatures,
    TooFewFeatures,
    UnknownGame,
)
from segmentation.features import (
    MAX_METRICS,
    FeatureRecipe,
    activity_aggregate_sql,
    features_from_aggregates,
    metric_keys_sql,
    packed_columns_sql,
    sample_threshold_sql,
    unpack,
)

NUMERIC_TYPES = ("int2", "int4", "int8", "float4", "float8", "numeric", "bool")
POPULATION_TABLE = "pg_temp.segmentation_population"
# A calibration whose game last had at most this share of the sample size in its window
# aggregates every player at once; others first find the players, to sample them before
# their metrics are read. Either way gives the same sample; a wrong guess only costs time.
SMALL_POPULATION_SHARE = 0.8


@dataclass
class Population:
    """Raw features of n players: ``X`` (n, p) in ``recipe.feature_names`` order."""

    recipe: FeatureRecipe
    player_ids: list[str]
    X: np.ndarray
    players_in_window: int
    sampled: bool
    invalid_values: dict[str, int] = field(default_factory=dict)


def registered_source(plpy: Any, game_id: str) -> dict[str, Any] | None:
    rows = plpy.execute(plpy.prepare(
        "SELECT source::text AS source, source::oid AS relid, player_column::text AS player_column,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = source) AS present"
        " FROM segmentation.feature_sources WHERE game_id = $1", ["text"]), [game_id])
    if not rows:
        return None
    if not rows[0]["present"]:
        # A regclass column does not pin its relation: after a DROP, source::text is a
        # bare oid, which must never reach a FROM clause.
        raise InvalidFeatures(
            f"the feature source registered for game {game_id!r} (oid {rows[0]['relid']})"
            " no longer exists",
            hint="Register it again with segmentation.register_feature_source, or call "
                 "segmentation.unregister_feature_source to use player_activity.")
    return {k: rows[0][k] for k in ("source", "relid", "player_column")}


def source_columns(plpy: Any, relid: int, player_column: str) -> list[tuple[str, str]]:
    """Numeric and boolean columns (name, type) of a relation, in column order."""
    rows = plpy.execute(plpy.prepare(
        "SELECT a.attname::text AS name, t.typname::text AS typ FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        ["oid"]), [relid])
    return [(r["name"], r["typ"]) for r in rows
            if r["typ"] in NUMERIC_TYPES and r["name"] != player_column]


def _source_expr(plpy: Any, name: str, typ: str) -> str:
    col = plpy.quote_ident(name)
    return f"({col})::int::float8" if typ == "bool" else f"({col})::float8"


def drop_temp_table(plpy: Any, name: str) -> None:
    """Drop this session's temporary table ``name`` (one of ours) if it exists.

    Checked first rather than DROP ... IF EXISTS, which would send the caller a NOTICE.
    """
    if plpy.execute(f"SELECT to_regclass('pg_temp.{name}') IS NOT NULL AS e")[0]["e"]:
        plpy.execute(f"DROP TABLE pg_temp.{name}")


def create_temp_table(plpy: Any, name: str, columns: str) -> None:
    """A fresh temporary table ``name`` with ``columns`` (SQL), dropped at commit."""
    drop_temp_table(plpy, name)
    plpy.execute(f"CREATE TEMP TABLE {name} ({columns}) ON COMMIT DROP")


def drop_population_table(plpy: Any) -> None:
    drop_temp_table(plpy, "segmentation_population")


def _create_population_table(plpy: Any, n_columns: int) -> None:
    cols = ", ".join(f"c{i} float8" for i in range(1, n_columns + 1))
    create_temp_table(plpy, "segmentation_population", f"player_id text, {cols}")


def activity_metrics(plpy: Any, game_id: str, as_of: str, lookback_days: int) -> list[str]:
    rows = plpy.execute(plpy.prepare(metric_keys_sql(), ["text", "date", "int4"]),
                        [game_id, as_of, lookback_days])
    if not rows:
        exists = plpy.execute(plpy.prepare(
            "SELECT EXISTS (SELECT 1 FROM segmentation.player_activity WHERE game_id = $1) AS e",
            ["text"]), [game_id])[0]["e"]
        if not exists:
            raise UnknownGame(f"game {game_id!r} has no activity",
                              hint="Load rows into segmentation.player_activity, or register a "
                                   "feature source with segmentation.register_feature_source.")
        raise EmptyWindow(
            f"game {game_id!r} has no activity in the {lookback_days} days up to {as_of}",
            hint="Pass a later as_of or a longer lookback_days.")
    metrics = sorted(str(r["metric"]) for r in rows)
    if len(metrics) > MAX_METRICS:
        raise TooFewFeatures(f"{len(metrics)} distinct metrics exceed the limit of {MAX_METRICS}",
                             sqlstate="SG006",
                             hint="Keep metrics to a stable set of keys.")
    return metrics


def stage_activity(plpy: Any, game_id: str, as_of: str, recipe: FeatureRecipe,
                   with_invalid: bool, sample: tuple[int, str] | None = None,
                   ) -> tuple[int, dict[str, int]]:
    """Aggregate the window into the temporary population table; return (players, invalid).

    ``sample`` (seed, threshold from :func:`features.sample_threshold_sql`) keeps only
    the sampled players; their rows alone are read for metrics and counted as invalid.
    """
    m = len(recipe.metrics)
    n_cols = 3 + m + (m if with_invalid else 0)
    drop_population_table(plpy)
    agg = activity_aggregate_sql(m, player_filter=False, with_invalid=with_invalid,
                                 sample_filter=sample is not None)
    params: list[Any] = [game_id, as_of, recipe.lookback_days, recipe.metrics]
    types = ["text", "date", "int4", "text[]"]
    if sample is not None:
        params += [str(sample[0]), sample[1]]
        types += ["text", "text"]
    out = ["active_days", "days_since_last", "tenure_days"] + [f"t{i}" for i in range(1, m + 1)]
    if with_invalid:
        out += [f"b{i}" for i in range(1, m + 1)]
    cols = ", ".join(f"a.{c} AS c{i}" for i, c in enumerate(out, 1))
    assert len(out) == n_cols
    # CREATE TABLE AS, not INSERT ... SELECT: only the former may run the aggregation
    # with parallel workers (measured about 1.7x faster on 2 cores).
    plpy.execute(plpy.prepare(
        f"CREATE TEMP TABLE segmentation_population ON COMMIT DROP AS"
        f" SELECT a.player_id, {cols} FROM ({agg}) a", types), params)
    return _count_staged(plpy, recipe, with_invalid)


def _count_staged(plpy: Any, recipe: FeatureRecipe, with_invalid: bool
                  ) -> tuple[int, dict[str, int]]:
    """Players in the staged activity table, and its invalid value counts per metric."""
    m = len(recipe.metrics)
    invalid: dict[str, int] = {}
    if with_invalid:
        sums = ", ".join(f"coalesce(sum(c{3 + m + i}), 0)::int8 AS b{i}"
                         for i in range(1, m + 1))
        row = plpy.execute(f"SELECT count(*) AS n, {sums} FROM {POPULATION_TABLE}")[0]
        invalid = {metric: int(row[f"b{i}"]) for i, metric in enumerate(recipe.metrics, 1)
                   if row[f"b{i}"]}
        n = int(row["n"])
    else:
        n = int(plpy.execute(f"SELECT count(*) AS n FROM {POPULATION_TABLE}")[0]["n"])
    return n, invalid


def _last_calibrated_population(plpy: Any, game_id: str) -> int | None:
    """Players in the window of the game's latest calibration; None if unknown or sampled.

    (A sampled version stores its sample's size as ``population``.)
    """
    rows = plpy.execute(plpy.prepare(
        "SELECT population, sampled FROM segmentation.game_behavioral_taxonomy"
        " WHERE game_id = $1 ORDER BY version DESC LIMIT 1", ["text"]), [game_id])
    if not rows or rows[0]["sampled"]:
        return None
    return int(rows[0]["population"])


def _keep_sample(plpy: Any, seed: int, sample_size: int) -> None:
    """Reduce the staged table to the seeded sample of :func:`features.sample_threshold_sql`."""
    plpy.execute(plpy.prepare(
        f"DELETE FROM {POPULATION_TABLE} WHERE md5(player_id || $1::text) >"
        f" (SELECT max(h) FROM (SELECT md5(player_id || $1::text) AS h FROM {POPULATION_TABLE}"
        f" ORDER BY 1 LIMIT $2) s)", ["text", "int8"]), [str(seed), sample_size])


def stage_source(plpy: Any, source: dict[str, Any], recipe: FeatureRecipe) -> int:
    """Copy a registered source's features into the temporary population table."""
    cols = dict(source_columns(plpy, source["relid"], recipe.player_column or ""))
    missing = [c for c in recipe.columns if c not in cols]
    if missing:
        raise InvalidFeatures(
            f"feature source {source['source']} lacks columns {missing}",
            hint="The taxonomy was calibrated with these columns; restore them or recalibrate.")
    _create_population_table(plpy, len(recipe.columns))
    exprs = ", ".join(_source_expr(plpy, c, cols[c]) for c in recipe.columns)
    player = plpy.quote_ident(recipe.player_column)
    # source::text of a regclass is already a quoted, qualified name.
    plpy.execute(f"INSERT INTO {POPULATION_TABLE} SELECT ({player})::text, {exprs}"
                 f" FROM {source['source']} WHERE ({player}) IS NOT NULL")
    row = plpy.execute(f"SELECT count(*) AS n, count(DISTINCT player_id) AS d"
                       f" FROM {POPULATION_TABLE}")[0]
    if row["n"] != row["d"]:
        raise InvalidFeatures(
            f"feature source {source['source']} has {row['n'] - row['d']} duplicate player rows",
            hint="A feature source needs one row per player; deduplicate it in a view.")
    return int(row["n"])


def stage_window(plpy: Any, game_id: str, as_of: str, recipe: FeatureRecipe) -> int:
    """Stage the features of every player a taxonomy's recipe covers; return their count."""
    if recipe.kind == "activity":
        n, _ = stage_activity(plpy, game_id, as_of, recipe, with_invalid=False)
    else:
        source = registered_source(plpy, game_id)
        if source is None:
            raise InvalidFeatures("the taxonomy's feature source is no longer registered",
                                  hint="Register it again or recalibrate.")
        n = stage_source(plpy, source, recipe)
    return require_players(game_id, as_of, n)


def require_players(game_id: str, as_of: str, n: int) -> int:
    """``n``, the players staged for a window; EmptyWindow if there are none."""
    if n == 0:
        raise EmptyWindow(f"game {game_id!r} has no players in the window up to {as_of}",
                          hint="Pass a later as_of.")
    return n


def fetch(plpy: Any, recipe: FeatureRecipe, *, limit: int | None = None,
          seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Player ids and raw features (n, p) from the staged population table.

    ``limit``: a uniform pseudo-random sample (a seeded hash of the player id orders
    the rows); otherwise every player, by player id.
    """
    inner = f"SELECT * FROM {POPULATION_TABLE}"
    params: list[Any] = []
    types: list[str] = []
    if limit is not None:
        inner += " ORDER BY md5(player_id || $1::text) LIMIT $2"
        params, types = [str(seed), limit], ["text", "int8"]
    query = _packed_rows_sql(recipe, inner, "ORDER BY player_id")
    row = (plpy.execute(plpy.prepare(query, types), params) if types else plpy.execute(query))[0]
    return _unpacked(recipe, row)


def chunks(plpy: Any, recipe: FeatureRecipe, rows: int, players: int
           ) -> Iterator[tuple[list[str], np.ndarray]]:
    """The staged population (``players`` rows) in chunks of about ``rows`` players.

    Each chunk is a range of the table's blocks, read by a TID range scan: sequential
    reads and no index, where pages by player id (an index scan per chunk) read the
    table in random order, several times slower once it outgrows temp_buffers. The
    order of players is the table's.
    """
    blocks = int(plpy.execute(
        f"SELECT pg_relation_size('{POPULATION_TABLE}')"
        " / current_setting('block_size')::int AS b")[0]["b"])
    step = max(1, -(-blocks * rows // max(players, 1)))
    plan = plpy.prepare(_packed_rows_sql(
        recipe, f"SELECT * FROM {POPULATION_TABLE} WHERE ctid >= format('(%s,0)', $1)::tid"
                " AND ctid < format('(%s,0)', $2)::tid", ""), ["int8", "int8"])
    for first in range(0, blocks, step):
        ids, X = _unpacked(recipe, plpy.execute(plan, [first, first + step])[0])
        if ids:
            yield ids, X


def _packed_rows_sql(recipe: FeatureRecipe, rows: str, order: str) -> str:
    """One row: ``ids`` (text[]) and ``data`` (bytea, see packed_columns_sql) of ``rows``.

    Both aggregates read the rows in one order (``order``, or the scan's if empty).
    """
    return (f"SELECT array_agg(player_id {order}) AS ids,"
            f" string_agg({packed_columns_sql(_stored_columns(recipe))}, ''::bytea {order})"
            f" AS data FROM ({rows}) s")


def _stored_columns(recipe: FeatureRecipe) -> list[str]:
    n_stored = (3 + len(recipe.metrics)) if recipe.kind == "activity" else len(recipe.columns)
    return [f"c{i}" for i in range(1, n_stored + 1)]


def _unpacked(recipe: FeatureRecipe, row: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    ids = list(row["ids"] or [])
    data = unpack(row["data"], len(_stored_columns(recipe)))
    X = features_from_aggregates(data) if recipe.kind == "activity" else data
    return ids, X


def load_for_calibration(plpy: Any, game_id: str, as_of: str, lookback_days: int,
                         sample_size: int, seed: int) -> Population:
    source = registered_source(plpy, game_id)
    if source is not None:
        cols = source_columns(plpy, source["relid"], source["player_column"])
        if not cols:
            raise TooFewFeatures(f"feature source {source['source']} has no numeric columns",
                                 hint="Register a table or view with numeric feature columns.")
        recipe = FeatureRecipe(kind="source", source=source["source"],
                               player_column=source["player_column"],
                               columns=[c for c, _ in cols])
        n = stage_source(plpy, source, recipe)
        if n == 0:
            raise EmptyWindow(f"feature source {source['source']} has no rows",
                              hint="Fill the source or unregister it.")
        invalid: dict[str, int] = {}
    else:
        if lookback_days is None or lookback_days < 1:
            raise InvalidArgument("lookback_days must be at least 1",
                                  hint="Pass NULL for segmentation.default_lookback_days.")
        metrics = activity_metrics(plpy, game_id, as_of, lookback_days)
        recipe = FeatureRecipe(kind="activity", metrics=metrics, lookback_days=lookback_days)
        expected = _last_calibrated_population(plpy, game_id)
        if expected is not None and expected <= SMALL_POPULATION_SHARE * sample_size:
            # Most likely below the sample size: aggregate everyone in one pass, sparing
            # the pass that finds the players in the window.
            n, invalid = stage_activity(plpy, game_id, as_of, recipe, with_invalid=True)
            if n > sample_size:
                # Grown past it: keep the players the threshold below would have drawn.
                # Their aggregates and invalid counts do not depend on the others' rows.
                _keep_sample(plpy, seed, sample_size)
                _, invalid = _count_staged(plpy, recipe, with_invalid=True)
        else:
            row = plpy.execute(plpy.prepare(sample_threshold_sql(),
                                            ["text", "date", "int4", "text", "int8"]),
                               [game_id, as_of, lookback_days, str(seed), sample_size])[0]
            n = int(row["players"])
            # Above the sample size: the same players fetch() would draw from the whole
            # population, chosen before the aggregation so the others' metrics are never
            # read.
            sample = (seed, row["threshold"]) if n > sample_size else None
            _, invalid = stage_activity(plpy, game_id, as_of, recipe, with_invalid=True,
                                        sample=sample)
        ids, X = fetch(plpy, recipe)
        return Population(recipe, ids, X, n, n > sample_size, invalid)
    sampled = n > sample_size
    ids, X = fetch(plpy, recipe, limit=sample_size if sampled else None, seed=seed)
    return Population(recipe, ids, X, n, sampled, invalid)
