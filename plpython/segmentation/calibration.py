"""Calibration: fit a complete :class:`~segmentation.model.Taxonomy` on a player population.

Pipeline: preparation -> axes -> segments -> membership -> anomaly thresholds -> scoring of
the population through :meth:`Taxonomy.score` (the same path categorisation uses) ->
quality -> segment profiles -> names -> continuity with a previous taxonomy -> drift
reference.

**Continuity.** Segment centres are compared in the NEW standardised feature space. Each
taxonomy's centres are its mixture means mapped to its own prepared space through the
loadings and back to raw units by inverting its preparation (``Taxonomy.centroids_raw``:
log features give a geometric-mean-like centre, robust to whales), then pushed through the
NEW preparation. Both sides take exactly the same route, so unchanged data gives identical
centres (distance 0) and every segment keeps its id. Distances use only the features both
taxonomies keep. Matched segments inherit id and name; unmatched ones get ids
``max(previous ids) + 1, ...`` in segment order; without a previous taxonomy ids are
``1..k``. The maximum matching distance defaults to
:func:`segmentation.continuity.default_max_distance` (half the distance to the nearest
neighbouring segment on either side).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from segmentation.anomalies import fit_anomaly_model
from segmentation.axes import fit_axes
from segmentation.continuity import default_max_distance, match_segments
from segmentation.drift import bin_shares, reference_quantiles
from segmentation.membership import MembershipModel
from segmentation.model import Scores, Taxonomy
from segmentation.naming import segment_name, unique_names
from segmentation.preparation import PreparationReport, fit_preparation
from segmentation.quality import bootstrap_stability, separation
from segmentation.segments import fit_segments


@dataclass
class CalibrationOptions:
    """Calibration settings. ``n_segments == 0`` selects k automatically (BIC elbow).

    ``stability_sample`` caps the rows used by the bootstrap stability check (refits are
    the most expensive quality step); ``max_centroid_distance`` overrides the continuity
    default; ``drift_bins`` is the number of quantile bins of the drift reference.
    """

    variance_threshold: float = 0.70
    n_segments: int = 7
    seed: int = 0
    contamination: float = 0.01
    stability_resamples: int = 3
    max_axes: int | None = None
    k_min: int = 2
    k_max: int = 12
    n_init: int = 3
    silhouette_sample: int = 5000
    stability_sample: int = 10_000
    max_centroid_distance: float | None = None
    drift_bins: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationOptions:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class CalibrationResult:
    """Everything a calibration produced.

    ``profiles`` has one dict per segment (model order); ``lineage`` maps each new segment
    id to the previous id it continues, or None for a new segment.
    """

    taxonomy: Taxonomy
    report: PreparationReport
    scores: Scores
    profiles: list[dict[str, Any]]
    quality: dict[str, Any]
    k_curve: list[dict[str, float]]
    drift_reference: dict[str, Any]
    timings: dict[str, float]
    lineage: dict[int, int | None] = field(default_factory=dict)
    options: CalibrationOptions = field(default_factory=CalibrationOptions)


def _none_if_nan(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats (no JSON representation) by None, recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return _none_if_nan(float(value))
    return value


def _profiles(
    X: np.ndarray,
    feature_names: Sequence[str],
    taxonomy: Taxonomy,
    scores: Scores,
) -> list[dict[str, Any]]:
    n = X.shape[0]
    out = []
    for j in range(taxonomy.segments.n_segments):
        mask = scores.primary == j
        size = int(mask.sum())
        rows = X[mask]
        features: dict[str, dict[str, float | None]] = {}
        for c, name in enumerate(feature_names):
            col = rows[:, c]
            col = col[np.isfinite(col)]
            features[name] = {
                "mean": _none_if_nan(float(col.mean())) if col.size else None,
                "median": _none_if_nan(float(np.median(col))) if col.size else None,
            }
        axis_means = scores.axis_scores[mask].mean(axis=0) if size else None
        out.append(
            {
                "index": j,
                "segment_id": taxonomy.segment_ids[j],
                "name": taxonomy.segment_names[j],
                "size": size,
                "share": size / n,
                "weight": float(taxonomy.segments.weights[j]),
                "mean_membership": float(scores.membership[mask].mean()) if size else None,
                "anomaly_rate": float(scores.anomaly.is_anomaly[mask].mean()) if size else None,
                "axis_means": {
                    a: (None if axis_means is None else float(axis_means[i]))
                    for i, a in enumerate(taxonomy.axes.names)
                },
                "features": features,
            }
        )
    return out


def _continuity(
    taxonomy: Taxonomy,
    previous: Taxonomy,
    previous_centroids_raw: np.ndarray | None,
    previous_centroid_features: Sequence[str] | None,
    max_distance: float | None,
) -> dict[int, int]:
    prep = taxonomy.preparation
    if previous_centroids_raw is None:
        prev_raw = previous.centroids_raw()
        prev_features = previous.preparation.feature_names
    else:
        prev_raw = np.asarray(previous_centroids_raw, dtype=np.float64)
        prev_features = list(previous_centroid_features or previous.preparation.feature_names)
    common = [i for i, f in enumerate(prep.feature_names) if f in set(prev_features)]
    if not common:
        return {}
    # Previous centroids in the new raw layout; features the previous model lacked stay NaN
    # (imputed by transform) and are excluded from the distance below.
    position = {f: i for i, f in enumerate(prev_features)}
    prev_in_new = np.full((prev_raw.shape[0], len(prep.feature_names)), np.nan)
    for i in common:
        prev_in_new[:, i] = prev_raw[:, position[prep.feature_names[i]]]
    prev_z, _ = prep.transform(prev_in_new)
    new_z, _ = prep.transform(taxonomy.centroids_raw())
    prev_z, new_z = prev_z[:, common], new_z[:, common]
    limit = default_max_distance(prev_z, new_z) if max_distance is None else max_distance
    return match_segments(prev_z, new_z, limit)


def _identities(
    generated_names: list[str],
    mapping: dict[int, int],
    previous: Taxonomy | None,
) -> tuple[list[int], list[str], dict[int, int | None]]:
    k = len(generated_names)
    if previous is None:
        ids = list(range(1, k + 1))
        return ids, unique_names(generated_names), {i: None for i in ids}
    next_id = max(previous.segment_ids, default=0) + 1
    ids, names = [0] * k, [""] * k
    lineage: dict[int, int | None] = {}
    for j in range(k):
        if j in mapping:
            ids[j] = previous.segment_ids[mapping[j]]
            names[j] = previous.segment_names[mapping[j]]
            lineage[ids[j]] = ids[j]
        else:
            ids[j] = next_id
            names[j] = generated_names[j]
            lineage[next_id] = None
            next_id += 1
    # Inherited names win: de-duplicate with matched segments first so only new ones change.
    order = sorted(range(k), key=lambda j: (j not in mapping, j))
    deduped = unique_names([names[j] for j in order])
    for j, name in zip(order, deduped, strict=True):
        names[j] = name
    return ids, names, lineage


def _drift_reference(
    taxonomy: Taxonomy, scores: Scores, n_bins: int, contamination: float
) -> dict[str, Any]:
    def binned(values: np.ndarray) -> dict[str, list[float]]:
        edges = reference_quantiles(values, n_bins)
        return {"edges": edges, "shares": bin_shares(edges, values)}

    ids, counts = np.unique(scores.segment_id, return_counts=True)
    n = scores.primary.shape[0]
    shares = {str(i): 0.0 for i in taxonomy.segment_ids}
    shares.update({str(i): c / n for i, c in zip(ids.tolist(), counts.tolist(), strict=True)})
    return {
        "space": "prepared",
        "n_bins": n_bins,
        "features": {
            f: binned(scores.prepared[:, i]) for i, f in enumerate(taxonomy.feature_names)
        },
        "axes": {a: binned(scores.axis_scores[:, i]) for i, a in enumerate(taxonomy.axes.names)},
        "segment_shares": shares,
        "anomaly_rate": float(scores.anomaly.is_anomaly.mean()),
        "contamination": contamination,
        "variance_explained": float(taxonomy.axes.variance_explained.sum()),
    }


def calibrate(
    X: np.ndarray,
    feature_names: Sequence[str],
    options: CalibrationOptions | None = None,
    previous: Taxonomy | None = None,
    previous_centroids_raw: np.ndarray | None = None,
    previous_centroid_features: Sequence[str] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> CalibrationResult:
    """Calibrate a taxonomy on raw features ``X`` (n, q) named ``feature_names`` (q).

    ``previous`` enables continuity (module docstring). ``previous_centroids_raw``
    (k0, len(previous_centroid_features)) optionally replaces the centres derived from
    ``previous`` - e.g. stored raw-unit centres; the columns default to the previous kept
    features. ``checkpoint`` is called between phases and between candidate fits; it may
    raise to abandon the calibration (a cancel or timeout in the database).
    """
    opts = options or CalibrationOptions()
    names = [str(f) for f in feature_names]
    X = np.asarray(X, dtype=np.float64)
    timings: dict[str, float] = {}
    t_start = tick = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[phase] = now - tick
        tick = now
        if checkpoint is not None:
            checkpoint()

    prep, report = fit_preparation(X, names)
    Z, _ = prep.transform(X, names)
    lap("preparation")

    axes = fit_axes(Z, prep.feature_names, opts.variance_threshold, opts.max_axes)
    S = axes.scores(Z)
    lap("axes")

    fit = fit_segments(S, opts.n_segments, opts.seed, opts.k_min, opts.k_max, opts.n_init,
                       checkpoint)
    membership = MembershipModel(fit.segments)
    lap("segments")

    anomaly = fit_anomaly_model(Z, S, axes, membership, opts.contamination)
    lap("anomaly")

    k = fit.segments.n_segments
    generated = [segment_name(fit.segments.means[j], axes.names) for j in range(k)]
    taxonomy = Taxonomy(
        preparation=prep,
        axes=axes,
        segments=fit.segments,
        anomaly=anomaly,
        segment_ids=list(range(1, k + 1)),
        segment_names=unique_names(generated),
    )
    taxonomy._membership = membership
    mapping: dict[int, int] = {}
    if previous is not None:
        mapping = _continuity(
            taxonomy,
            previous,
            previous_centroids_raw,
            previous_centroid_features,
            opts.max_centroid_distance,
        )
    taxonomy.segment_ids, taxonomy.segment_names, lineage = _identities(
        generated, mapping, previous
    )
    lap("continuity")

    scores = taxonomy.score(X, names)
    lap("scoring")

    quality: dict[str, Any] = {
        "n_players": int(X.shape[0]),
        "n_features": len(prep.feature_names),
        "n_axes": axes.n_axes,
        "n_segments": k,
        "k_selected_by": fit.k_selected_by,
        "variance_explained": float(axes.variance_explained.sum()),
        "variance_explained_per_axis": axes.variance_explained.tolist(),
        "mean_log_likelihood": fit.mean_log_likelihood,
        "bic": fit.bic,
        "converged": fit.converged,
        "anomaly_rate": float(scores.anomaly.is_anomaly.mean()),
        "mean_membership": float(scores.membership.mean()),
    }
    quality.update(separation(S, scores.primary, opts.silhouette_sample, opts.seed))
    if opts.stability_resamples > 0 and k > 1:
        rng = np.random.default_rng(opts.seed)
        n = S.shape[0]
        sub = (
            np.arange(n)
            if n <= opts.stability_sample
            else np.sort(rng.choice(n, opts.stability_sample, replace=False))
        )

        def refit(S_boot: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            if checkpoint is not None:
                checkpoint()
            # As many starts as the real fit: with one, an unlucky EM start (not the
            # segmentation) would dominate the figure.
            seg = fit_segments(S_boot, k, opts.seed, n_init=opts.n_init).segments
            return lambda S_eval: MembershipModel(seg).posteriors(S_eval).argmax(axis=1)

        quality["stability_ari"] = bootstrap_stability(
            S[sub],
            refit,
            n_boot=opts.stability_resamples,
            seed=opts.seed,
            reference_labels=scores.primary[sub],
        )
        quality["stability_sample"] = len(sub)
    else:
        quality["stability_ari"] = None
    lap("quality")

    profiles = _profiles(X, names, taxonomy, scores)
    lap("profiles")

    drift_reference = _drift_reference(taxonomy, scores, opts.drift_bins, opts.contamination)
    lap("drift")
    timings["total"] = time.perf_counter() - t_start

    return CalibrationResult(
        taxonomy=taxonomy,
        report=report,
        scores=scores,
        profiles=profiles,
        quality=_json_safe(quality),
        k_curve=_json_safe(fit.k_curve),
        drift_reference=drift_reference,
        timings=timings,
        lineage=lineage,
        options=opts,
    )
