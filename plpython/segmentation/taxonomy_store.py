"""Read and write taxonomies in the four tables through SPI (a thin adapter).

The model is data: ``game_behavioral_taxonomy`` holds the preparation, anomaly
model and recipe as jsonb; ``behavioral_axes`` one row per axis with numeric
arrays; ``segment_definitions`` one row per mixture component. This module turns
those rows into a :class:`~segmentation.model.Taxonomy` document and back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from segmentation import __version__
from segmentation.errors import UnknownTaxonomy
from segmentation.features import FeatureRecipe
from segmentation.model import FORMAT, FORMAT_VERSION, Taxonomy

_plans: dict[str, Any] = {}


def _plan(plpy: Any, key: str, query: str, types: list[str]) -> Any:
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = plpy.prepare(query, types)
    return plan


def dumps(obj: Any) -> str:
    """JSON for jsonb columns; numpy scalars and non-finite floats handled."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(_finite(obj), default=default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def active_taxonomy_id(plpy: Any, game_id: str) -> int | None:
    """The game's active taxonomy id, or None.

    Runs on every categorize_player(game, features) call, which has no SET search_path
    (see sql/200_categorization.sql): every name here is schema-qualified, the operator
    and the parameter type included, so the caller's search_path cannot redirect it.
    """
    rows = plpy.execute(_plan(plpy, "active", (
        "SELECT t.taxonomy_id FROM segmentation.game_behavioral_taxonomy t"
        " WHERE t.game_id OPERATOR(pg_catalog.=) $1 AND t.is_active"), ["pg_catalog.text"]),
        [game_id])
    return int(rows[0]["taxonomy_id"]) if rows else None


def load_document(plpy: Any, taxonomy_id: int) -> dict[str, Any]:
    """The taxonomy as one jsonb-able document (the export format)."""
    rows = plpy.execute(_plan(plpy, "tax", (
        "SELECT taxonomy_id, game_id, version, is_active, as_of::text AS as_of, lookback_days,"
        " population, sampled, feature_recipe, preparation, anomaly_model, drift_reference,"
        " quality, segment_order, calibrated_at::text AS calibrated_at, package_version"
        " FROM segmentation.game_behavioral_taxonomy WHERE taxonomy_id = $1"), ["int8"]),
        [taxonomy_id])
    if not rows:
        raise UnknownTaxonomy(f"taxonomy {taxonomy_id} does not exist",
                              hint="SELECT * FROM segmentation.taxonomy_history('<game>') "
                                   "lists the versions of a game.")
    t = rows[0]
    axes = plpy.execute(_plan(plpy, "axes", (
        "SELECT name, feature_names, loadings, weights, basis, variance_explained"
        " FROM segmentation.behavioral_axes WHERE taxonomy_id = $1 ORDER BY axis_index"),
        ["int8"]), [taxonomy_id])
    segs = plpy.execute(_plan(plpy, "segs", (
        "SELECT segment_id, name, weight, mean, covariance, size, share, profile,"
        " previous_segment_id FROM segmentation.segment_definitions WHERE taxonomy_id = $1"),
        ["int8"]), [taxonomy_id])
    by_id = {int(s["segment_id"]): s for s in segs}
    order = [int(i) for i in t["segment_order"]]
    segs = [by_id[i] for i in order]
    d = len(axes)
    feature_names = list(axes[0]["feature_names"]) if axes else []
    p = len(feature_names)

    def columns(key: str) -> list[list[float]]:
        return np.array([a[key] for a in axes], dtype=np.float64).reshape(d, p).T.tolist()

    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "taxonomy": {
            "taxonomy_id": int(t["taxonomy_id"]), "game_id": t["game_id"],
            "version": int(t["version"]), "as_of": t["as_of"],
            "lookback_days": t["lookback_days"], "population": int(t["population"]),
            "sampled": bool(t["sampled"]), "calibrated_at": t["calibrated_at"],
            "package_version": t["package_version"],
        },
        "feature_recipe": json.loads(t["feature_recipe"]),
        "preparation": json.loads(t["preparation"]),
        "axes": {
            "names": [a["name"] for a in axes],
            "feature_names": feature_names,
            "loadings": columns("loadings"),
            "weights": columns("weights"),
            "basis": columns("basis"),
            "variance_explained": [float(a["variance_explained"]) for a in axes],
        },
        "segments": {
            "weights": [float(s["weight"]) for s in segs],
            "means": [list(s["mean"]) for s in segs],
            "covariances": [np.array(s["covariance"]).reshape(d, d).tolist() for s in segs],
        },
        "segment_ids": order,
        "segment_names": [s["name"] for s in segs],
        "segment_details": [
            {"segment_id": int(s["segment_id"]), "size": int(s["size"]),
             "share": float(s["share"]), "profile": json.loads(s["profile"]),
             "previous_segment_id": s["previous_segment_id"]} for s in segs
        ],
        "anomaly": json.loads(t["anomaly_model"]),
        "drift_reference": json.loads(t["drift_reference"]),
        "quality": json.loads(t["quality"]),
    }


def load(plpy: Any, taxonomy_id: int) -> tuple[Taxonomy, FeatureRecipe, dict[str, Any]]:
    doc = load_document(plpy, taxonomy_id)
    return Taxonomy.from_dict(doc), FeatureRecipe.from_dict(doc["feature_recipe"]), doc


def save(plpy: Any, *, game_id: str, taxonomy: Taxonomy, recipe: FeatureRecipe,
         as_of: str | None, population: int, sampled: bool, profiles: list[dict[str, Any]],
         lineage: dict[int, int | None], quality: dict[str, Any],
         drift_reference: dict[str, Any], summary: dict[str, Any],
         parent_taxonomy_id: int | None) -> tuple[int, int]:
    """Insert a new, inactive taxonomy version; return (taxonomy_id, version)."""
    version = int(plpy.execute(_plan(plpy, "nextver", (
        "SELECT coalesce(max(version), 0) + 1 AS v FROM segmentation.game_behavioral_taxonomy"
        " WHERE game_id = $1"), ["text"]), [game_id])[0]["v"])
    axes = taxonomy.axes
    row = plpy.execute(_plan(plpy, "ins_tax", (
        "INSERT INTO segmentation.game_behavioral_taxonomy (game_id, version, as_of,"
        " lookback_days, population, sampled, n_axes, n_segments, variance_explained,"
        " feature_recipe, preparation, anomaly_model, drift_reference, quality, summary,"
        " segment_order, parent_taxonomy_id, package_version)"
        " VALUES ($1, $2, coalesce($3::date, current_date), $4, $5, $6, $7, $8, $9, $10, $11,"
        " $12, $13, $14, $15, $16, $17, $18) RETURNING taxonomy_id"),
        ["text", "int4", "text", "int4", "int4", "bool", "int4", "int4", "float8", "jsonb",
         "jsonb", "jsonb", "jsonb", "jsonb", "jsonb", "int4[]", "int8", "text"]),
        [game_id, version, as_of, recipe.lookback_days, population, sampled, axes.n_axes,
         taxonomy.segments.n_segments, min(1.0, float(axes.variance_explained.sum())),
         dumps(recipe.to_dict()), dumps(taxonomy.preparation.to_dict()),
         dumps(taxonomy.anomaly.to_dict()), dumps(drift_reference), dumps(quality),
         dumps(summary), list(taxonomy.segment_ids), parent_taxonomy_id, __version__])
    taxonomy_id = int(row[0]["taxonomy_id"])
    ins_axis = _plan(plpy, "ins_axis", (
        "INSERT INTO segmentation.behavioral_axes (taxonomy_id, axis_index, name, feature_names,"
        " loadings, weights, basis, variance_explained, top_features)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
        ["int8", "int4", "text", "text[]", "float8[]", "float8[]", "float8[]", "float8", "jsonb"])
    for a, name in enumerate(axes.names):
        load_col = axes.loadings[:, a]
        top = np.argsort(-np.abs(load_col))[:5]
        plpy.execute(ins_axis, [
            taxonomy_id, a + 1, name, list(axes.feature_names), load_col.tolist(),
            axes.weights[:, a].tolist(), axes.basis[:, a].tolist(),
            float(axes.variance_explained[a]),
            dumps([{"feature": axes.feature_names[i], "loading": float(load_col[i])}
                   for i in top])])
    ins_seg = _plan(plpy, "ins_seg", (
        "INSERT INTO segmentation.segment_definitions (taxonomy_id, segment_id, name, weight,"
        " mean, covariance, size, share, profile, previous_segment_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
        ["int8", "int4", "text", "float8", "float8[]", "float8[]", "int4", "float8", "jsonb",
         "int4"])
    segs = taxonomy.segments
    for j, seg_id in enumerate(taxonomy.segment_ids):
        prof = profiles[j]
        plpy.execute(ins_seg, [
            taxonomy_id, seg_id, taxonomy.segment_names[j],
            min(1.0, max(0.0, float(segs.weights[j]))), segs.means[j].tolist(),
            segs.covariances[j].reshape(-1).tolist(), int(prof["size"]),
            float(prof["share"]),
            dumps({"axis_means": prof["axis_means"], "features": prof["features"],
                   "mean_membership": prof.get("mean_membership"),
                   "anomaly_rate": prof.get("anomaly_rate")}),
            lineage.get(seg_id)])
    return taxonomy_id, version


def activate(plpy: Any, taxonomy_id: int) -> str:
    """Make ``taxonomy_id`` the active version of its game, atomically; return the game."""
    rows = plpy.execute(_plan(plpy, "lock_tax", (
        "SELECT game_id FROM segmentation.game_behavioral_taxonomy WHERE taxonomy_id = $1"
        " FOR UPDATE"), ["int8"]), [taxonomy_id])
    if not rows:
        raise UnknownTaxonomy(f"taxonomy {taxonomy_id} does not exist",
                              hint="SELECT * FROM segmentation.taxonomy_history('<game>') "
                                   "lists the versions of a game.")
    game_id = rows[0]["game_id"]
    plpy.execute(_plan(plpy, "deact", (
        "UPDATE segmentation.game_behavioral_taxonomy SET is_active = false"
        " WHERE game_id = $1 AND is_active AND taxonomy_id <> $2"), ["text", "int8"]),
        [game_id, taxonomy_id])
    changed = plpy.execute(_plan(plpy, "act", (
        "UPDATE segmentation.game_behavioral_taxonomy SET is_active = true"
        " WHERE taxonomy_id = $1 AND NOT is_active"), ["int8"]), [taxonomy_id]).nrows()
    if changed:
        # segment_summary materializes is_active: without this, dashboards filtering on
        # it would show the previous version as active until the next categorize_all.
        plpy.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY segmentation.segment_summary")
    return str(game_id)
