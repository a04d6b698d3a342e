"""Population drift against the calibration reference: PSI, segment shares, anomaly rate.

Reference quantities are stored at calibration (see :mod:`segmentation.calibration`) on
the prepared/standardised values the model actually sees, so imputation changes count too.

Default verdict thresholds (:data:`DEFAULT_THRESHOLDS`, each overridable):

* feature / axis PSI: ``< 0.10`` ok, ``0.10 - 0.25`` watch, ``> 0.25`` recalibrate;
* segment share shift (absolute, share points): ``> 0.05`` watch, ``> 0.10`` recalibrate;
* anomaly rate ``> 3 x max(contamination, calibration anomaly rate)``: recalibrate;
* variance explained by the axes dropping by ``> 0.10`` (absolute share): recalibrate.

The verdict is the worst level triggered: ``"ok" < "watch" < "recalibrate"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PSI_EPSILON = 1e-4

DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi_watch": 0.10,
    "psi_recalibrate": 0.25,
    "share_watch": 0.05,
    "share_recalibrate": 0.10,
    "anomaly_rate_factor": 3.0,
    "variance_drop": 0.10,
}

_LEVELS = ("ok", "watch", "recalibrate")


def reference_quantiles(values: np.ndarray, n_bins: int = 10) -> list[float]:
    """Interior bin edges (at most ``n_bins - 1``, strictly increasing) of ``values`` (n,).

    Bins are ``(-inf, e_1], (e_1, e_2], ..., (e_m, +inf)``; tied quantiles (e.g. a mass of
    zeros) collapse into one edge, so a bin never has zero reference width.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return []
    qs = np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    edges = np.unique(qs)
    # The top edge equal to the maximum would leave the last bin empty by construction.
    return [float(e) for e in edges if e < v.max()]


def bin_shares(edges: Sequence[float], values: np.ndarray) -> list[float]:
    """Share (sums to 1) of ``values`` (n,) in each of the ``len(edges) + 1`` bins."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="left"),
        minlength=len(edges) + 1,
    )
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * (len(edges) + 1)


def psi(edges: Sequence[float], reference_shares: Sequence[float], values: np.ndarray) -> float:
    """Population stability index of ``values`` (n,) against the reference bins.

    ``sum((a - e) * ln(a / e))`` with both shares floored at ``PSI_EPSILON`` so empty bins
    stay finite.
    """
    expected = np.maximum(np.asarray(reference_shares, dtype=np.float64), PSI_EPSILON)
    actual = np.maximum(np.asarray(bin_shares(edges, values)), PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_report(
    reference: Mapping[str, Any],
    features: Mapping[str, np.ndarray] | None = None,
    axes: Mapping[str, np.ndarray] | None = None,
    segment_ids: np.ndarray | None = None,
    anomaly_flags: np.ndarray | None = None,
    variance_explained: float | None = None,
) -> dict[str, Any]:
    """Compare current values with a drift ``reference`` (as built by calibration).

    ``features``/``axes`` map name -> current values (n,) in the same space as the
    reference; ``segment_ids`` (n,) are primary segment ids; ``anomaly_flags`` (n,) bool.
    Returns the report consumed by :func:`drift_verdict`.
    """
    report: dict[str, Any] = {}
    for group, values_by_name in (("features", features), ("axes", axes)):
        if values_by_name is None:
            continue
        ref = reference.get(group, {})
        report[group] = {
            name: psi(ref[name]["edges"], ref[name]["shares"], values)
            for name, values in values_by_name.items()
            if name in ref
        }
    if segment_ids is not None and "segment_shares" in reference:
        ids = np.asarray(segment_ids)
        ref_shares = {str(k): float(v) for k, v in reference["segment_shares"].items()}
        uniq, counts = np.unique(ids, return_counts=True)
        current = {str(i): c / ids.size for i, c in zip(uniq.tolist(), counts, strict=True)}
        report["segment_shares"] = {
            key: {"reference": ref_shares.get(key, 0.0), "current": float(current.get(key, 0.0))}
            for key in sorted(set(ref_shares) | set(current))
        }
    if anomaly_flags is not None:
        flags = np.asarray(anomaly_flags, dtype=bool)
        report["anomaly_rate"] = float(flags.mean()) if flags.size else 0.0
        report["contamination"] = float(reference.get("contamination", 0.0))
        # The calibration population's own rate is the baseline when it was already above
        # the contamination rate (e.g. it held planted or real anomalies).
        report["reference_anomaly_rate"] = float(reference.get("anomaly_rate", 0.0))
    if variance_explained is not None and "variance_explained" in reference:
        report["variance_explained"] = {
            "reference": float(reference["variance_explained"]),
            "current": float(variance_explained),
        }
    return report


def drift_verdict(
    report: Mapping[str, Any], thresholds: Mapping[str, float] | None = None
) -> tuple[str, list[str]]:
    """Verdict ``"ok" | "watch" | "recalibrate"`` and human-readable reasons for a report.

    ``report`` keys (all optional): ``features``/``axes`` (name -> PSI), ``segment_shares``
    (id -> {"reference", "current"}), ``anomaly_rate`` with ``contamination`` (and
    optionally ``reference_anomaly_rate``), and ``variance_explained`` ({"reference",
    "current"}). ``thresholds`` overrides entries of :data:`DEFAULT_THRESHOLDS`.
    """
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    level = 0
    reasons: list[str] = []

    def flag(new_level: int, message: str) -> None:
        nonlocal level
        level = max(level, new_level)
        reasons.append(f"{_LEVELS[new_level]}: {message}")

    for group, label in (("features", "feature"), ("axes", "axis")):
        for name, value in sorted(report.get(group, {}).items()):
            if value > t["psi_recalibrate"]:
                flag(2, f"{label} {name} PSI {value:.3f} > {t['psi_recalibrate']:.2f}")
            elif value >= t["psi_watch"]:
                flag(1, f"{label} {name} PSI {value:.3f} >= {t['psi_watch']:.2f}")

    for seg, shares in sorted(report.get("segment_shares", {}).items()):
        shift = abs(float(shares["current"]) - float(shares["reference"]))
        msg = (
            f"segment {seg} share {shares['reference']:.3f} -> {shares['current']:.3f}"
            f" (shift {shift:.3f}"
        )
        if shift > t["share_recalibrate"]:
            flag(2, f"{msg} > {t['share_recalibrate']:.2f})")
        elif shift > t["share_watch"]:
            flag(1, f"{msg} > {t['share_watch']:.2f})")

    if "anomaly_rate" in report and report.get("contamination"):
        baseline = max(
            float(report["contamination"]), float(report.get("reference_anomaly_rate", 0.0))
        )
        limit = t["anomaly_rate_factor"] * baseline
        if report["anomaly_rate"] > limit:
            flag(2, f"anomaly rate {report['anomaly_rate']:.4f} > {limit:.4f}")

    if "variance_explained" in report:
        ve = report["variance_explained"]
        drop = float(ve["reference"]) - float(ve["current"])
        if drop > t["variance_drop"]:
            flag(
                2,
                f"variance explained {ve['reference']:.3f} -> {ve['current']:.3f}"
                f" (drop {drop:.3f} > {t['variance_drop']:.2f})",
            )

    return _LEVELS[level], reasons
