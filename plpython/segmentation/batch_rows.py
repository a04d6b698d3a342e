"""The scores of a chunk of players as categorize_all stages them: one INSERT per chunk.

Each player's numbers travel as ``1 + k + d + 1`` fields of one bit string
(:func:`fixed_point.bit_string`), in this order:

- a header: the primary segment's position (1-based, bits 0-15), the anomaly flag
  (bit 16), and the row exponents of the axis scores (bits 20-31) and of the anomaly
  score (bits 32-43), each plus ``EXPONENT_BIAS``;
- the k degrees, fixed point with the exponent 1;
- the d axis scores and the anomaly score, fixed point with their row exponents.

So a player costs one text (its id) and one parsed hex run instead of a dozen array
elements, each of which PL/Python would format and SQL parse (see fixed_point). The
SQL takes the segment id from the taxonomy's ids by position, and every float back
exactly as fixed_point describes.
"""

from __future__ import annotations

import numpy as np

from segmentation import fixed_point
from segmentation.model import Scores

TABLE = "pg_temp.segmentation_batch"
COLUMNS = ("player_id text, segment_id int, membership float8, memberships float8[],"
           " axis_scores float8[], anomaly_score float8, is_anomaly bool")
EXPONENT_BIAS = 2048  # row exponents lie in [MIN_EXPONENT, 1024]: 12 bits once biased
MAX_SEGMENTS = 2**16 - 1


def fields_per_player(k: int, d: int) -> int:
    return 1 + k + d + 1


def rows_per_call(k: int, d: int) -> int:
    """Players one INSERT may take: the bit string addresses its bits with int4."""
    return max(1, fixed_point.MAX_FIELDS // fields_per_player(k, d))


def parameters(player_ids: list[str], scores: Scores, rows: slice = slice(None)
               ) -> list[object]:
    """The INSERT's parameters ($1 text[], $2 bit varying) for ``rows`` of ``scores``.

    ``player_ids`` are those rows' players, in order; the taxonomy's segment ids are
    bound separately ($3, see :func:`insert_sql`).
    """
    posteriors, axis_scores = scores.posteriors[rows], scores.axis_scores[rows]
    if posteriors.shape[1] > MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS} segments can be staged")
    axis_exponents = fixed_point.row_exponents(axis_scores)
    anomaly = scores.anomaly.score[rows, None]
    anomaly_exponents = fixed_point.row_exponents(anomaly)
    header = ((scores.primary[rows].astype(np.int64) + 1)
              | (scores.anomaly.is_anomaly[rows].astype(np.int64) << 16)
              | ((axis_exponents + EXPONENT_BIAS) << 20)
              | ((anomaly_exponents + EXPONENT_BIAS) << 32))
    fields = np.column_stack([
        header,
        fixed_point.encode(posteriors, 1),
        fixed_point.encode(axis_scores, axis_exponents),
        fixed_point.encode(anomaly, anomaly_exponents),
    ])
    return [player_ids, fixed_point.bit_string(fields)]


def insert_sql(k: int, d: int) -> str:
    """INSERT into :data:`TABLE` of the players in :func:`parameters`.

    Parameters: $1 text[] player ids, $2 bit varying fields, $3 int4[] the taxonomy's
    segment ids in model order. ``k`` and ``d`` are ints written into the text.
    """
    w = fields_per_player(k, d)
    degree = fixed_point.scale_sql("1")

    def field(index: str) -> str:
        return fixed_point.field_sql("$2", index)

    # OFFSET 0 (twice): each player's header is read once, then its parts once, not
    # once per use in the row below.
    return (
        f"INSERT INTO {TABLE} SELECT u.player_id, ($3::int4[])[u.pos],"
        f" {field('u.base + u.pos')}::float8 * {degree},"
        f" {fixed_point.row_sql('$2', 'u.base + 1', k, degree)},"
        f" {fixed_point.row_sql('$2', f'u.base + {1 + k}', d, 'u.axis_scale')},"
        f" {field(f'u.base + {1 + k + d}')}::float8 * u.anomaly_scale, u.is_anomaly"
        " FROM (SELECT u.player_id, u.base, (u.h & 65535)::int4 AS pos,"
        " (u.h & 65536) <> 0 AS is_anomaly,"
        f" {fixed_point.scale_sql(f'((u.h >> 20) & 4095)::int4 - {EXPONENT_BIAS}')} AS axis_scale,"
        f" {fixed_point.scale_sql(f'((u.h >> 32) & 4095)::int4 - {EXPONENT_BIAS}')}"
        " AS anomaly_scale"
        f" FROM (SELECT u.player_id, u.base, {field('u.base')} AS h"
        f" FROM (SELECT u.player_id, (u.i::int4 - 1) * {w} AS base"
        " FROM unnest($1::text[]) WITH ORDINALITY AS u(player_id, i)) u OFFSET 0) u OFFSET 0) u")
