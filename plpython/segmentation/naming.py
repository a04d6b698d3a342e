"""Human-readable names for axes and segments, derived from loadings and axis means.

Names are a presentation aid, never an identifier: segment identity is the stable
``segment_id`` kept by :mod:`segmentation.continuity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Metric stem -> word. Anything not listed falls back to the stem with spaces.
VOCABULARY: dict[str, str] = {
    "spend_usd": "spend",
    "spend": "spend",
    "revenue_usd": "spend",
    "purchases": "purchases",
    "minutes_played": "playtime",
    "playtime_minutes": "playtime",
    "sessions": "sessions",
    "pvp_matches": "pvp",
    "friends_invited": "social invites",
    "chat_messages": "chat",
    "active_days": "activity",
    "days_since_last": "recency gap",
    "tenure_days": "tenure",
}
_SUFFIXES = ("_total", "_per_day")

# An axis is named after features loading at least this share of its top |loading|.
AXIS_NAME_RELATIVE_LOADING = 0.7
AXIS_NAME_MAX_WORDS = 2
# |mean axis score| (axis scores have unit variance) from which a segment "stands out".
SEGMENT_HIGH_Z = 0.5
SEGMENT_VERY_HIGH_Z = 1.5
SEGMENT_NAME_MAX_AXES = 2


def feature_word(feature_name: str) -> str:
    """Word for one feature: strip ``_total``/``_per_day``, map the stem via the vocabulary."""
    stem = feature_name
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return VOCABULARY.get(stem, stem.replace("_", " "))


def axis_name(loadings_col: np.ndarray, feature_names: Sequence[str]) -> str:
    """Name of one axis from its loadings column (p,), e.g. ``"spend & purchases"``.

    Uses the words of the features whose |loading| is at least 70% of the top one (at most
    two distinct words, strongest first). A word whose loading sign opposes the dominant
    loading gets ``"low "``; a negative dominant loading prefixes the whole name with
    ``"low "``.
    """
    col = np.asarray(loadings_col, dtype=np.float64).reshape(-1)
    if col.size == 0 or not np.any(col):
        return "axis"
    order = np.argsort(-np.abs(col), kind="stable")
    top = col[order[0]]
    words: list[str] = []
    for j in order:
        if abs(col[j]) < AXIS_NAME_RELATIVE_LOADING * abs(top):
            break
        word = feature_word(feature_names[j])
        if np.sign(col[j]) != np.sign(top):
            word = f"low {word}"
        if word not in words:
            words.append(word)
        if len(words) == AXIS_NAME_MAX_WORDS:
            break
    name = " & ".join(words)
    return f"low {name}" if top < 0 else name


def unique_names(names: Sequence[str]) -> list[str]:
    """Make names unique by appending ``" (2)"``, ``" (3)"``... to later duplicates."""
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name} ({n})"
        seen.add(candidate)
        out.append(candidate)
    return out


def segment_name(axis_means_z: np.ndarray, axis_names: Sequence[str]) -> str:
    """Name of a segment from its mean axis scores (k,) in unit-variance axis units.

    The (at most two) axes with the largest |mean| >= 0.5 give e.g.
    ``"High spend / low social"``; ``"very"`` is added from |mean| >= 1.5. A segment with no
    axis standing out is ``"Average"``.
    """
    z = np.asarray(axis_means_z, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.abs(z), kind="stable")
    parts: list[str] = []
    for a in order[:SEGMENT_NAME_MAX_AXES]:
        if not abs(z[a]) >= SEGMENT_HIGH_Z:
            break
        level = "high" if z[a] > 0 else "low"
        if abs(z[a]) >= SEGMENT_VERY_HIGH_Z:
            level = f"very {level}"
        parts.append(f"{level} {axis_names[a]}")
    if not parts:
        return "Average"
    name = " / ".join(parts)
    return name[0].upper() + name[1:]
