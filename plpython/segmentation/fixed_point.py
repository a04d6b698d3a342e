"""Float rows handed from PL/Python to SQL as integers scaled by a power of two.

PL/Python passes each float in a query parameter through its decimal text (Python's
repr, then float8in): about 0.8 µs per value, which made staging the scores the
largest part of categorize_all at 1M players. An int8 goes about three times faster.
So a row of floats travels as integers, ``rint(x * 2**(BITS - e))``, with one exponent
``e`` per row (``max|x| < 2**e``); SQL multiplies each back by ``2**(e - BITS)``.

Precision: with its own exponent, the row's largest magnitude keeps BITS (62)
significant bits, more than a float8 holds, so it and every value within a factor
``2**9`` of it come back bit for bit; a smaller value is off by at most
``max|x| * 2**-62``. With a fixed exponent e the error is at most ``2**(e - 63)``
absolute (for degrees, e = 1: values below ``2**-63`` come back as 0). Both
conversions in SQL are exact (each integer came from a float8, and the scale is a
power of two). -0.0 comes back as 0.0.
"""

from __future__ import annotations

import numpy as np

BITS = 62
# The smallest row exponent: 2**(MIN_EXPONENT - BITS) is still a normal float8. Rows
# below 2**-960 in magnitude lose precision (they become multiples of 2**-1022).
MIN_EXPONENT = -960


def row_exponents(rows: np.ndarray) -> np.ndarray:
    """Per row of ``rows`` (n, w), the least ``e >= MIN_EXPONENT`` with ``max|x| < 2**e``.

    Raises ValueError if a value is NaN or infinite.
    """
    if not np.isfinite(rows).all():
        raise ValueError("only finite values can be sent as fixed point")
    peak = np.abs(rows).max(axis=1, initial=0.0)
    _, exponent = np.frexp(peak)  # peak = m * 2**e with 0.5 <= m < 1, or e = 0 for 0
    return np.maximum(exponent, MIN_EXPONENT).astype(np.int64)


def encode(rows: np.ndarray, exponents: np.ndarray | int) -> np.ndarray:
    """``rows`` (n, w) as int64 ``rint(x * 2**(BITS - e))`` with ``e`` per row or fixed.

    Every ``|x|`` of a row must be below ``2**e``, so that each integer fits in BITS
    bits; a fixed ``e`` suits bounded values (degrees in [0, 1] take ``e = 1``).
    """
    e = np.asarray(exponents, dtype=np.int32)
    scaled = np.rint(np.ldexp(rows, BITS - (e[:, None] if e.ndim else e)))
    if not (np.abs(scaled) <= 2.0**BITS).all():
        raise ValueError("a value is not below 2**e for its row's exponent e")
    return scaled.astype(np.int64)


def scale_sql(exponent: str) -> str:
    """SQL float8 ``2**(e - BITS)`` for the SQL integer expression ``exponent``."""
    return f"(2.0::float8 ^ ({exponent} - {BITS}))"


def row_sql(values: str, first: str, width: int, scale: str) -> str:
    """SQL float8[] of ``width`` values of the int8[] ``values`` from index ``first`` on.

    ``first`` (1-based) and ``scale`` (see scale_sql) are SQL expressions; ``width``
    is an int written into the text.
    """
    return "ARRAY[" + ", ".join(
        f"{values}[{first} + {j}]::float8 * {scale}" for j in range(int(width))) + "]"
