"""Segment mixture: recovery of planted groups, determinism, ordering, automatic k."""

from __future__ import annotations

import json

import numpy as np
import pytest
from segmentation import segments as segments_module
from segmentation.quality import matched_accuracy
from segmentation.segments import Segments, fit_segments, n_parameters

CENTRES = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
SIZES = (1500, 900, 600, 300)


def blobs(sizes: tuple[int, ...] = SIZES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated anisotropic Gaussian groups in 3-d, shuffled; returns (S, labels)."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for g, n in enumerate(sizes):
        A = np.diag([0.6, 0.4, 0.5]) @ np.linalg.qr(rng.standard_normal((3, 3)))[0]
        parts.append(CENTRES[g] + rng.standard_normal((n, 3)) @ A)
        labels += [g] * n
    order = rng.permutation(sum(sizes))
    return np.vstack(parts)[order], np.array(labels)[order]


def test_recovers_well_separated_planted_groups() -> None:
    S, truth = blobs()
    fit = fit_segments(S, 4, seed=0)
    assert matched_accuracy(truth, fit.labels) > 0.99
    assert fit.segments.means.shape == (4, 3)
    assert fit.segments.covariances.shape == (4, 3, 3)
    np.testing.assert_allclose(fit.posteriors.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fit.labels, fit.posteriors.argmax(axis=1))
    assert fit.k_selected_by == "fixed" and fit.k_curve[0]["k"] == 4


def test_segments_are_ordered_by_weight_and_fit_is_deterministic() -> None:
    S, _ = blobs()
    a = fit_segments(S, 4, seed=0)
    b = fit_segments(S, 4, seed=0)
    assert np.all(np.diff(a.segments.weights) <= 0)
    np.testing.assert_allclose(a.segments.weights, np.array(SIZES) / sum(SIZES), atol=0.01)
    np.testing.assert_array_equal(a.segments.means, b.segments.means)
    np.testing.assert_array_equal(a.labels, b.labels)
    # The order follows the data, not the seed or the row order.
    c = fit_segments(S[::-1], 4, seed=5)
    np.testing.assert_allclose(c.segments.means, a.segments.means, atol=1e-3)


def test_automatic_k_picks_the_planted_k_and_reports_the_curve() -> None:
    S, _ = blobs()
    fit = fit_segments(S, 0, seed=0, k_min=2, k_max=7, n_init=1)
    assert fit.k_selected_by == "bic_elbow"
    assert fit.segments.n_segments == 4
    assert [c["k"] for c in fit.k_curve] == [2, 3, 4, 5, 6, 7]
    assert all({"k", "bic", "silhouette"} <= set(c) for c in fit.k_curve)
    bic = {c["k"]: c["bic"] for c in fit.k_curve}
    assert bic[4] < bic[3] < bic[2]


def test_automatic_k_is_bounded_by_data_size() -> None:
    S, _ = blobs(sizes=(40, 40, 40, 40))
    fit = fit_segments(S, 0, seed=0, k_max=12, n_init=1)
    per_component = n_parameters(1, 3) + 1
    assert max(c["k"] for c in fit.k_curve) == len(S) // (5 * per_component)


def test_large_population_path_uses_a_pilot_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    S, truth = blobs()
    monkeypatch.setattr(segments_module, "FIT_SAMPLE", 500)
    fit = fit_segments(S, 4, seed=0)
    assert matched_accuracy(truth, fit.labels) > 0.99
    again = fit_segments(S, 4, seed=0)
    np.testing.assert_array_equal(fit.segments.means, again.segments.means)


def test_round_trip() -> None:
    S, _ = blobs()
    seg = fit_segments(S, 4, seed=0).segments
    again = Segments.from_dict(json.loads(json.dumps(seg.to_dict(), allow_nan=False)))
    for name in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(getattr(seg, name), getattr(again, name))


def test_invalid_arguments() -> None:
    S, _ = blobs()
    with pytest.raises(ValueError):
        fit_segments(S[:3], 4)
    with pytest.raises(ValueError):
        fit_segments(S, -1)
