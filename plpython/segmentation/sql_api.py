"""Thin PL/Python adapters: the only module that talks to ``plpy``.

Each public function here is called by the SQL function of the same name in
``sql/``; it reads data through SPI, calls the numeric core with numpy arrays,
and writes results back. Core errors reach the caller as ``segmentation: <message>``
with their SQLSTATE and hint (see :func:`sql_error`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

import segmentation
from segmentation import batch_rows, population, taxonomy_store, window_cache
from segmentation.errors import (
    BatchSlotsExhausted,
    InvalidArgument,
    InvalidDocument,
    InvalidFeatures,
    NoActiveTaxonomy,
    PopulationTooSmall,
    SegmentationError,
    TooFewFeatures,
    UnknownPlayer,
)
from segmentation.features import (
    FeatureRecipe,
    activity_aggregate_sql,
    features_from_aggregates,
    features_from_metric_vector,
    metric_vector_keys,
)
from segmentation.model import Taxonomy

F = TypeVar("F", bound=Callable[..., Any])


# PL/Python prefixes an uncaught exception's message with its type - "plpy.Error: ..."
# for plpy.error(), the module left out only for builtins (plpy_elog.c, PLy_traceback).
# A plpy.Error subclass named "segmentation" in builtins makes that "segmentation: ...",
# like a command-line tool's message; PL/Python still reads sqlstate, detail and hint
# from any plpy.Error (PLy_get_error_data). One class per interpreter's plpy module.
_ERROR_CLASSES: dict[type, type] = {}
# plpy.SPIError.spidata after the packed SQLSTATE (plpy_spi.c, PLy_spi_exception_set).
_SPI_FIELDS = ("detail", "hint", "query", "position", "schema_name", "table_name",
               "column_name", "datatype_name", "constraint_name")
# query and position describe the statement inside our function, not the caller's.
_RELAYED_FIELDS = frozenset(_SPI_FIELDS) - {"query", "position"}


def sql_error(plpy: Any, message: str, *, sqlstate: str, hint: str | None = None,
              detail: str | None = None, **fields: Any) -> Exception:
    """An exception the caller sees as ``ERROR: segmentation: <message>`` with this
    SQLSTATE, hint and detail (and any other ``plpy.error`` field in ``fields``)."""
    cls = _ERROR_CLASSES.get(plpy.Error)
    if cls is None:
        cls = _ERROR_CLASSES[plpy.Error] = type("segmentation", (plpy.Error,),
                                                {"__module__": "builtins"})
    exc = cls(message)
    exc.sqlstate, exc.hint, exc.detail = sqlstate, hint, detail
    for name, value in fields.items():
        setattr(exc, name, value)
    return exc


def spi_sqlstate(exc: Any) -> str:
    """SQLSTATE of a ``plpy.SPIError``.

    A class attribute for the codes PostgreSQL defines; for any other (our SGxxx raised
    by a nested call) only packed into ``spidata[0]``, six bits per character
    (MAKE_SQLSTATE).
    """
    code = getattr(exc, "sqlstate", None)
    if code:
        return str(code)
    spidata = getattr(exc, "spidata", None)
    if spidata and isinstance(spidata[0], int):
        return "".join(chr(((spidata[0] >> (6 * i)) & 0x3F) + ord("0")) for i in range(5))
    return "XX000"


def _reraised(plpy: Any, exc: Any) -> Exception:
    """A database error (cancel, timeout, constraint) as a ``segmentation:`` error with the
    same SQLSTATE and fields; its traceback (the failing line) stays in CONTEXT."""
    spidata = getattr(exc, "spidata", None) or ()
    fields = {k: v for k, v in zip(_SPI_FIELDS, spidata[1:], strict=False)
              if k in _RELAYED_FIELDS and v is not None}
    message = str(exc).removeprefix("segmentation: ")
    return sql_error(plpy, message, sqlstate=spi_sqlstate(exc), **fields).with_traceback(
        exc.__traceback__)


def reports_errors(fn: F) -> F:
    """Report failures as ``segmentation: <message>`` with a stable SQLSTATE and a hint."""

    @functools.wraps(fn)
    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(plpy, *args, **kwargs)
        except SegmentationError as exc:
            _record_failure(plpy, exc.sqlstate, exc.message)
            raise sql_error(plpy, exc.message, sqlstate=exc.sqlstate, hint=exc.hint,
                            detail=exc.detail) from None
        except plpy.SPIError as exc:
            # A database error (cancel, timeout, constraint): keep its SQLSTATE.
            _record_failure(plpy, spi_sqlstate(exc), str(exc))
            raise _reraised(plpy, exc) from None
        except Exception as exc:  # a bug: still a clean message, the traceback goes to CONTEXT
            message = f"internal error in {fn.__name__}: {type(exc).__name__}: {exc}"
            _record_failure(plpy, "XX000", message)
            raise sql_error(plpy, message, sqlstate="XX000",
                            hint="This is a bug; please report it with the server log."
                            ).with_traceback(exc.__traceback__) from None
        finally:
            _current_run.clear()

    return wrapper  # type: ignore[return-value]


def python_runtime(plpy: Any, GD: dict) -> str:
    """Versions of the server-side runtime as a jsonb text."""
    import numpy
    import scipy
    import sklearn

    # Which implementation categorize_player(game_id, features) has in this database:
    # "c" (sql/210_native_scorer.sql) or "plpython3u".
    language = plpy.execute(
        "SELECT l.lanname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l"
        " ON l.oid = p.prolang WHERE p.oid = 'segmentation.categorize_player(pg_catalog.text,"
        " pg_catalog.jsonb)'::pg_catalog.regprocedure")[0]["lanname"]
    return json.dumps({
        "python": "%d.%d.%d" % sys.version_info[:3],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "package": segmentation.__version__,
        "lib_dir": GD.get("segmentation.lib_dir"),
        "feature_scorer": language,
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


# The run of the current call, so a failure can be logged (see sql/050_run_log.sql).
_current_run: dict[str, Any] = {}


def _start_run(plpy: Any, kind: str, game_id: str, parameters: dict[str, Any]) -> int:
    row = plpy.execute(plpy.prepare(
        "INSERT INTO segmentation.runs (kind, game_id, parameters) VALUES ($1, $2, $3)"
        " RETURNING run_id, started_at::text AS started_at", ["text", "text", "jsonb"]),
        [kind, game_id, taxonomy_store.dumps(parameters)])
    _current_run.update(kind=kind, game_id=game_id, parameters=taxonomy_store.dumps(parameters),
                        run_id=int(row[0]["run_id"]), started_at=row[0]["started_at"])
    return int(row[0]["run_id"])


def _record_failure(plpy: Any, sqlstate: str, message: str) -> None:
    """Log a failed run in segmentation.runs in its own transaction (loopback dblink)."""
    run = dict(_current_run)
    if not run:
        return
    _log(plpy, run["run_id"], f"failed: {sqlstate} {message}")
    try:
        plpy.execute(plpy.prepare(
            "SELECT segmentation._record_failed_run($1, $2, $3, $4, $5, $6, $7)",
            ["text", "text", "jsonb", "timestamptz", "text", "text", "int8"]),
            [run["kind"], run["game_id"], run["parameters"], run["started_at"], sqlstate,
             message, run["run_id"]])
    except plpy.SPIError as exc:  # never mask the original error
        plpy.log(f"segmentation run {run['run_id']}: could not record the failure: {exc}")


def _finish_run(plpy: Any, run_id: int, result: dict[str, Any], taxonomy_id: int | None) -> None:
    plpy.execute(plpy.prepare(
        "UPDATE segmentation.runs SET status = 'succeeded', finished_at = clock_timestamp(),"
        " result = $2, taxonomy_id = $3 WHERE run_id = $1", ["int8", "jsonb", "int8"]),
        [run_id, taxonomy_store.dumps(result), taxonomy_id])


def _clip(text: str, limit: int = 200) -> str:
    """A caller's value for an error message, cut short: ids and keys may be 100k long."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_finite_number(value: float) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:  # a JSON integer beyond float8 (1e400 reaches Python as an int)
        return False


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
    previous = None
    continuity_note = None
    if previous_id:
        try:
            previous = taxonomy_store.load(plpy, previous_id)[0]
        except (KeyError, TypeError, ValueError) as exc:
            # A version stored in an older model format still must not block a new one;
            # its segments just cannot lend their ids.
            continuity_note = (f"previous taxonomy {previous_id} could not be loaded"
                               f" ({type(exc).__name__}: {exc}); segment ids start fresh")
            _log(plpy, run_id, continuity_note)
    from segmentation import calibration  # scikit-learn loads only where it is needed

    options = calibration.CalibrationOptions(
        variance_threshold=settings["variance_explained_threshold"], n_segments=k,
        seed=int(settings["random_seed"]), contamination=settings["anomaly_contamination"])
    try:
        # Between phases and candidate fits: a pending cancel or statement_timeout is
        # raised by this SPI call instead of waiting for the whole fit.
        result = calibration.calibrate(pop.X, pop.recipe.feature_names, options, previous,
                                       checkpoint=lambda: plpy.execute("SELECT 1"))
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
    if continuity_note:
        summary["continuity_note"] = continuity_note
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
    if doc_text is None:
        raise InvalidDocument("the document is NULL",
                              hint="Pass the jsonb returned by segmentation.export_taxonomy.")
    doc = json.loads(doc_text)
    try:
        if not isinstance(doc, dict):
            raise ValueError("the document must be a JSON object")
        tax = Taxonomy.from_dict(doc)
        # from_dict would turn a null name into the text "None"
        if not all(isinstance(n, str) and n.strip()
                   for n in [*doc["segment_names"], *doc["axes"]["names"]]):
            raise ValueError("segment and axis names must be non-empty strings")
        recipe = FeatureRecipe.from_dict(doc["feature_recipe"])
        if recipe.feature_names != tax.feature_names[: len(recipe.feature_names)] and not set(
                tax.feature_names) <= set(recipe.feature_names):
            raise ValueError("the recipe does not produce the model's features")
        meta = doc.get("taxonomy") or {}
        details = doc.get("segment_details") or [
            {"size": 0, "share": 0.0, "profile": {}} for _ in tax.segment_ids]
        if len(details) != len(tax.segment_ids):
            raise ValueError("segment_details and segment_ids differ in length")
        profiles = [{"size": int(d.get("size", 0)), "share": float(d.get("share", 0.0)),
                     "axis_means": (d.get("profile") or {}).get("axis_means", {}),
                     "features": (d.get("profile") or {}).get("features", {})} for d in details]
        target_game = _check_game_id(game_id or meta.get("game_id"))
        drift_reference = dict(doc.get("drift_reference") or {})
        quality = dict(doc.get("quality") or {})
        population_size = max(1, int(meta.get("population") or 1))
        # Score a neutral vector once: a document that loads but cannot score is rejected.
        scored = tax.score_one(tax.preparation.impute.copy())
        if not np.isfinite([*scored["axis_scores"], *scored["posteriors"]]).all():
            raise ValueError("the model does not score a player to finite values")
    except InvalidArgument:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError,
            OverflowError) as exc:
        raise InvalidDocument(f"not a valid taxonomy document: {_clip(str(exc))}",
                              hint="Pass the jsonb returned by segmentation.export_taxonomy "
                                   "(format unified-segmentation/taxonomy).") from exc
    previous_id = taxonomy_store.active_taxonomy_id(plpy, target_game)
    summary = {"imported_from": meta, "game_id": target_game}
    try:
        taxonomy_id, version = taxonomy_store.save(
            plpy, game_id=target_game, taxonomy=tax, recipe=recipe, as_of=meta.get("as_of"),
            population=population_size, sampled=bool(meta.get("sampled", False)),
            profiles=profiles, lineage={}, quality=quality, drift_reference=drift_reference,
            summary=summary, parent_taxonomy_id=previous_id)
    except plpy.SPIError as exc:
        # Bad values the tables reject (a date that is none, duplicate segment names, a
        # window of 0 days, a 100k name too big for an index): still the document's fault,
        # so SG012 rather than 22xxx/23xxx/54xxx.
        if not str(getattr(exc, "sqlstate", "") or "").startswith(("22", "23", "54")):
            raise
        raise InvalidDocument(f"not a valid taxonomy document: {_clip(str(exc))}",
                              hint="Pass the jsonb returned by segmentation.export_taxonomy "
                                   "(format unified-segmentation/taxonomy).") from exc
    if activate is None or activate:
        taxonomy_store.activate(plpy, taxonomy_id)
    return taxonomy_store.dumps({"game_id": target_game, "taxonomy_id": taxonomy_id,
                                 "version": version, "active": activate is None or activate})


# --------------------------------------------------------------------- categorization


class _Cached:
    """The active taxonomy of one game as loaded into this backend."""

    def __init__(self, plpy: Any, taxonomy_id: int, ttl: float) -> None:
        self.taxonomy_id = taxonomy_id
        self.taxonomy, self.recipe, doc = taxonomy_store.load(plpy, taxonomy_id)
        self.version = int(doc["taxonomy"]["version"])
        self.game_id = doc["taxonomy"]["game_id"]
        self.loaded_at = time.monotonic()
        self.expires_at = self.loaded_at + ttl
        self.feature_names = self.recipe.feature_names
        self.known_keys = frozenset(self.feature_names) | frozenset(self.recipe.metrics)
        self.segment_names = list(self.taxonomy.segment_names)
        self.axis_names = list(self.taxonomy.axes.names)
        self.segment_json = [json.dumps(n) for n in self.segment_names]
        self.axis_json = [json.dumps(n) for n in self.axis_names]
        self.player_plan: Any = None
        self.cache_reader: window_cache.PlayerReader | None = None
        # Taxonomy.score_one for raw vectors in recipe order, precomputed here so the
        # first caller does not pay for it.
        self.score = self.taxonomy.scorer(self.feature_names)
        escaped = [k.replace("%", "%%") for k in self.segment_json]
        self.memberships_format = "{" + ", ".join(f"{k}: %r" for k in escaped) + "}"
        escaped = [k.replace("%", "%%") for k in self.axis_json]
        self.axis_scores_format = "{" + ", ".join(f"{k}: %r" for k in escaped) + "}"


@contextlib.contextmanager
def _pinned_search_path(plpy: Any) -> Iterator[None]:
    """Run the block with ``search_path = pg_catalog, pg_temp``, then restore the caller's.

    For functions without a SET clause: only their rare paths (a cache miss) need it.
    """
    previous = plpy.execute("SELECT pg_catalog.current_setting('search_path') AS p")[0]["p"]
    plpy.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)")
    try:
        yield
    finally:
        plpy.execute(plpy.prepare("SELECT pg_catalog.set_config('search_path', $1, true)",
                                  ["pg_catalog.text"]), [previous])


def cached_taxonomy(plpy: Any, GD: dict, game_id: str) -> _Cached:
    """The active taxonomy of ``game_id``, from this backend's cache when still current.

    One indexed lookup per call detects a re-activation at once; otherwise the entry
    is re-read after ``segmentation.cache_ttl_seconds``. An entry is replaced whole,
    so a caller never scores with parts of two versions. Safe under any caller
    search_path: the lookup is schema-qualified and a reload pins the path.
    """
    active_id = taxonomy_store.active_taxonomy_id(plpy, game_id)
    if active_id is None:
        raise NoActiveTaxonomy(
            f"game {game_id!r} has no active taxonomy",
            hint=f"Run SELECT segmentation.calibrate_taxonomy({game_id!r}) first, or activate "
                 "a version with segmentation.activate_taxonomy(taxonomy_id).")
    cache: dict[str, _Cached] = GD.setdefault("segmentation.cache", {})
    entry = cache.get(game_id)
    if entry is None or entry.taxonomy_id != active_id or time.monotonic() > entry.expires_at:
        with _pinned_search_path(plpy):
            ttl = read_settings(plpy, ("cache_ttl_seconds",))["cache_ttl_seconds"]
            entry = cache[game_id] = _Cached(plpy, active_id, ttl)
    return entry


def _answer(entry: _Cached, scored: dict[str, Any]) -> tuple:
    """One segmentation.categorization record, as a tuple in the type's attribute order.

    The jsonb values are formatted from per-taxonomy templates (keys JSON-escaped once;
    repr() of a finite float is a valid JSON number): several times faster than
    json.dumps on this path, which runs once per categorize_player call.
    """
    axis_scores = scored["axis_scores"]
    posteriors = scored["posteriors"]
    first = scored["primary"]
    runner = max((j for j in range(len(posteriors)) if j != first),
                 key=posteriors.__getitem__, default=None)
    drivers = sorted(range(len(axis_scores)), key=lambda a: -abs(axis_scores[a]))[:2]
    top_axes = ", ".join([f'{{"axis": {entry.axis_json[a]}, "score": {axis_scores[a]!r}}}'
                          for a in drivers])
    margin = posteriors[first] - (posteriors[runner] if runner is not None else 0.0)
    explanation = (
        f'{{"top_axes": [{top_axes}], '
        f'"runner_up": {entry.segment_json[runner] if runner is not None else "null"}, '
        f'"margin": {margin!r}, "anomaly_kind": "{scored["anomaly_kind"]}", '
        f'"imputed_features": {scored["n_non_finite"]}}}')
    return (
        entry.taxonomy_id,
        entry.version,
        scored["segment_id"],
        scored["segment_name"],
        scored["membership"],
        entry.memberships_format % tuple(posteriors),
        entry.axis_scores_format % tuple(axis_scores),
        scored["anomaly_score"],
        scored["is_anomaly"],
        explanation,
    )


# Largest magnitude a JSON integer may have and still become a finite float8.
_FLOAT8_MAX = float(np.finfo(np.float64).max)


def _checked_features(entry: _Cached, values: Any) -> dict[str, float | int]:
    """The caller's object without nulls, or InvalidFeatures saying what is wrong with it."""
    if not isinstance(values, dict) or not values:
        raise InvalidFeatures("features must be a non-empty jsonb object",
                              hint=f"Known keys: {sorted(entry.known_keys)}.")
    unknown = values.keys() - entry.known_keys - {"active_days"}
    if unknown:
        raise InvalidFeatures(f"unknown feature keys: {_clip(repr(sorted(unknown)[:10]))}",
                              hint=f"Known keys: {sorted(entry.known_keys)}.")
    bad = [k for k, v in values.items()
           if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))]
    if bad:
        raise InvalidFeatures(f"feature values must be numbers: {sorted(bad)[:10]}",
                              hint="Send JSON numbers; null means unknown (imputed).")
    huge = [k for k, v in values.items() if v is not None and not _is_finite_number(v)]
    if huge:
        raise InvalidFeatures(f"feature values beyond the float8 range: {sorted(huge)[:10]}",
                              hint="Send finite JSON numbers (|x| < 1.7e308); null means "
                                   "unknown (imputed).")
    return {k: v for k, v in values.items() if v is not None}


@reports_errors
def categorize_features(plpy: Any, GD: dict, game_id: str, features: str | None) -> tuple:
    entry = cached_taxonomy(plpy, GD, _check_game_id(game_id))
    if features is None:
        raise InvalidFeatures("features must not be NULL",
                              hint="Pass a jsonb object such as '{\"sessions_total\": 12}'.")
    values = json.loads(features)
    # The common case in one cheap pass (type() is exact: bool is not int here); anything
    # unusual takes the careful path, which names the problem or drops nulls.
    if not (type(values) is dict and values and values.keys() <= entry.known_keys
            and all(type(v) is float or (type(v) is int and -_FLOAT8_MAX <= v <= _FLOAT8_MAX)
                    for v in values.values())):
        values = _checked_features(entry, values)
    return _answer(entry, entry.score(features_from_metric_vector(values, entry.recipe)))


# Layout of scoring_kernel's answer; native/categorize_features.c checks it.
KERNEL_FORMAT = 1


@reports_errors
def scoring_kernel(plpy: Any, GD: dict, taxonomy_id: int | None) -> dict[str, Any]:
    """segmentation._scoring_kernel: a taxonomy's scorer as flat arrays.

    What ``native/categorize_features.c`` (categorize_player(game_id, features) in C)
    loads once per backend and taxonomy: the keys :func:`categorize_features` accepts
    (:func:`features.metric_vector_keys`), the precomputed products of the Python
    scorer (``model._FastScorer.arrays``) and the axis names, so that both paths
    compute the same numbers from the same arrays.
    """
    if taxonomy_id is None:
        raise InvalidArgument("taxonomy_id must not be NULL",
                              hint="SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                                   " WHERE is_active")
    ttl = read_settings(plpy, ("cache_ttl_seconds",))["cache_ttl_seconds"]
    entry = _Cached(plpy, int(taxonomy_id), ttl)
    keys = metric_vector_keys(entry.recipe)
    arrays = entry.score.arrays(len(entry.feature_names))
    return {
        "format": KERNEL_FORMAT,
        "taxonomy_id": entry.taxonomy_id,
        "taxonomy_version": entry.version,
        "ttl_seconds": float(ttl),
        "sizes": [*arrays.pop("sizes"), int(keys["activity"]), len(keys["keys"]),
                  len(keys["metric_key"])],
        **{name: keys[name] for name in ("keys", "key_feature", "metric_key",
                                         "metric_total_key", "metric_rate_key",
                                         "active_key")},
        **arrays,
        "axis_names": entry.axis_names,
    }


def _unknown_player_hint(player_id: str, hint: str) -> str:
    # An untyped literal such as '{"sessions": 3}' resolves to the (text, text) overload,
    # so a feature vector without a cast arrives here as a player id.
    if player_id.lstrip().startswith("{"):
        return ("That looks like a feature vector: cast it to jsonb, e.g. "
                "categorize_player('<game>', '{\"sessions\": 3}'::jsonb).")
    return hint


@reports_errors
def categorize_player(plpy: Any, GD: dict, game_id: str, player_id: str | None,
                      as_of: str | None) -> dict:
    entry = cached_taxonomy(plpy, GD, _check_game_id(game_id))
    if player_id is None or as_of is None:
        raise InvalidArgument("player_id and as_of must not be NULL",
                              hint="categorize_player(game_id, player_id, as_of => current_date).")
    recipe = entry.recipe
    if recipe.kind == "activity":
        if entry.cache_reader is None:
            entry.cache_reader = window_cache.PlayerReader(plpy, game_id, recipe)
        cached = entry.cache_reader.aggregates(plpy, player_id, as_of)
        if cached is not None:
            x = features_from_aggregates(np.array([cached], dtype=np.float64))[0]
            return _answer(entry, entry.score(x))
        if entry.player_plan is None:
            entry.player_plan = plpy.prepare(
                activity_aggregate_sql(len(recipe.metrics), player_filter=True,
                                       with_invalid=False),
                ["text", "date", "int4", "text[]", "text"])
        rows = plpy.execute(entry.player_plan,
                            [game_id, as_of, recipe.lookback_days, recipe.metrics, player_id])
        if not rows:
            raise UnknownPlayer(
                f"player {_clip(repr(player_id))} has no activity in game {game_id!r} in the"
                f" {recipe.lookback_days} days up to {as_of}",
                hint=_unknown_player_hint(player_id, "Check the player id, or pass as_of => a"
                                                     " day within the player's activity."))
        r = rows[0]
        agg = np.array([[r["active_days"], r["days_since_last"], r["tenure_days"]]
                        + [r[f"t{i}"] for i in range(1, len(recipe.metrics) + 1)]],
                       dtype=np.float64)
        x = features_from_aggregates(agg)[0]
    else:
        if entry.player_plan is None:
            source = population.registered_source(plpy, game_id)
            if source is None:
                raise InvalidFeatures("the taxonomy was calibrated from a feature source that "
                                      "is no longer registered",
                                      hint="Register it again or recalibrate.")
            cols = dict(population.source_columns(plpy, source["relid"],
                                                  recipe.player_column or ""))
            exprs = ", ".join(
                f"({plpy.quote_ident(c)})::{'int::' if cols.get(c) == 'bool' else ''}float8"
                f" AS {plpy.quote_ident(c)}" for c in recipe.columns)
            entry.player_plan = plpy.prepare(
                f"SELECT {exprs} FROM {source['source']}"
                f" WHERE ({plpy.quote_ident(recipe.player_column)})::text = $1 LIMIT 1", ["text"])
        rows = plpy.execute(entry.player_plan, [player_id])
        if not rows:
            raise UnknownPlayer(f"player {_clip(repr(player_id))} is not in the feature source",
                                hint=_unknown_player_hint(player_id, "Check the player id."))
        x = np.array([np.nan if rows[0][c] is None else rows[0][c] for c in recipe.columns],
                     dtype=np.float64)
    return _answer(entry, entry.score(x))


BATCH_CHUNK = 50_000


def _stage_window(plpy: Any, game_id: str, as_of: str, recipe: FeatureRecipe
                  ) -> tuple[int, dict[str, Any] | None]:
    """Stage the window's features (activity windows through the window cache).

    Returns the players staged and, for an activity recipe, what the cache did.
    """
    if recipe.kind != "activity":
        return population.stage_window(plpy, game_id, as_of, recipe), None
    refresh = window_cache.stage(plpy, game_id, as_of, recipe)
    return population.require_players(game_id, as_of, refresh.players), refresh.to_dict()


def _acquire_batch_slot(plpy: Any, game_id: str, max_slots: int) -> int:
    plpy.execute(plpy.prepare("SELECT pg_advisory_xact_lock($1, hashtext($2))", ["int4", "text"]),
                 [BATCH_GAME_LOCK, game_id])
    plan = plpy.prepare("SELECT pg_try_advisory_xact_lock($1, $2) AS ok", ["int4", "int4"])
    for slot in range(1, max_slots + 1):
        if plpy.execute(plan, [BATCH_SLOT_LOCK, slot])[0]["ok"]:
            return slot
    raise BatchSlotsExhausted(
        f"all {max_slots} categorize_all slots are busy",
        hint="Retry later, or raise segmentation.max_concurrent_categorizations.")


def _write_segment_totals(plpy: Any, game_id: str) -> None:
    """Replace the game's rows of segment_totals (read by segment_summary) by totals over
    its current memberships, per taxonomy and primary segment.

    Degree sums by array position, one sum per position up to the game's widest
    taxonomy, each cut to its own taxonomy's width: positional sums read each array
    once, where unnesting every array took twice as long at 1M players. The aggregate
    runs as an unprepared SELECT (the game as a quoted literal), which may use parallel
    workers: 0.39-0.42 s at 1M players here, against 0.70 s inside the INSERT (an INSERT or a
    prepared statement runs without them).
    """
    width = plpy.execute(plpy.prepare(
        "SELECT coalesce(max(cardinality(segment_order)), 0) AS k"
        " FROM segmentation.game_behavioral_taxonomy WHERE game_id = $1", ["text"]),
        [game_id])[0]["k"]
    plpy.execute(plpy.prepare("DELETE FROM segmentation.segment_totals WHERE game_id = $1",
                              ["text"]), [game_id])
    if not width:
        return
    sums = ", ".join(f"sum(m.memberships[{i}])" for i in range(1, int(width) + 1))
    rows = plpy.execute(
        "SELECT s.taxonomy_id, s.segment_id, s.players, s.anomalies, s.membership_sum,"
        " s.sums[1:cardinality(t.segment_order)] AS degree_sums"
        " FROM (SELECT m.taxonomy_id, m.segment_id, count(*) AS players,"
        "  count(*) FILTER (WHERE m.is_anomaly) AS anomalies,"
        f"  sum(m.membership) AS membership_sum, ARRAY[{sums}] AS sums"
        "  FROM segmentation.player_segment_memberships m"
        f"  WHERE m.game_id = {plpy.quote_literal(game_id)} AND m.valid_to IS NULL"
        "  GROUP BY m.taxonomy_id, m.segment_id) s"
        " JOIN segmentation.game_behavioral_taxonomy t ON t.taxonomy_id = s.taxonomy_id")
    insert = plpy.prepare(
        "INSERT INTO segmentation.segment_totals (game_id, taxonomy_id, segment_id, players,"
        " anomalies, membership_sum, degree_sums) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ["text", "int8", "int4", "int8", "int8", "float8", "float8[]"])
    for r in rows:
        plpy.execute(insert, [game_id, r["taxonomy_id"], r["segment_id"], r["players"],
                              r["anomalies"], r["membership_sum"], r["degree_sums"]])


@reports_errors
def categorize_all(plpy: Any, GD: dict, game_id: str, as_of: str | None) -> str:
    t0 = time.perf_counter()
    game_id = _check_game_id(game_id)
    if as_of is None:
        raise InvalidArgument("as_of must not be NULL", hint="Omit it for current_date.")
    settings = read_settings(plpy)
    slot = _acquire_batch_slot(plpy, game_id, int(settings["max_concurrent_categorizations"]))
    active_id = taxonomy_store.active_taxonomy_id(plpy, game_id)
    if active_id is None:
        raise NoActiveTaxonomy(f"game {game_id!r} has no active taxonomy",
                               hint=f"Run SELECT segmentation.calibrate_taxonomy({game_id!r}).")
    # Loaded once: the whole batch scores with exactly this version.
    taxonomy, recipe, doc = taxonomy_store.load(plpy, active_id)
    run_id = _start_run(plpy, "categorize_all", game_id, {"as_of": as_of, "slot": slot})
    timings: dict[str, float] = {}
    n, window = _stage_window(plpy, game_id, as_of, recipe)
    timings["features"] = time.perf_counter() - t0
    _log(plpy, run_id, f"categorizing {n} players of {game_id!r} with taxonomy {active_id}")

    population.create_temp_table(plpy, batch_rows.TABLE.removeprefix("pg_temp."),
                                 batch_rows.COLUMNS)
    k, d = taxonomy.segments.n_segments, taxonomy.axes.n_axes
    insert = plpy.prepare(batch_rows.insert_sql(k, d), ["text[]", "bit varying", "int4[]"])
    segment_ids = [int(i) for i in taxonomy.segment_ids]
    per_call = batch_rows.rows_per_call(k, d)
    done, anomalies, t_score, t_write = 0, 0, 0.0, 0.0
    counts = np.zeros(k, dtype=np.int64)
    names = recipe.feature_names
    # A uniform sample of the scored players (bounded by the calibration sample size)
    # gives the drift verdict of the run without a second pass over the window. A seeded
    # hash of the player id draws it: chunks come in the staged table's storage order,
    # which may differ between runs over the same data.
    seed = int(settings["random_seed"]) & 0xFFFFFFFF
    keep_below = min(1.0, settings["calibration_sample_size"] / n) * 2.0**32
    kept: list[tuple[np.ndarray, ...]] = []
    t_read, t_chunk = 0.0, time.perf_counter()
    for ids, X in population.chunks(plpy, recipe, BATCH_CHUNK, n):
        t1 = time.perf_counter()
        t_read += t1 - t_chunk
        s = taxonomy.score(X, names)
        counts += np.bincount(s.primary, minlength=k)
        anomalies += int(s.anomaly.is_anomaly.sum())
        keep = np.fromiter((zlib.crc32(p.encode(), seed) for p in ids), dtype=np.uint32,
                           count=len(ids)) < keep_below
        kept.append((s.prepared[keep], s.axis_scores[keep], s.segment_id[keep],
                     s.anomaly.is_anomaly[keep]))
        t2 = time.perf_counter()
        for first in range(0, len(ids), per_call):
            rows = slice(first, first + per_call)
            plpy.execute(insert, [*batch_rows.parameters(ids[rows], s, rows), segment_ids])
        t_chunk = time.perf_counter()
        t_write += t_chunk - t2
        t_score += t2 - t1
        done += len(ids)
        if n > BATCH_CHUNK:
            plpy.notice(f"segmentation run {run_id}: categorized {done}/{n} players")
    timings["read_features"] = t_read
    timings["score"] = t_score
    timings["stage_results"] = t_write
    t3 = time.perf_counter()
    params = ["text", "int8", "date", "int8"]
    args = [game_id, active_id, as_of, run_id]
    # One pass over the batch and the current rows finds the players who move (to
    # another segment or taxonomy, with where they come from) and the new ones (no
    # current row: NULL from). Closing and inserting then touch only those players.
    population.create_temp_table(plpy, "segmentation_moves",
                                 "player_id text, taxonomy_id int8, segment_id int4")
    plpy.execute(plpy.prepare(
        "INSERT INTO pg_temp.segmentation_moves SELECT b.player_id, m.taxonomy_id, m.segment_id"
        f" FROM {batch_rows.TABLE} b LEFT JOIN segmentation.player_segment_memberships m"
        " ON m.game_id = $1 AND m.player_id = b.player_id AND m.valid_to IS NULL"
        " WHERE m.player_id IS NULL OR m.taxonomy_id <> $2 OR m.segment_id <> b.segment_id",
        ["text", "int8"]), [game_id, active_id])
    plpy.execute("ANALYZE pg_temp.segmentation_moves")
    changed = plpy.execute(plpy.prepare(
        "UPDATE segmentation.player_segment_memberships m SET valid_to = now()"
        " FROM pg_temp.segmentation_moves v WHERE m.game_id = $1 AND m.player_id = v.player_id"
        " AND m.valid_to IS NULL AND v.segment_id IS NOT NULL", ["text"]), [game_id]).nrows()
    plpy.execute(plpy.prepare(
        "UPDATE segmentation.player_segment_memberships m SET membership = b.membership,"
        " memberships = b.memberships, axis_scores = b.axis_scores,"
        " anomaly_score = b.anomaly_score, is_anomaly = b.is_anomaly, as_of = $3, run_id = $4"
        f" FROM {batch_rows.TABLE} b WHERE m.game_id = $1 AND m.player_id = b.player_id"
        " AND m.valid_to IS NULL AND m.taxonomy_id = $2", params), args)
    # Every new current row is a move: from the row closed above, or from nothing (a
    # player's first categorization). segment_transitions reads these counts.
    moves = plpy.execute(plpy.prepare(
        "WITH inserted AS (INSERT INTO segmentation.player_segment_memberships (game_id,"
        " player_id, taxonomy_id, segment_id, membership, memberships, axis_scores,"
        " anomaly_score, is_anomaly, as_of, run_id, valid_from) SELECT $1, b.player_id, $2,"
        " b.segment_id, b.membership, b.memberships, b.axis_scores, b.anomaly_score,"
        f" b.is_anomaly, $3, $4, now() FROM {batch_rows.TABLE} b"
        " JOIN pg_temp.segmentation_moves v USING (player_id)"
        " RETURNING player_id, segment_id)"
        " INSERT INTO segmentation.segment_transition_counts (game_id, run_id, changed_at,"
        " from_taxonomy_id, from_segment_id, to_taxonomy_id, to_segment_id, players)"
        " SELECT $1, $4, now(), v.taxonomy_id, v.segment_id, $2, i.segment_id, count(*)"
        " FROM inserted i JOIN pg_temp.segmentation_moves v USING (player_id)"
        " GROUP BY v.taxonomy_id, v.segment_id, i.segment_id RETURNING players",
        params), args)
    inserted = sum(int(r["players"]) for r in moves)
    timings["write_history"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    _write_segment_totals(plpy, game_id)
    for view in ("segment_summary", "segment_transitions"):
        plpy.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY segmentation.{view}")
    timings["refresh_views"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    drift = _drift(taxonomy, doc["drift_reference"], *(np.concatenate(c) for c in zip(*kept,
                                                                                      strict=True)),
                   settings)
    timings["drift"] = time.perf_counter() - t5
    timings["total"] = time.perf_counter() - t0
    result = {
        "game_id": game_id, "run_id": run_id, "as_of": as_of, "taxonomy_id": active_id,
        "taxonomy_version": int(doc["taxonomy"]["version"]), "players": done,
        "changed_segment": int(changed), "new": int(inserted - changed),
        "unchanged": int(done - inserted), "anomalies": anomalies,
        "segments": {taxonomy.segment_names[j]: int(counts[j]) for j in range(k)},
        "drift": {"verdict": drift["verdict"], "reasons": drift["reasons"],
                  "sampled_players": int(sum(len(c[2]) for c in kept))},
        "timings": timings,
    }
    if window is not None:
        result["window_cache"] = window
    _finish_run(plpy, run_id, result, active_id)
    _log(plpy, run_id, f"categorized {done} players in {timings['total']:.2f}s")
    return taxonomy_store.dumps(result)


# -------------------------------------------------------------------- anomalies, drift


@reports_errors
def detect_anomalies(plpy: Any, GD: dict, game_id: str, as_of: str | None,
                     min_score: float | None) -> list[dict[str, Any]]:
    from segmentation.anomalies import reasons

    game_id = _check_game_id(game_id)
    if as_of is None:
        raise InvalidArgument("as_of must not be NULL", hint="Omit it for current_date.")
    entry = cached_taxonomy(plpy, GD, game_id)
    tax, recipe = entry.taxonomy, entry.recipe
    n, _ = _stage_window(plpy, game_id, as_of, recipe)
    threshold = 1.0 if min_score is None else float(min_score)
    if threshold != threshold:  # NaN compares false with every score: it would list nobody
        raise InvalidArgument("min_score must not be NaN",
                              hint="Omit it for the calibrated threshold 1.")
    found: list[dict[str, Any]] = []
    for ids, X in population.chunks(plpy, recipe, BATCH_CHUNK, n):
        s = tax.score(X, recipe.feature_names)
        for i in np.flatnonzero(s.anomaly.score >= threshold):
            kind = str(s.anomaly.kind[i])
            found.append({
                "player_id": ids[i],
                "anomaly_score": float(s.anomaly.score[i]),
                "kind": kind if kind != "none" else "outlier",
                "reasons": taxonomy_store.dumps(reasons(
                    s.prepared[i], tax.feature_names, tax.axes, top=3, kind=kind,
                    anomaly=tax.anomaly, segment=int(s.primary[i]))),
                "nearest_segment": tax.segment_names[int(s.primary[i])],
            })
    found.sort(key=lambda r: (-r["anomaly_score"], r["player_id"]))
    return found


@reports_errors
def taxonomy_drift(plpy: Any, GD: dict, game_id: str, as_of: str | None) -> str:
    game_id = _check_game_id(game_id)
    if as_of is None:
        raise InvalidArgument("as_of must not be NULL", hint="Omit it for current_date.")
    settings = read_settings(plpy)
    entry = cached_taxonomy(plpy, GD, game_id)
    tax, recipe = entry.taxonomy, entry.recipe
    reference = taxonomy_store.load_document(plpy, entry.taxonomy_id)["drift_reference"]
    n, _ = _stage_window(plpy, game_id, as_of, recipe)
    cap = int(settings["calibration_sample_size"])
    ids, X = population.fetch(plpy, recipe, limit=cap if n > cap else None,
                              seed=int(settings["random_seed"]))
    s = tax.score(X, recipe.feature_names)
    report = _drift(tax, reference, s.prepared, s.axis_scores, s.segment_id,
                    s.anomaly.is_anomaly, settings)
    return taxonomy_store.dumps({
        "game_id": game_id, "taxonomy_id": entry.taxonomy_id, "as_of": as_of,
        "players": len(ids), **report})


def _drift(tax: Taxonomy, reference: dict[str, Any], prepared: np.ndarray,
           axis_scores: np.ndarray, segment_ids: np.ndarray, is_anomaly: np.ndarray,
           settings: dict[str, float]) -> dict[str, Any]:
    """Drift report of scored players against the calibration reference, with verdict."""
    from segmentation.drift import drift_report, drift_verdict

    report = drift_report(
        reference,
        features={f: prepared[:, i] for i, f in enumerate(tax.feature_names)},
        axes={a: axis_scores[:, i] for i, a in enumerate(tax.axes.names)},
        segment_ids=segment_ids,
        anomaly_flags=is_anomaly,
        variance_explained=tax.axes.explained_share(prepared),
    )
    verdict, why = drift_verdict(report, {
        "psi_watch": settings["drift_psi_watch"],
        "psi_recalibrate": settings["drift_psi_recalibrate"],
        "share_watch": settings["drift_share_watch"],
        "share_recalibrate": settings["drift_share_recalibrate"],
    })
    names = dict(zip((str(i) for i in tax.segment_ids), tax.segment_names, strict=True))
    for key, shares in report.get("segment_shares", {}).items():
        shares["name"] = names.get(key)
    return {"verdict": verdict, "reasons": why, **report}
