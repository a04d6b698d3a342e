"""The quality suite at a reduced size (the full run is `make quality`, docs/quality.md).

Each shape runs in its own clone of the installed template: planted populations, the real
calibration and categorisation in SQL, the bars asserted.
"""

from __future__ import annotations

import psycopg
import pytest
from segmentation_loader.generator import SHAPES

from tests.quality.suite import SuiteConfig, format_table, measure_shape

pytestmark = pytest.mark.db

# 4,000 players and 2 resamples: about 10-15 s per shape on the 2-core machine, while the
# accuracy figures stay well clear of sampling noise around the bars.
REDUCED = SuiteConfig(players=4000, resamples=2, single_player_sample=100)


@pytest.mark.parametrize("shape", SHAPES)
def test_quality_bars(conn: psycopg.Connection, shape: str) -> None:
    report = measure_shape(conn, shape, REDUCED)
    print()
    print(format_table([report]))
    barred = [f for f in report.figures if f.bar is not None]
    assert {f.key for f in barred} == {
        "accuracy", "stability_system", "continuity", "stability_e2e"}
    failed = [f"{f.label}: {f.value:.4f} < {f.bar}" for f in barred if not f.passed]
    assert not failed, failed
