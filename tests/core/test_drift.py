"""Drift: PSI, segment shares, anomaly rate, variance explained -> verdict."""

from __future__ import annotations

import numpy as np
import pytest
from segmentation.drift import (
    DEFAULT_THRESHOLDS,
    bin_shares,
    drift_report,
    drift_verdict,
    psi,
    reference_quantiles,
)


def _reference(values: np.ndarray) -> dict:
    edges = reference_quantiles(values)
    return {"edges": edges, "shares": bin_shares(edges, values)}


def test_reference_quantiles_are_deciles_and_collapse_ties() -> None:
    v = np.random.default_rng(0).standard_normal(10_000)
    edges = reference_quantiles(v, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(bin_shares(edges, v), 0.1, atol=1e-3)
    zero_inflated = np.concatenate([np.zeros(7000), np.arange(1, 3001, dtype=float)])
    edges = reference_quantiles(zero_inflated, 10)
    assert edges[0] == 0.0 and len(edges) == len(set(edges)) == 4  # 6 tied deciles -> 1
    shares = bin_shares(edges, zero_inflated)
    assert shares[0] == pytest.approx(0.7) and sum(shares) == pytest.approx(1.0)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = _reference(rng.standard_normal(20_000))
    assert psi(ref["edges"], ref["shares"], rng.standard_normal(20_000)) < 0.01
    assert 0.10 < psi(ref["edges"], ref["shares"], rng.normal(0.4, 1.0, 20_000)) < 0.25
    assert psi(ref["edges"], ref["shares"], rng.normal(1.0, 1.0, 20_000)) > 0.25
    # Empty bins stay finite thanks to the epsilon.
    assert np.isfinite(psi(ref["edges"], ref["shares"], np.full(100, 50.0)))


def test_verdict_levels_and_reasons() -> None:
    assert drift_verdict({"features": {"a": 0.05}}) == ("ok", [])
    verdict, why = drift_verdict({"features": {"a": 0.05, "b": 0.15}})
    assert verdict == "watch" and len(why) == 1 and "feature b" in why[0]
    verdict, why = drift_verdict({"features": {"b": 0.15}, "axes": {"spend": 0.4}})
    assert verdict == "recalibrate" and any("axis spend" in r for r in why)


def test_segment_shares_anomaly_rate_and_variance_rules() -> None:
    shares = {"1": {"reference": 0.50, "current": 0.44}, "2": {"reference": 0.5, "current": 0.5}}
    assert drift_verdict({"segment_shares": shares})[0] == "watch"
    shares["1"]["current"] = 0.35
    verdict, why = drift_verdict({"segment_shares": shares})
    assert verdict == "recalibrate" and "segment 1" in why[0]
    assert drift_verdict({"anomaly_rate": 0.02, "contamination": 0.01})[0] == "ok"
    assert drift_verdict({"anomaly_rate": 0.031, "contamination": 0.01})[0] == "recalibrate"
    # A calibration population that already had 2% anomalies raises the baseline.
    seen = {"anomaly_rate": 0.05, "contamination": 0.01, "reference_anomaly_rate": 0.02}
    assert drift_verdict(seen)[0] == "ok"
    assert drift_verdict({**seen, "anomaly_rate": 0.07})[0] == "recalibrate"
    ve = {"variance_explained": {"reference": 0.75, "current": 0.66}}
    assert drift_verdict(ve)[0] == "ok"
    ve["variance_explained"]["current"] = 0.60
    assert drift_verdict(ve)[0] == "recalibrate"


def test_thresholds_are_overridable() -> None:
    report = {"features": {"a": 0.15}}
    assert drift_verdict(report)[0] == "watch"
    assert drift_verdict(report, {"psi_watch": 0.2})[0] == "ok"
    assert drift_verdict(report, {"psi_recalibrate": 0.12})[0] == "recalibrate"
    assert DEFAULT_THRESHOLDS["psi_recalibrate"] == 0.25


def test_report_from_reference_same_population_ok_shifted_recalibrate() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    features = {"spend": rng.standard_normal(n), "playtime": rng.standard_normal(n)}
    reference = {
        "features": {k: _reference(v) for k, v in features.items()},
        "segment_shares": {"1": 0.5, "2": 0.3, "3": 0.2},
        "anomaly_rate": 0.01,
        "contamination": 0.01,
        "variance_explained": 0.72,
    }
    same = drift_report(
        reference,
        features={k: rng.standard_normal(n) for k in features},
        segment_ids=rng.choice([1, 2, 3], n, p=[0.5, 0.3, 0.2]),
        anomaly_flags=rng.random(n) < 0.01,
        variance_explained=0.71,
    )
    assert drift_verdict(same) == ("ok", [])

    shifted = drift_report(
        reference,
        features={"spend": rng.normal(1.0, 1.0, n), "playtime": rng.standard_normal(n)},
        segment_ids=rng.choice([1, 2, 4], n, p=[0.3, 0.3, 0.4]),
        anomaly_flags=rng.random(n) < 0.05,
        variance_explained=0.55,
    )
    verdict, why = drift_verdict(shifted)
    assert verdict == "recalibrate"
    text = " ".join(why)
    assert "feature spend" in text and "feature playtime" not in text
    assert "segment 4" in text and "segment 1" in text
    assert "anomaly rate" in text and "variance explained" in text
    assert shifted["segment_shares"]["3"] == {"reference": 0.2, "current": 0.0}
