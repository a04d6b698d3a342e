"""fixed_point's SQL on a real server: what it decodes is what Python encoded."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from segmentation import fixed_point

pytestmark = pytest.mark.db


def test_fields_of_a_bit_string_come_back_exactly(conn: psycopg.Connection) -> None:
    rng = np.random.default_rng(8)
    ints = np.concatenate([
        np.array([0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63)], dtype=np.int64),
        rng.integers(-(2**62), 2**62, size=500, dtype=np.int64)])
    got = conn.execute(
        f"SELECT array_agg({fixed_point.field_sql('b.bits', 'i')} ORDER BY i)"
        " FROM (SELECT %s::bit varying AS bits) b, generate_series(0, %s - 1) AS i",
        (fixed_point.bit_string(ints), len(ints))).fetchone()[0]
    assert got == ints.tolist()


def test_a_row_of_floats_comes_back_bit_for_bit(conn: psycopg.Connection) -> None:
    rows = np.array([[-1.7e308, 1.0, -2.5e-300], [3.0, -0.0, 1e-5], [0.0, 0.0, 0.0]])
    e = fixed_point.row_exponents(rows)
    ints = fixed_point.encode(rows, e)
    row = fixed_point.row_sql("b.bits", "(r.n::int4 - 1) * 3", 3, fixed_point.scale_sql("r.e"))
    got = conn.execute(
        f"SELECT array_agg({row} ORDER BY r.n) FROM (SELECT %s::bit varying AS bits) b,"
        " unnest(%s::int4[]) WITH ORDINALITY AS r(e, n)",
        (fixed_point.bit_string(ints), e.tolist())).fetchone()[0]
    expected = ints.astype(np.float64) * 2.0 ** (e[:, None].astype(np.float64) - fixed_point.BITS)
    assert np.array(got).tolist() == expected.tolist()
    assert got[0][0] == -1.7e308 and got[1][:2] == [3.0, 0.0]
