"""The key tables native/categorize_features.c reads feature vectors with."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from segmentation.features import (
    FeatureRecipe,
    features_from_metric_vector,
    metric_vector_keys,
)


def vector_from_key_tables(values: dict[str, float], tables: dict[str, Any],
                           p: int) -> list[float]:
    """What the C code does with metric_vector_keys' lists (read_features)."""
    position = {k: i for i, k in enumerate(tables["keys"])}
    present = {position[k]: v for k, v in values.items()}
    x = [math.nan] * p
    for key, value in present.items():
        if tables["key_feature"][key] >= 0:
            x[tables["key_feature"][key]] = value
    if tables["activity"]:
        m = len(tables["metric_key"])
        active = present.get(tables["active_key"], 0.0)
        for j in range(m):
            mk, tk, rk = (tables[n][j] for n in ("metric_key", "metric_total_key",
                                                 "metric_rate_key"))
            if mk >= 0 and mk in present and not (tk >= 0 and tk in present):
                x[j] = present[mk]
            total = x[j]
            if active and total == total and not (rk >= 0 and rk in present):
                x[m + j] = total / active
    return x


RECIPES = [
    FeatureRecipe(kind="activity", metrics=["sessions", "spend_usd", "minutes_played"],
                  lookback_days=90),
    # A metric whose name is also a feature name of the recipe.
    FeatureRecipe(kind="activity", metrics=["active_days", "sessions"], lookback_days=30),
    FeatureRecipe(kind="source", source="public.s", player_column="player_id",
                  columns=["a", "b", "c"]),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=["activity", "overlapping", "source"])
def test_key_tables_reproduce_features_from_metric_vector(recipe: FeatureRecipe) -> None:
    tables = metric_vector_keys(recipe)
    keys = tables["keys"]
    # Every key the Python path accepts, each once.
    assert set(keys) == set(recipe.feature_names) | set(recipe.metrics)
    assert len(keys) == len(set(keys))
    rng = random.Random(3)
    for _ in range(2000):
        chosen = rng.sample(keys, rng.randint(1, len(keys)))
        values = {k: rng.choice([0, 0.0, 1, 2.5, 40, 1e6, -3]) for k in chosen}
        expected = features_from_metric_vector(values, recipe)
        got = vector_from_key_tables(values, tables, len(recipe.feature_names))
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b, values
