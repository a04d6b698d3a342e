"""Thin PL/Python adapters: the only module that talks to ``plpy``.

Each public function here is called by the SQL function of the same name in
``sql/``; it reads data through SPI, calls the numeric core with numpy arrays,
and writes results back. Core errors become ``plpy.error`` with their SQLSTATE.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import segmentation
from segmentation import calibration, population, taxonomy_store
from segmentation.errors import (
    InvalidArgument,
    InvalidDocument,
    PopulationTooSmall,
    SegmentationError,
    TooFewFeatures,
)
from segmentation.features import FeatureRecipe
from segmentation.model import Taxonomy

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Turn a :class:`SegmentationError` into ``plpy.error`` with SQLSTATE and hint."""

    @functools.wraps(fn)
    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(plpy, *args, **kwargs)
        except SegmentationError as exc:
            plpy.error(exc.message, detail=exc.detail, hint=exc.hint, sqlstate=exc.sqlstate)

    return wrapper  # type: ignore[return-value]


def python_runtime(plpy: Any, GD: dict) -> str:
    """Versions of the server-side runtime as a jsonb text."""
    import json

    import numpy
    import scipy
    import sklearn

    return json.dumps({
        "python": "%d.%d.%d" % sys.version_info[:3],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "package": segmentation.__version__,
        "lib_dir": GD.get("segmentation.lib_dir"),
    })


# --------------------------------------------------------------------------- settings

_SETTING_NAMES = (
    "min_player_population", "variance_explained_threshold", "default_lookback_days",
    "ai_optimized_segment_count", "max_concurrent_categorizations", "cache_ttl_seconds",
    "calibration_sample_size", "anomaly_contamination", "random_seed",
    "drift_psi_watch", "drift_psi_recalibrate", "drift_share_watch", "drift_share_recalibrate",
)


def read_settings(plpy: Any, names: tuple[str, ...] = _SETTING_NAMES) -> dict[str, float]:
    """Validated settings (SQLSTATE SG020 from segmentation.setting_value when out of range)."""
    cols = ", ".join(f"segmentation.setting_value('segmentation.{n}') AS {n}" for n in names)
    row = plpy.execute(f"SELECT {cols}")[0]
    return {n: float(row[n]) for n in names}


def _log(plpy: Any, run_id: int | None, message: str) -> None:
    plpy.log(f"segmentation run {run_id}: {message}")


def _start_run(plpy: Any, kind: str, game_id: str, parameters: dict[str, Any]) -> int:
    row = plpy.execute(plpy.prepare(
        "INSERT INTO segmentation.runs (kind, game_id, parameters) VALUES ($1, $2, $3)"
        " RETURNING run_id", ["text", "text", "jsonb"]),
        [kind, game_id, taxonomy_store.dumps(parameters)])
    return int(row[0]["run_id"])


def _finish_run(plpy: Any, run_id: int, result: dict[str, Any], taxonomy_id: int | None) -> None:
    plpy.execute(plpy.prepare(
        "UPDATE segmentation.runs SET status = 'succeeded', finished_at = clock_timestamp(),"
        " result = $2, taxonomy_id = $3 WHERE run_id = $1", ["int8", "jsonb", "int8"]),
        [run_id, taxonomy_store.dumps(result), taxonomy_id])


def _check_game_id(game_id: Any) -> str:
    if game_id is None or not str(game_id).strip():
        raise InvalidArgument("game_id must be a non-empty text",
                              hint="Pass the game's id as stored in player_activity.game_id.")
    if len(game_id) > 200:
        raise InvalidArgument("game_id is longer than 200 characters",
                              hint="Game ids are 1-200 characters.")
    return str(game_id)


# ------------------------------------------------------------------------ calibration

CALIBRATE_LOCK = 7_301_001  # advisory lock namespace: one calibration per game at a time
BATCH_GAME_LOCK = 7_301_002  # one categorize_all per game at a time
BATCH_SLOT_LOCK = 7_301_003  # segmentation.max_concurrent_categorizations slots


@reports_errors
def calibrate_taxonomy(plpy: Any, GD: dict, game_id: str, lookback_days: int | None,
                       n_segments: int | None, as_of: str | None, activate: bool | None) -> str:
    t0 = time.perf_counter()
    game_id = _check_game_id(game_id)
    settings = read_settings(plpy)
    lookback = int(settings["default_lookback_days"]) if lookback_days is None else lookback_days
    k = int(settings["ai_optimized_segment_count"]) if n_segments is None else n_segments
    if not (k == 0 or 2 <= k <= 30):
        raise InvalidArgument(f"n_segments must be 0 (automatic) or between 2 and 30, not {k}",
                              hint="Pass NULL for segmentation.ai_optimized_segment_count.")
    if not 1 <= lookback <= 3660:
        raise InvalidArgument(f"lookback_days must be between 1 and 3660, not {lookback}",
                              hint="Pass NULL for segmentation.default_lookback_days.")
    if as_of is None:
        as_of = plpy.execute("SELECT current_date::text AS d")[0]["d"]
    activate = True if activate is None else bool(activate)
    params = {"lookback_days": lookback, "n_segments": k, "as_of": as_of, "activate": activate}
    # Waits for a running calibration of the same game (lock_timeout applies).
    plpy.execute(plpy.prepare("SELECT pg_advisory_xact_lock($1, hashtext($2))", ["int4", "text"]),
                 [CALIBRATE_LOCK, game_id])
    run_id = _start_run(plpy, "calibrate", game_id, params)
    _log(plpy, run_id, f"calibrating game {game_id!r} {params}")
    timings: dict[str, float] = {}

    pop = population.load_for_calibration(
        plpy, game_id, as_of, lookback, int(settings["calibration_sample_size"]),
        int(settings["random_seed"]))
    timings["load"] = time.perf_counter() - t0
    minimum = int(settings["min_player_population"])
    if pop.players_in_window < minimum:
        raise PopulationTooSmall(
            f"game {game_id!r} has {pop.players_in_window} players in the window;"
            f" calibration needs at least {minimum}",
            detail=f"window: {lookback} days up to {as_of}",
            hint="Widen lookback_days, wait for more players, or lower "
                 "segmentation.min_player_population.")
    n_features = len(pop.recipe.feature_names)
    if n_features < 2:
        raise TooFewFeatures(f"only {n_features} feature(s) available; at least 2 are needed",
                             hint="Record more metrics per player.")
    plpy.execute("SELECT 1")  # a cancel or statement_timeout lands here, before the long fit

    previous_id = taxonomy_store.active_taxonomy_id(plpy, game_id)
    previous = taxonomy_store.load(plpy, previous_id)[0] if previous_id else None
    options = calibration.CalibrationOptions(
        variance_threshold=settings["variance_explained_threshold"], n_segments=k,
        seed=int(settings["random_seed"]), contamination=settings["anomaly_contamination"])
    try:
        result = calibration.calibrate(pop.X, pop.recipe.feature_names, options, previous)
    except ValueError as exc:
        raise TooFewFeatures(f"calibration failed: {exc}",
                             hint="Check that the features vary across players.") from exc
    timings.update({f"fit_{k_}": v for k_, v in result.timings.items() if k_ != "total"})
    plpy.execute("SELECT 1")

    tax = result.taxonomy
    report = result.report
    summary: dict[str, Any] = {
        "game_id": game_id,
        "run_id": run_id,
        "as_of": as_of,
        "lookback_days": pop.recipe.lookback_days,
        "source": pop.recipe.source or "segmentation.player_activity",
        "population": {"players_in_window": pop.players_in_window,
                       "calibrated_on": len(pop.player_ids), "sampled": pop.sampled},
        "features": {
            "used": tax.feature_names,
            "dropped": report.dropped,
            "log_transformed": report.log_transformed,
            "non_finite_replaced": report.non_finite,
            "invalid_metric_values_ignored": pop.invalid_values,
            "rules": "docs/data-rules.md",
        },
        "axes": [{"axis": i + 1, "name": name,
                  "variance_explained": float(tax.axes.variance_explained[i])}
                 for i, name in enumerate(tax.axes.names)],
        "segments": [{"segment_id": p["segment_id"], "name": p["name"], "size": p["size"],
                      "share": p["share"], "previous_segment_id": result.lineage.get(
                          p["segment_id"])} for p in result.profiles],
        "quality": result.quality,
        "k_curve": result.k_curve,
    }
    taxonomy_id, version = taxonomy_store.save(
        plpy, game_id=game_id, taxonomy=tax, recipe=pop.recipe, as_of=as_of,
        population=len(pop.player_ids), sampled=pop.sampled, profiles=result.profiles,
        lineage=result.lineage, quality=result.quality, drift_reference=result.drift_reference,
        summary=summary, parent_taxonomy_id=previous_id)
    if activate:
        taxonomy_store.activate(plpy, taxonomy_id)
    timings["total"] = time.perf_counter() - t0
    summary.update({"taxonomy_id": taxonomy_id, "version": version, "active": activate,
                    "previous_taxonomy_id": previous_id, "timings": timings})
    plpy.execute(plpy.prepare(
        "UPDATE segmentation.game_behavioral_taxonomy SET summary = $2 WHERE taxonomy_id = $1",
        ["int8", "jsonb"]), [taxonomy_id, taxonomy_store.dumps(summary)])
    _finish_run(plpy, run_id, summary, taxonomy_id)
    _log(plpy, run_id, f"taxonomy {taxonomy_id} v{version} in {timings['total']:.2f}s")
    return taxonomy_store.dumps(summary)


@reports_errors
def activate_taxonomy(plpy: Any, GD: dict, taxonomy_id: int | None) -> str:
    if taxonomy_id is None:
        raise InvalidArgument("taxonomy_id must not be NULL",
                              hint="SELECT * FROM segmentation.taxonomy_history('<game>').")
    game_id = taxonomy_store.activate(plpy, int(taxonomy_id))
    doc = taxonomy_store.load_document(plpy, int(taxonomy_id))
    return taxonomy_store.dumps({"game_id": game_id, "taxonomy_id": int(taxonomy_id),
                                 "version": doc["taxonomy"]["version"], "active": True})


@reports_errors
def register_feature_source(plpy: Any, GD: dict, game_id: str, source: str | None,
                            player_column: str | None) -> str:
    game_id = _check_game_id(game_id)
    if source is None:
        raise InvalidArgument("source must not be NULL", hint="Pass a table or view name.")
    player_column = player_column or "player_id"
    rel = plpy.execute(plpy.prepare(
        "SELECT c.oid AS relid, c.oid::regclass::text AS name FROM pg_catalog.pg_class c"
        " WHERE c.oid = $1::regclass", ["text"]), [source])[0]
    has_col = plpy.execute(plpy.prepare(
        "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2"
        " AND attnum > 0 AND NOT attisdropped", ["oid", "name"]), [rel["relid"], player_column])
    if not has_col:
        raise InvalidArgument(f"{rel['name']} has no column {player_column!r}",
                              hint="Pass player_column => the column holding player ids.")
    cols = population.source_columns(plpy, rel["relid"], player_column)
    if len(cols) < 2:
        raise TooFewFeatures(f"{rel['name']} has {len(cols)} numeric column(s); at least 2 needed",
                             hint="Features are the numeric and boolean columns of the source.")
    plpy.execute(plpy.prepare(
        "INSERT INTO segmentation.feature_sources (game_id, source, player_column)"
        " VALUES ($1, $2::regclass, $3) ON CONFLICT (game_id) DO UPDATE"
        " SET source = EXCLUDED.source, player_column = EXCLUDED.player_column,"
        " registered_at = now(), registered_by = current_user", ["text", "oid", "name"]),
        [game_id, rel["relid"], player_column])
    return taxonomy_store.dumps({"game_id": game_id, "source": rel["name"],
                                 "player_column": player_column,
                                 "features": [c for c, _ in cols]})


@reports_errors
def export_taxonomy(plpy: Any, GD: dict, taxonomy_id: int | None) -> str:
    if taxonomy_id is None:
        raise InvalidArgument("taxonomy_id must not be NULL",
                              hint="SELECT * FROM segmentation.taxonomy_history('<game>').")
    return taxonomy_store.dumps(taxonomy_store.load_document(plpy, int(taxonomy_id)))


@reports_errors
def import_taxonomy(plpy: Any, GD: dict, doc_text: str | None, game_id: str | None,
                    activate: bool | None) -> str:
    import json

    if doc_text is None:
        raise InvalidDocument("the document is NULL",
                              hint="Pass the jsonb returned by segmentation.export_taxonomy.")
    doc = json.loads(doc_text)
    try:
        if not isinstance(doc, dict):
            raise ValueError("the document must be a JSON object")
        tax = Taxonomy.from_dict(doc)
        recipe = FeatureRecipe.from_dict(doc["feature_recipe"])
        if recipe.feature_names != tax.feature_names[: len(recipe.feature_names)] and not set(
                tax.feature_names) <= set(recipe.feature_names):
            raise ValueError("the recipe does not produce the model's features")
        meta = doc.get("taxonomy") or {}
        details = doc.get("segment_details") or [
            {"size": 0, "share": 0.0, "profile": {}} for _ in tax.segment_ids]
        if len(details) != len(tax.segment_ids):
            raise ValueError("segment_details and segment_ids differ in length")
        target_game = _check_game_id(game_id or meta.get("game_id"))
        drift_reference = dict(doc.get("drift_reference") or {})
        quality = dict(doc.get("quality") or {})
        population_size = max(1, int(meta.get("population") or 1))
        # Score a neutral vector once: a document that loads but cannot score is rejected.
        tax.score_one(tax.preparation.impute.copy())
    except InvalidArgument:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InvalidDocument(f"not a valid taxonomy document: {exc}",
                              hint="Pass the jsonb returned by segmentation.export_taxonomy "
                                   "(format unified-segmentation/taxonomy).") from exc
    previous_id = taxonomy_store.active_taxonomy_id(plpy, target_game)
    profiles = [{"size": int(d.get("size", 0)), "share": float(d.get("share", 0.0)),
                 "axis_means": (d.get("profile") or {}).get("axis_means", {}),
                 "features": (d.get("profile") or {}).get("features", {})} for d in details]
    summary = {"imported_from": meta, "game_id": target_game}
    taxonomy_id, version = taxonomy_store.save(
        plpy, game_id=target_game, taxonomy=tax, recipe=recipe, as_of=meta.get("as_of"),
        population=population_size, sampled=bool(meta.get("sampled", False)),
        profiles=profiles, lineage={}, quality=quality, drift_reference=drift_reference,
        summary=summary, parent_taxonomy_id=previous_id)
    if activate is None or activate:
        taxonomy_store.activate(plpy, taxonomy_id)
    return taxonomy_store.dumps({"game_id": target_game, "taxonomy_id": taxonomy_id,
                                 "version": version, "active": activate is None or activate})
