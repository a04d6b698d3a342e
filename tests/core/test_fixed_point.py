"""Fixed-point hand-off of float rows: what SQL decodes is what Python held."""

from __future__ import annotations

import numpy as np
import pytest
from segmentation import fixed_point


def decoded(ints: np.ndarray, exponents: np.ndarray | int) -> np.ndarray:
    """What the SQL of fixed_point.row_sql computes: int8::float8 * 2.0 ^ (e - BITS)."""
    e = np.asarray(exponents, dtype=np.float64)
    scale = 2.0 ** ((e[:, None] if e.ndim else e) - fixed_point.BITS)
    return ints.astype(np.float64) * scale


def test_rows_come_back_bit_for_bit_at_float8_precision() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(2000, 4)) * 10.0 ** rng.integers(-280, 300, size=(2000, 1))
    rows[0] = 0.0
    rows[1] = [-1.7e308, 1.0, -2.0, 3.0]
    e = fixed_point.row_exponents(rows)
    ints = fixed_point.encode(rows, e)
    assert ints.dtype == np.int64
    back = decoded(ints, e)
    # Each row's peak keeps 62 bits: exact; the rest within peak * 2**-62.
    peak = np.abs(rows).max(axis=1)
    assert (np.abs(back).max(axis=1) == peak).all()
    assert (np.abs(back - rows) <= peak[:, None] * 2.0**-62).all()
    close = np.abs(rows) >= peak[:, None] * 2.0**-9
    assert (back[close] == rows[close]).all()


def test_degrees_with_the_fixed_exponent() -> None:
    rng = np.random.default_rng(4)
    degrees = rng.dirichlet(np.full(7, 0.2), size=1000)
    degrees[0] = [1.0, 0, 0, 0, 0, 0, 0]
    back = decoded(fixed_point.encode(degrees, 1), 1)
    assert (np.abs(back - degrees) <= 2.0**-62).all()
    assert back[0, 0] == 1.0
    assert (back[degrees >= 2.0**-9] == degrees[degrees >= 2.0**-9]).all()


def test_tiny_rows_keep_a_normal_scale() -> None:
    rows = np.array([[5e-324, 1e-300], [0.0, 0.0]])
    e = fixed_point.row_exponents(rows)
    assert e.min() >= fixed_point.MIN_EXPONENT
    assert np.isfinite(2.0 ** (e.astype(float) - fixed_point.BITS)).all()
    # Below 2**-960 the scale stops at 2**-1022: values keep that absolute precision.
    back = decoded(fixed_point.encode(rows, e), e)
    assert back[0, 1] == np.rint(1e-300 * 2.0**1022) * 2.0**-1022
    assert back[0, 0] == 0.0 and (back[1] == 0.0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        fixed_point.row_exponents(np.array([[1.0, bad]]))


def test_values_beyond_the_fixed_exponent_are_refused() -> None:
    with pytest.raises(ValueError, match="below 2"):
        fixed_point.encode(np.array([[2.5]]), 1)


def test_bit_string_holds_each_integer_in_64_bits_in_row_major_order() -> None:
    ints = np.array([[0, -1, 2**62], [-(2**63), 2**63 - 1, 5]], dtype=np.int64)
    text = fixed_point.bit_string(ints)
    assert text.startswith("x") and len(text) == 1 + 6 * 16
    fields = [int(text[1 + 16 * i:17 + 16 * i], 16) for i in range(6)]
    as_signed = [f - 2**64 if f >= 2**63 else f for f in fields]
    assert as_signed == ints.ravel().tolist()


def test_bit_string_refuses_more_fields_than_sql_can_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixed_point, "MAX_FIELDS", 4)
    fixed_point.bit_string(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="bit string"):
        fixed_point.bit_string(np.zeros(5, dtype=np.int64))


def test_row_sql_reads_consecutive_fields() -> None:
    sql = fixed_point.row_sql("$2", "u.base + 1", 3, fixed_point.scale_sql("u.e"))
    for j in range(3):
        assert f"substring($2 FROM (u.base + 1 + {j}) * 64 + 1 FOR 64)::bit(64)::int8" in sql
    assert sql.count("(2.0::float8 ^ (u.e - 62))") == 3
