"""Synthetic player population for one game, with planted (known) archetypes.

Used by the demo, the tests, the quality suite and the benchmarks. The model is
deliberately not "gaussian blobs": every player has latent lognormal / logit-normal
propensities that are correlated with each other, days off follow a per-player
activity probability with a weekend lift, daily values are Poisson / gamma noise
around those propensities, spend is zero-inflated (most players never pay) and
snapped to store price points, lapsing players churn mid-window and new players
join late.

Layout of the data, mirroring ``segmentation.player_activity``:

* one row per player per *active* day (no row on a day off); every player has at
  least one row in the window;
* in the database (and in :func:`format_copy_rows`) a metric that is 0 that day is by
  default *omitted* from the ``metrics`` object (``omit_zeros``): treat a missing key
  as 0. ``sessions`` (>= 1) and ``minutes_played`` (> 0) are on every row. Omitting
  zeros makes the table ~35% smaller and the load 1.2-1.5x faster; the in-memory
  arrays hold explicit zeros;
* counts are integers, ``minutes_played`` has 0.1 min resolution, money is USD
  rounded to cents.

Generation is lazy and chunked: :func:`simulate` only assigns labels (O(n) small
arrays); the daily rows are produced block by block (``BLOCK_PLAYERS`` players per
block) by :meth:`Population.iter_chunks`. Each block draws from its own
``SeedSequence(seed, spawn_key=(1, block))`` so the data depend only on the
arguments of :func:`simulate`, never on how far or how often one iterates, and
1M players x 90 days (about 40M rows) is never held in memory at once.

Planted labels never go into the tables the system reads: :func:`write_population`
writes them to ``segmentation_lab.planted_labels``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "ANOMALY_KINDS",
    "ARCHETYPES",
    "BASE_METRICS",
    "BLOCK_PLAYERS",
    "CORRELATED_METRICS",
    "DEFAULT_SHARES",
    "MIXED_LABEL",
    "SHAPES",
    "ActivityChunk",
    "Population",
    "archetype_shares",
    "format_copy_rows",
    "player_features",
    "simulate",
    "write_population",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

BASE_METRICS: Final[tuple[str, ...]] = (
    "sessions",
    "minutes_played",
    "spend_usd",
    "purchases",
    "pvp_matches",
    "friends_invited",
    "chat_messages",
)

# shape="correlated": near-duplicate columns as real pipelines produce them (a second
# tracker, gross vs net revenue, a unit change...). Each is (name, source, kind):
# the kind selects the noise model in `_correlated_copies`.
_CORRELATED_SPECS: Final[tuple[tuple[str, str, str], ...]] = (
    ("minutes_played_v2", "minutes_played", "minutes"),
    ("playtime_hours", "minutes_played", "hours"),
    ("sessions_alt", "sessions", "count"),
    ("spend_usd_gross", "spend_usd", "gross"),
    ("purchases_confirmed", "purchases", "thin"),
    ("pvp_matches_started", "pvp_matches", "count"),
    ("chat_messages_sent", "chat_messages", "thin"),
    ("friends_invited_v2", "friends_invited", "count"),
)
CORRELATED_METRICS: Final[tuple[str, ...]] = tuple(s[0] for s in _CORRELATED_SPECS)

# Decimal places written per metric (0 = integer count).
_DECIMALS: Final[dict[str, int]] = {
    "sessions": 0,
    "minutes_played": 1,
    "spend_usd": 2,
    "purchases": 0,
    "pvp_matches": 0,
    "friends_invited": 0,
    "chat_messages": 0,
    "minutes_played_v2": 1,
    "playtime_hours": 2,
    "sessions_alt": 0,
    "spend_usd_gross": 2,
    "purchases_confirmed": 0,
    "pvp_matches_started": 0,
    "chat_messages_sent": 0,
    "friends_invited_v2": 0,
}

ARCHETYPES: Final[tuple[str, ...]] = (
    "casual_dabbler",
    "grinder",
    "socializer",
    "competitive_pvp",
    "lapsing",
    "new_explorer",
    "whale",
)
ANOMALY_KINDS: Final[tuple[str, ...]] = ("anomaly_bot", "anomaly_fraud")
MIXED_LABEL: Final[str] = "mixed"
SHAPES: Final[tuple[str, ...]] = ("default", "whale1pct", "correlated")

DEFAULT_SHARES: Final[dict[str, float]] = {
    "casual_dabbler": 0.35,
    "grinder": 0.15,
    "socializer": 0.13,
    "competitive_pvp": 0.12,
    "lapsing": 0.12,
    "new_explorer": 0.11,
    "whale": 0.02,
}

# Players per generation block. Part of the data definition (each block has its own
# random stream), so changing it changes the generated data for a given seed.
BLOCK_PLAYERS: Final[int] = 8192

_BOT: Final[int] = len(ARCHETYPES)
_FRAUD: Final[int] = len(ARCHETYPES) + 1

# Store price points (USD); a purchase's price is the player's taste times noise,
# snapped to the nearest point in log space, as real stores sell fixed SKUs.
_PRICE_POINTS: Final[FloatArray] = np.array(
    [0.99, 1.99, 2.99, 4.99, 9.99, 19.99, 49.99, 99.99, 199.99]
)


@dataclass(frozen=True)
class _Spec:
    """Behaviour of one archetype; ``(median, sigma)`` pairs are lognormal per player.

    Rates are per *active* day or per session; probabilities are logit-normal
    ``(median probability, sigma of the logit)``; ``join``/``churn`` are fractions
    of the window, drawn uniformly in ``[lo, hi]``.
    """

    p_active: tuple[float, float]  # P(active on a weekday), logit-normal
    sessions: tuple[float, float]  # sessions per active day (>= 1), lognormal
    session_minutes: tuple[float, float]  # minutes per session, lognormal
    pvp_per_session: tuple[float, float]
    chat_per_session: tuple[float, float]
    invites_per_day: tuple[float, float]
    payer_prob: float  # P(the player ever pays at all)
    buy_prob: tuple[float, float]  # payers: P(purchase on an active day), logit-normal
    extra_purchases: tuple[float, float]  # payers: extra purchases on a buying day
    price: tuple[float, float]  # payers: typical price per purchase, USD
    join: tuple[float, float] = (0.0, 0.0)
    churn: tuple[float, float] = (1.0, 1.0)  # >= 1 means never churns in the window


# Non-whales: a small minority ever pays, rarely and cheaply. Kept rare on purpose:
# non-payers sit on an exact zero on the spend axis, so a mass of small payers in every
# archetype would be modelled as a "payers" cluster of its own by a mixture model.
_SMALL_PAYER: Final[dict[str, Any]] = {
    "payer_prob": 0.01,
    "buy_prob": (0.04, 0.4),
    "extra_purchases": (0.05, 0.5),
    "price": (1.5, 0.4),
}

# Tuned so that the downstream pipeline (log1p, standardise, PCA to 70% variance,
# varimax, 7-component GMM; see tests/core/test_generator.py) separates the 7
# archetypes. On this feature set PCA-to-70% keeps only 3 axes (engagement, spend,
# social), so the 6 non-whale archetypes are placed apart in the engagement x social
# plane, with lifecycle (churn, late join) and pvp adding to those axes rather than
# relying on axes of their own. The per-player spreads of play time and activity
# (sigma 0.2-0.3 in log / logit space) are about the widest that keep that; heavier
# tails live in the daily noise, in chat and in whale spend.
_SPECS: Final[dict[str, _Spec]] = {
    "casual_dabbler": _Spec(
        p_active=(0.13, 0.3),
        sessions=(1.3, 0.2),
        session_minutes=(11.0, 0.25),
        pvp_per_session=(0.03, 0.6),
        chat_per_session=(0.2, 0.6),
        invites_per_day=(0.004, 0.5),
        **_SMALL_PAYER,
    ),
    "grinder": _Spec(
        p_active=(0.94, 0.3),
        sessions=(7.0, 0.2),
        session_minutes=(55.0, 0.25),
        pvp_per_session=(0.03, 0.6),
        chat_per_session=(0.04, 0.6),
        invites_per_day=(0.002, 0.5),
        **_SMALL_PAYER,
    ),
    "socializer": _Spec(
        p_active=(0.65, 0.3),
        sessions=(1.8, 0.2),
        session_minutes=(10.0, 0.25),
        pvp_per_session=(0.05, 0.6),
        chat_per_session=(30.0, 0.4),
        invites_per_day=(0.8, 0.4),
        **_SMALL_PAYER,
    ),
    "competitive_pvp": _Spec(
        p_active=(0.8, 0.3),
        sessions=(5.0, 0.2),
        session_minutes=(25.0, 0.25),
        pvp_per_session=(4.0, 0.3),
        chat_per_session=(3.0, 0.4),
        invites_per_day=(0.1, 0.4),
        **_SMALL_PAYER,
    ),
    "lapsing": _Spec(
        p_active=(0.8, 0.3),
        sessions=(3.5, 0.2),
        session_minutes=(30.0, 0.25),
        pvp_per_session=(0.1, 0.6),
        chat_per_session=(0.15, 0.6),
        invites_per_day=(0.002, 0.5),
        churn=(0.3, 0.6),
        **_SMALL_PAYER,
    ),
    "new_explorer": _Spec(
        p_active=(0.88, 0.3),
        sessions=(4.0, 0.2),
        session_minutes=(25.0, 0.25),
        pvp_per_session=(0.3, 0.5),
        chat_per_session=(2.0, 0.4),
        invites_per_day=(0.3, 0.3),
        join=(0.8, 0.9),
        **_SMALL_PAYER,
    ),
    "whale": _Spec(
        p_active=(0.75, 0.5),
        sessions=(3.5, 0.3),
        session_minutes=(32.0, 0.35),
        pvp_per_session=(1.0, 0.5),
        chat_per_session=(2.0, 0.5),
        invites_per_day=(0.03, 0.5),
        payer_prob=1.0,
        buy_prob=(0.45, 0.5),
        extra_purchases=(1.0, 0.6),
        price=(15.0, 0.9),
    ),
}

# Spec tables indexed by archetype code (0..6); anomalies (codes 7, 8) reuse the
# casual row for the parameters they do not override in `_anomaly_rows`.
_LOGNORMAL_FIELDS: Final[tuple[str, ...]] = (
    "sessions",
    "session_minutes",
    "pvp_per_session",
    "chat_per_session",
    "invites_per_day",
    "extra_purchases",
    "price",
)
_LOGIT_FIELDS: Final[tuple[str, ...]] = ("p_active", "buy_prob")
# How strongly each latent rate loads on the player's common "engagement" factor: an
# engaged player plays more days, more sessions, longer sessions and talks more.
_ENGAGEMENT_LOADING: Final[dict[str, float]] = {
    "p_active": 0.15,
    "sessions": 0.15,
    "session_minutes": 0.15,
    "pvp_per_session": 0.15,
    "chat_per_session": 0.15,
    "invites_per_day": 0.15,
    "extra_purchases": 0.0,
    "price": 0.0,
    "buy_prob": 0.2,
}


def _spec_table() -> dict[str, NDArray[np.float64]]:
    """Stack the specs into arrays indexed by code: ``name -> (n_codes, k)``."""
    order = [*ARCHETYPES, "casual_dabbler", "casual_dabbler"]  # bot, fraud placeholders
    specs = [_SPECS[a] for a in order]
    table: dict[str, NDArray[np.float64]] = {}
    for name in (*_LOGNORMAL_FIELDS, *_LOGIT_FIELDS, "join", "churn"):
        table[name] = np.array([getattr(s, name) for s in specs], dtype=np.float64)
    table["payer_prob"] = np.array([s.payer_prob for s in specs], dtype=np.float64)
    return table


_TABLE: Final[dict[str, NDArray[np.float64]]] = _spec_table()


def archetype_shares(shape: str = "default") -> dict[str, float]:
    """Shares of the 7 normal archetypes for ``shape`` (sum to 1).

    ``whale1pct`` sets the whale share to 0.01 and rescales the others so they keep
    their relative sizes.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    shares = dict(DEFAULT_SHARES)
    if shape == "whale1pct":
        rest = 1.0 - shares["whale"]
        shares = {k: v * 0.99 / rest for k, v in shares.items() if k != "whale"}
        shares["whale"] = 0.01
    return shares


@dataclass(frozen=True)
class ActivityChunk:
    """Daily rows of a contiguous block of players, in (player, day) order.

    Attributes:
        player_index: (r,) int64, global player index (``Population.player_ids[i]``).
        day_offset: (r,) int64, 0..days-1; the date is ``start_date + day_offset``.
        values: (r, m) float64, one column per ``metric_names`` entry, already
            rounded exactly as written to the database.
        metric_names: the m column names.
        start_date: date of day offset 0.
        player_start, player_stop: the block covers players ``[start, stop)``.
    """

    player_index: IntArray
    day_offset: IntArray
    values: FloatArray
    metric_names: tuple[str, ...]
    start_date: date
    player_start: int
    player_stop: int

    @property
    def n_rows(self) -> int:
        """Number of active player-days r in the chunk."""
        return int(self.player_index.shape[0])

    @property
    def columns(self) -> dict[str, FloatArray]:
        """One (r,) float64 view per metric, keyed by metric name."""
        return {name: self.values[:, j] for j, name in enumerate(self.metric_names)}

    def metric(self, name: str) -> FloatArray:
        """(r,) float64 values of one metric."""
        return self.values[:, self.metric_names.index(name)]

    def dates(self) -> NDArray[np.datetime64]:
        """(r,) ``datetime64[D]`` activity dates."""
        return np.datetime64(self.start_date, "D") + self.day_offset.astype("timedelta64[D]")


@dataclass(frozen=True)
class Population:
    """A simulated population of one game; rows are generated lazily per block.

    Attributes:
        player_ids: (n,) str, ``p0000000``-style stable ids (index zero-padded to 7+).
        labels: (n,) str, planted archetype, ``"mixed"`` or an ``anomaly_*`` kind.
        mixtures: n entries, ``{archetype: weight}`` (weights sum to 1) for mixed
            players, else ``None``.
        metric_names: metric keys written in each row's ``metrics`` object.
        days: window length in days; rows fall in ``[start_date, as_of]``.
        as_of: last day of the window (inclusive).
        seed, shape: the arguments the population was built from.
    """

    player_ids: NDArray[np.str_]
    labels: NDArray[np.str_]
    mixtures: list[dict[str, float] | None]
    metric_names: tuple[str, ...]
    days: int
    as_of: date
    seed: int
    shape: str
    # Archetype codes per player: primary, partner (== primary unless mixed), and the
    # weight of the primary in [0.35, 0.65] for mixed players, 1.0 otherwise.
    _code: NDArray[np.int64] = field(repr=False)
    _code2: NDArray[np.int64] = field(repr=False)
    _weight: FloatArray = field(repr=False)

    @property
    def n_players(self) -> int:
        """Number of players n."""
        return int(self.player_ids.shape[0])

    @property
    def start_date(self) -> date:
        """First day of the window, ``as_of - (days - 1)``."""
        return self.as_of - timedelta(days=self.days - 1)

    @property
    def n_blocks(self) -> int:
        """Number of chunks :meth:`iter_chunks` yields."""
        return -(-self.n_players // BLOCK_PLAYERS)

    def chunk(self, block: int) -> ActivityChunk:
        """Generate the rows of block ``block`` (players ``[block*B, (block+1)*B)``)."""
        if not 0 <= block < self.n_blocks:
            raise IndexError(f"block {block} out of range 0..{self.n_blocks - 1}")
        return _simulate_block(self, block)

    def iter_chunks(self) -> Iterator[ActivityChunk]:
        """Yield the daily rows block by block (``BLOCK_PLAYERS`` players each).

        Memory is bounded by one block (~8k players x days); for 90 days that is at
        most ~0.7M rows per chunk.
        """
        for b in range(self.n_blocks):
            yield _simulate_block(self, b)


# --------------------------------------------------------------------------- labels


def _largest_remainder(shares: Sequence[float], total: int) -> IntArray:
    """Integer counts (k,) summing to ``total`` proportional to ``shares``."""
    raw = np.asarray(shares, dtype=np.float64) * total / float(np.sum(shares))
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def simulate(
    n_players: int,
    days: int = 90,
    seed: int = 0,
    as_of: date = date(2026, 6, 30),
    shape: str = "default",
    anomaly_rate: float = 0.0,
    mixture_rate: float = 0.0,
) -> Population:
    """Plant labels for a population; the daily rows are generated on iteration.

    Args:
        n_players: number of players n (every one gets at least one active day).
        days: window length; rows are dated ``as_of - days + 1 .. as_of``.
        seed: seed of all randomness; same arguments give identical data.
        as_of: last day of the window.
        shape: ``"default"``; ``"whale1pct"`` (whale share 1%, others rescaled);
            ``"correlated"`` (adds 8 noisy near-duplicate metrics, see
            ``CORRELATED_METRICS``).
        anomaly_rate: fraction of players replaced by anomalies, split evenly
            between ``anomaly_bot`` (24 h/day, every day, no social, no spend) and
            ``anomaly_fraud`` (impossible purchase patterns with minimal play).
        mixture_rate: fraction of players built as a blend of two archetypes with
            weight in [0.35, 0.65]; labelled ``"mixed"`` with their weights in
            ``mixtures``.

    Counts per label are exact (largest-remainder rounding), then shuffled.
    """
    if n_players < 1:
        raise ValueError("n_players must be >= 1")
    if days < 7:
        raise ValueError("days must be >= 7 so that join/churn behaviours fit")
    if not 0.0 <= anomaly_rate <= 1.0 or not 0.0 <= mixture_rate <= 1.0:
        raise ValueError("anomaly_rate and mixture_rate must be in [0, 1]")
    if anomaly_rate + mixture_rate > 1.0:
        raise ValueError("anomaly_rate + mixture_rate must be <= 1")
    shares = archetype_shares(shape)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))

    n_anom = round(anomaly_rate * n_players)
    n_mixed = round(mixture_rate * n_players)
    n_normal = n_players - n_anom - n_mixed
    counts = _largest_remainder([shares[a] for a in ARCHETYPES], n_normal)
    n_bot = n_anom - n_anom // 2
    code = np.concatenate(
        [
            np.repeat(np.arange(len(ARCHETYPES), dtype=np.int64), counts),
            np.full(n_bot, _BOT, dtype=np.int64),
            np.full(n_anom - n_bot, _FRAUD, dtype=np.int64),
            np.full(n_mixed, -1, dtype=np.int64),
        ]
    )
    code2 = code.copy()
    weight = np.ones(n_players, dtype=np.float64)
    # Mixed players blend two distinct archetypes drawn uniformly over pairs, so rare
    # archetypes (whale) appear in blends as often as common ones.
    mixed = code == -1
    first = rng.integers(0, len(ARCHETYPES), n_mixed)
    second = (first + rng.integers(1, len(ARCHETYPES), n_mixed)) % len(ARCHETYPES)
    code[mixed], code2[mixed] = first, second
    weight[mixed] = np.round(rng.uniform(0.35, 0.65, n_mixed), 2)

    perm = rng.permutation(n_players)
    code, code2, weight, mixed = code[perm], code2[perm], weight[perm], mixed[perm]

    names = np.array([*ARCHETYPES, *ANOMALY_KINDS], dtype=np.str_)
    labels = names[code]
    labels[mixed] = MIXED_LABEL
    mixtures: list[dict[str, float] | None] = [None] * n_players
    for i in np.flatnonzero(mixed):
        w = float(weight[i])
        mixtures[i] = {ARCHETYPES[code[i]]: w, ARCHETYPES[code2[i]]: round(1.0 - w, 2)}

    width = max(7, len(str(n_players - 1)))
    player_ids = np.char.add("p", np.char.zfill(np.arange(n_players).astype(np.str_), width))
    metric_names = BASE_METRICS + (CORRELATED_METRICS if shape == "correlated" else ())
    return Population(
        player_ids=player_ids,
        labels=labels,
        mixtures=mixtures,
        metric_names=metric_names,
        days=days,
        as_of=as_of,
        seed=seed,
        shape=shape,
        _code=code,
        _code2=code2,
        _weight=weight,
    )


# ------------------------------------------------------------------ daily simulation


def _logit(p: FloatArray) -> FloatArray:
    return np.log(p / (1.0 - p))


def _draw_params(
    rng: np.random.Generator, code: IntArray, code2: IntArray, w: FloatArray
) -> dict[str, FloatArray]:
    """Per-player latent propensities, each (P,).

    Mixed players use the same latent quantiles for both archetypes and interpolate
    in the natural scale of each parameter (log for rates, logit for probabilities,
    linear for join/churn fractions and the payer probability).
    """
    P = code.shape[0]
    engagement = rng.standard_normal(P)
    params: dict[str, FloatArray] = {}

    def blend(values: FloatArray) -> FloatArray:
        return w * values[code] + (1.0 - w) * values[code2]

    for name in (*_LOGNORMAL_FIELDS, *_LOGIT_FIELDS):
        tab = _TABLE[name]
        rho = _ENGAGEMENT_LOADING[name]
        z = rho * engagement + np.sqrt(1.0 - rho * rho) * rng.standard_normal(P)
        centre = np.log(tab[:, 0]) if name in _LOGNORMAL_FIELDS else _logit(tab[:, 0])
        latent = blend(centre) + blend(tab[:, 1]) * z
        params[name] = np.exp(latent) if name in _LOGNORMAL_FIELDS else 1 / (1 + np.exp(-latent))
    for name in ("join", "churn"):
        lo, hi = blend(_TABLE[name][:, 0]), blend(_TABLE[name][:, 1])
        params[name] = lo + (hi - lo) * rng.random(P)
    params["payer"] = (rng.random(P) < blend(_TABLE["payer_prob"])).astype(np.float64)
    return params


def _draw_activity(
    rng: np.random.Generator,
    prm: dict[str, FloatArray],
    code: IntArray,
    days: int,
    start: date,
) -> NDArray[np.bool_]:
    """Active-day mask (P, days): joined, not yet churned, and a Bernoulli draw.

    Weekends lift the odds of playing; players who churn fade out before they stop
    (activity falls to 40% of its level by the churn day). Every player gets at
    least one active day (the system only sees players with rows), and a player who
    joins inside the window plays on the day they join.
    """
    P = code.shape[0]
    d = np.arange(days)
    join_day = np.floor(prm["join"] * days).astype(np.int64)
    churns = prm["churn"] < 1.0
    churn_day = np.where(churns, np.floor(prm["churn"] * days), days).astype(np.int64)
    churn_day = np.maximum(churn_day, join_day + 1)
    alive = (d >= join_day[:, None]) & (d < churn_day[:, None])

    weekday = (start.weekday() + d) % 7
    weekend_lift = np.where(weekday >= 5, np.log(1.4), 0.0)
    logit_p = _logit(np.clip(prm["p_active"], 1e-6, 1 - 1e-6))
    p = 1.0 / (1.0 + np.exp(-(logit_p[:, None] + weekend_lift[None, :])))
    span = np.maximum(churn_day - join_day, 1).astype(np.float64)
    fade = 1.0 - 0.6 * np.clip((d[None, :] - join_day[:, None]) / span[:, None], 0.0, 1.0)
    p = np.where(churns[:, None], p * fade, p)
    fraud = code == _FRAUD
    p[fraud] = rng.uniform(0.25, 0.6, int(fraud.sum()))[:, None]

    active = alive & (rng.random((P, days)) < p)
    active[code == _BOT] = True
    rows = np.arange(P)
    joined_late = join_day > 0
    active[rows[joined_late], join_day[joined_late]] = True
    silent = ~active.any(axis=1)
    if silent.any():
        pick = join_day + np.floor(rng.random(P) * (churn_day - join_day)).astype(np.int64)
        active[rows[silent], pick[silent]] = True
    return active


def _snap_price(x: FloatArray) -> FloatArray:
    """Nearest store price point (in log space) to each wished price, USD."""
    logs = np.log(_PRICE_POINTS)
    edges = (logs[1:] + logs[:-1]) / 2.0
    return _PRICE_POINTS[np.searchsorted(edges, np.log(np.maximum(x, 1e-3)))]


def _draw_daily(rng: np.random.Generator, prm: dict[str, FloatArray], pl: IntArray) -> FloatArray:
    """Values (r, 7) of ``BASE_METRICS`` for active rows of local players ``pl``.

    A shared day-level mood (gamma, mean 1) drives sessions, matches, chat and
    invites together; minutes are a sum of per-session gamma lengths, so they scale
    with sessions; spend is purchases times a snapped unit price.
    """
    r = pl.shape[0]

    def at(name: str) -> FloatArray:
        return prm[name][pl]

    mood = rng.gamma(3.0, 1.0 / 3.0, r)
    sessions = 1.0 + rng.poisson(np.maximum(at("sessions") - 1.0, 0.0) * mood)
    minutes = rng.gamma(4.0 * sessions, at("session_minutes") / 4.0)
    minutes = np.clip(np.round(minutes, 1), 0.5, 1440.0)
    pvp = rng.poisson(at("pvp_per_session") * sessions * rng.gamma(2.0, 0.5, r))
    chat = rng.poisson(at("chat_per_session") * sessions * rng.gamma(0.8, 1.0 / 0.8, r))
    invites = rng.poisson(at("invites_per_day") * mood)

    buys = (at("payer") > 0.0) & (rng.random(r) < at("buy_prob"))
    purchases = np.zeros(r)
    nb = int(buys.sum())
    purchases[buys] = 1.0 + rng.poisson(prm["extra_purchases"][pl[buys]] * mood[buys])
    spend = np.zeros(r)
    unit = _snap_price(prm["price"][pl[buys]] * np.exp(0.35 * rng.standard_normal(nb)))
    spend[buys] = np.round(purchases[buys] * unit, 2)
    return np.column_stack([sessions, minutes, spend, purchases, pvp, invites, chat]).astype(
        np.float64
    )


def _anomaly_rows(
    rng: np.random.Generator, values: FloatArray, code: IntArray, pl: IntArray
) -> None:
    """Overwrite, in place, the rows (r, 7) of anomalous players.

    Bots play 1400-1440 min every day in 60-300 sessions and never talk or pay.
    Fraud players barely play (one short session) but either buy dozens of items a
    day for a few cents each, or spend thousands a day in one or two purchases.
    """
    P = code.shape[0]
    col = {m: j for j, m in enumerate(BASE_METRICS)}
    session_rate = rng.uniform(60.0, 300.0, P)
    storm = rng.random(P) < 0.5
    storm_rate = rng.uniform(20.0, 80.0, P)
    big_spend = rng.uniform(2500.0, 9999.0, P)

    bot = np.flatnonzero(code[pl] == _BOT)
    if bot.size:
        values[bot] = 0.0
        values[bot, col["sessions"]] = np.maximum(rng.poisson(session_rate[pl[bot]]), 1)
        values[bot, col["minutes_played"]] = np.round(rng.uniform(1400.0, 1440.0, bot.size), 1)
    fraud = np.flatnonzero(code[pl] == _FRAUD)
    if fraud.size:
        values[fraud] = 0.0
        values[fraud, col["sessions"]] = 1.0
        values[fraud, col["minutes_played"]] = np.round(rng.uniform(0.5, 4.0, fraud.size), 1)
        is_storm = storm[pl[fraud]]
        n = np.where(
            is_storm,
            np.maximum(rng.poisson(storm_rate[pl[fraud]]), 12),
            1 + rng.poisson(0.5, fraud.size),
        ).astype(np.float64)
        cents_each = rng.integers(1, 10, fraud.size)
        spend = np.where(
            is_storm,
            n * cents_each / 100.0,
            big_spend[pl[fraud]] * rng.uniform(0.8, 1.25, fraud.size),
        )
        values[fraud, col["purchases"]] = n
        values[fraud, col["spend_usd"]] = np.round(spend, 2)


def _correlated_copies(rng: np.random.Generator, values: FloatArray) -> FloatArray:
    """Extra (r, 8) near-duplicate columns for shape="correlated" (``CORRELATED_METRICS``)."""
    col = {m: j for j, m in enumerate(BASE_METRICS)}
    r = values.shape[0]
    out = np.empty((r, len(_CORRELATED_SPECS)))
    for k, (_, source, kind) in enumerate(_CORRELATED_SPECS):
        x = values[:, col[source]]
        if kind == "minutes":
            y = np.round(x * (1.0 + 0.03 * rng.standard_normal(r)), 1)
        elif kind == "hours":
            y = np.round(x / 60.0 * (1.0 + 0.02 * rng.standard_normal(r)), 2)
        elif kind == "gross":
            # VAT-inclusive revenue with a little FX noise
            y = np.round(x * 1.2 * (1.0 + 0.01 * rng.standard_normal(r)), 2)
        elif kind == "thin":
            # a subset confirmed/delivered: binomial thinning keeps it <= the source
            y = rng.binomial(x.astype(np.int64), 0.93).astype(np.float64)
        else:
            y = np.round(x * np.exp(0.05 * rng.standard_normal(r)))
        out[:, k] = np.maximum(y, 0.0)
    return out


def _simulate_block(pop: Population, block: int) -> ActivityChunk:
    """Rows of players ``[block*B, min(n, (block+1)*B))``, from the block's own stream."""
    lo = block * BLOCK_PLAYERS
    hi = min(pop.n_players, lo + BLOCK_PLAYERS)
    rng = np.random.default_rng(np.random.SeedSequence(pop.seed, spawn_key=(1, block)))
    code, code2, w = pop._code[lo:hi], pop._code2[lo:hi], pop._weight[lo:hi]
    prm = _draw_params(rng, code, code2, w)
    active = _draw_activity(rng, prm, code, pop.days, pop.start_date)
    pl, day = np.nonzero(active)  # row-major, so rows come sorted by (player, day)
    values = _draw_daily(rng, prm, pl)
    if code.max(initial=0) >= _BOT:
        _anomaly_rows(rng, values, code, pl)
    if pop.shape == "correlated":
        values = np.hstack([values, _correlated_copies(rng, values)])
    return ActivityChunk(
        player_index=pl.astype(np.int64) + lo,
        day_offset=day.astype(np.int64),
        values=values,
        metric_names=pop.metric_names,
        start_date=pop.start_date,
        player_start=lo,
        player_stop=hi,
    )


# ------------------------------------------------------------------------ features


def player_features(population: Population) -> tuple[list[str], FloatArray]:
    """Per-player features as the system computes them, straight from the arrays.

    Window = the population's ``days`` ending at ``as_of``. Columns, in order:
    ``{m}_total`` for every metric m (sum over active days), ``{m}_per_day`` (total /
    active_days), then ``active_days`` (count of rows), ``days_since_last``
    (as_of - last active date, days) and ``tenure_days`` (as_of - first active date
    + 1, days).

    Returns:
        (names (p,), X (n, p) float64), rows in ``player_ids`` order; p = 2m + 3.
        A player without rows (cannot happen with :func:`simulate`) would get NaN.
    """
    m = len(population.metric_names)
    n = population.n_players
    totals = np.zeros((n, m))
    active_days = np.zeros(n)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    for ch in population.iter_chunks():
        size = ch.player_stop - ch.player_start
        local = ch.player_index - ch.player_start
        counts = np.bincount(local, minlength=size)
        for j in range(m):
            totals[ch.player_start : ch.player_stop, j] = np.bincount(
                local, weights=ch.values[:, j], minlength=size
            )
        active_days[ch.player_start : ch.player_stop] = counts
        # rows are sorted by (player, day): a player's first/last rows bound its days
        has = counts > 0
        ends = np.cumsum(counts)
        g = slice(ch.player_start, ch.player_stop)
        first[g] = np.where(has, ch.day_offset[np.minimum(ends - counts, ch.n_rows - 1)], np.nan)
        last[g] = np.where(has, ch.day_offset[np.maximum(ends - 1, 0)], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_day = totals / active_days[:, None]
    D = population.days
    X = np.column_stack([totals, per_day, active_days, (D - 1) - last, D - first]).astype(
        np.float64
    )
    names = [
        *(f"{name}_total" for name in population.metric_names),
        *(f"{name}_per_day" for name in population.metric_names),
        "active_days",
        "days_since_last",
        "tenure_days",
    ]
    return names, X


# ------------------------------------------------------------------- text for COPY


def _copy_escape(text: str) -> str:
    """Escape a value for PostgreSQL COPY text format."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# Four-digit groups as 4-byte words, so a number is written one 4-digit group per
# gather instead of one integer division per digit. Words [0, 1e4): zero-padded "0042";
# [1e4, 2e4): space-padded "  42", 0 as "   0"; [2e4, 3e4): the same but 0 as "    "
# (a leading group that is entirely zero).
_GROUP_WORDS: Final[NDArray[np.void]] = np.frombuffer(
    (
        "".join(f"{i:04d}" for i in range(10000))
        + "".join(f"{i:4d}" for i in range(10000))
        + "    "
        + "".join(f"{i:4d}" for i in range(1, 10000))
    ).encode(),
    dtype="V4",
)
# Fraction words ".5  " / ".25 " (decimal point, digits, space padding), by decimals.
_FRACTION_WORDS: Final[dict[int, NDArray[np.void]]] = {
    dec: np.frombuffer(
        "".join(f".{i:0{dec}d}".ljust(4) for i in range(10**dec)).encode(), dtype="V4"
    )
    for dec in (1, 2, 3)
}


def _group_words(x: IntArray, groups: int) -> list[NDArray[np.void]]:
    """Right-aligned, space-padded text of nonnegative ints ``x`` (r,), as 4-byte words.

    Returns ``groups`` arrays (r,) of ``V4``, most significant first; the value must
    fit in ``4 * groups`` digits. The last digit is always written, so 0 is "   0".
    """
    lows: list[IntArray] = []
    rest = x
    for _ in range(groups):
        rest, low = np.divmod(rest, 10000)
        lows.append(low)
    words: list[NDArray[np.void]] = []
    # Before the first nonzero group the groups are blank, after it zero-padded.
    seen = np.zeros(x.shape[0], dtype=bool)
    for g in range(groups - 1, -1, -1):
        low = lows[g]
        if g == 0:
            words.append(_GROUP_WORDS[np.where(seen, low, low + 10000)])
        else:
            words.append(_GROUP_WORDS[np.where(seen, low, low + 20000)])
            seen |= low > 0
    return words


def _format_block(
    game_id: str, population: Population, chunk: ActivityChunk, *, omit_zeros: bool = True
) -> NDArray[np.uint8]:
    """COPY text records of one chunk, as a 1-D byte array (all rows concatenated).

    Built in two vectorised passes, with no per-row Python. First every record is laid
    out at one fixed width as an (r, L) byte matrix, viewed as a structured array whose
    fields are 4-byte word slots (each filled for all rows by one gather from a table
    of digit words); numbers are right-aligned with spaces. Then a boolean mask drops
    the padding spaces and (with ``omit_zeros``) the ``,"key":value`` segments of
    zero-valued metrics, and the kept bytes, read row-major, are the compact records.
    """
    r = chunk.n_rows
    names = chunk.metric_names
    id_digits = len(str(population.player_ids[0])) - 1
    text = bytearray(f"{_copy_escape(game_id)}\t".encode())
    prefix = len(text)  # the game id may contain spaces: never strip there
    fields: dict[str, tuple[str, int]] = {"pid": (f"S{id_digits + 1}", prefix)}
    text += b"p" + b"0" * id_digits + b"\t"
    fields["date"] = ("S10", len(text))
    text += b"2000-01-01\t{"
    segments: list[tuple[int, int]] = []  # byte span of each metric's ',"key":value'
    words: dict[str, NDArray[np.void]] = {}
    nonzero: list[NDArray[np.bool_]] = []
    for j, name in enumerate(names):
        dec = _DECIMALS.get(name, 2)
        scaled = np.rint(chunk.values[:, j] * 10**dec).astype(np.int64)
        nonzero.append(scaled != 0)
        whole = scaled // 10**dec
        n_groups = max(1, -(-len(str(int(whole.max(initial=0)))) // 4))
        start = len(text)
        text += (b"," if j else b"") + f'"{name}":'.encode()
        text += b" " * (-len(text) % 4)  # word-aligned slots, for cheap 4-byte copies
        for g, word in enumerate(_group_words(whole, n_groups)):
            fields[f"{j}#{g}"] = ("V4", len(text))
            words[f"{j}#{g}"] = word
            text += b"   0"
        if dec:
            fields[f"{j}#f"] = ("V4", len(text))
            words[f"{j}#f"] = _FRACTION_WORDS[dec][scaled - whole * 10**dec]
            text += b"." + b"0" * dec + b" " * (3 - dec)
        segments.append((start, len(text)))
    text += b" " * (-(len(text) + 2) % 4) + b"}\n"
    width = len(text)

    buf = np.empty((r, width), dtype=np.uint8)
    buf[:] = np.frombuffer(bytes(text), dtype=np.uint8)
    record = np.dtype(
        {
            "names": list(fields),
            "formats": [f for f, _ in fields.values()],
            "offsets": [o for _, o in fields.values()],
            "itemsize": width,
        }
    )
    rec = buf.view(record).reshape(r)
    lo, hi = chunk.player_start, chunk.player_stop
    pids = population.player_ids[lo:hi].astype(f"S{id_digits + 1}")
    rec["pid"] = pids[chunk.player_index - lo]
    days = np.datetime64(chunk.start_date, "D") + np.arange(population.days).astype(
        "timedelta64[D]"
    )
    rec["date"] = np.datetime_as_string(days).astype("S10")[chunk.day_offset]
    for key, word in words.items():
        rec[key] = word

    keep = buf != ord(" ")
    keep[:, :prefix] = True
    if omit_zeros:
        # The first metric always stays, so the object never starts with a comma.
        for j in range(1, len(names)):
            a, b = segments[j]
            keep[:, a:b] &= nonzero[j][:, None]
    return buf[keep]


def format_copy_rows(
    game_id: str, population: Population, chunk: ActivityChunk, *, omit_zeros: bool = True
) -> bytes:
    """COPY text rows for ``segmentation.player_activity`` for one chunk.

    Columns: ``game_id, player_id, activity_date, metrics``. With ``omit_zeros``
    metrics equal to 0 are left out of the JSON object (``sessions`` and
    ``minutes_played`` are never 0 on an active day, and the first metric is always
    written); without it every key is written. Integer metrics are written as
    integers, minutes with 1 decimal, money with 2.

    Returns:
        ``r`` newline-terminated records, UTF-8 (about 85 bytes per row for the
        default shape with ``omit_zeros``, about 145 without).
    """
    if chunk.n_rows == 0:
        return b""
    return _format_block(game_id, population, chunk, omit_zeros=omit_zeros).tobytes()


def _format_labels(game_id: str, population: Population) -> bytes:
    """COPY text rows for ``segmentation_lab.planted_labels`` (one per player)."""
    gid = _copy_escape(game_id)
    lines = [
        f"{gid}\t{pid}\t{label}\t"
        + (_copy_escape(json.dumps(mix)) if mix is not None else "\\N")
        + "\n"
        for pid, label, mix in zip(
            population.player_ids.tolist(),
            population.labels.tolist(),
            population.mixtures,
            strict=True,
        )
    ]
    return "".join(lines).encode()


# ------------------------------------------------------------------------ database

_LABELS_DDL: Final[tuple[str, ...]] = (
    "create schema if not exists segmentation_lab",
    """create table if not exists segmentation_lab.planted_labels (
        game_id text not null,
        player_id text not null,
        archetype text not null,
        mixture jsonb null,
        primary key (game_id, player_id)
    )""",
)


def write_population(
    conn: psycopg.Connection[Any],
    game_id: str,
    population: Population,
    *,
    replace: bool = True,
    omit_zeros: bool = True,
) -> dict[str, Any]:
    """Bulk-load a population into ``segmentation.player_activity`` with COPY.

    Also writes the planted labels to ``segmentation_lab.planted_labels`` (schema and
    table created if missing). Everything runs in one ``conn.transaction()`` block:
    on an autocommit connection it commits at the end; on a non-autocommit
    connection inside an open transaction it is a savepoint and the caller commits.
    Generation and formatting of the next chunk overlap with the server ingesting
    the previous one (psycopg's queued COPY writer runs the socket in a thread).

    Args:
        conn: psycopg 3 connection; ``segmentation.player_activity`` must exist.
        game_id: game the rows are written for.
        population: from :func:`simulate`.
        replace: first delete this game's existing activity rows and labels; with
            ``False`` a game that already has rows fails on the primary key.
        omit_zeros: leave metrics equal to 0 out of ``metrics`` (readers treat a
            missing key as 0): ~35% less storage, 1.2-1.5x the load rate;
            ``False`` writes every key on every row, so a reader that discovers the
            metric keys from a sample of rows sees every metric in any sample.

    Returns:
        ``game_id``, ``rows`` (activity rows written), ``players``, ``labels``,
        ``deleted_rows``, ``seconds`` (wall time of everything, generation included),
        ``delete_seconds`` (DDL + deletes), ``copy_seconds`` (generating and copying
        the activity rows) and ``rows_per_second`` (rows / seconds).
    """
    from psycopg.copy import QueuedLibpqWriter

    t0 = time.perf_counter()
    rows = 0
    deleted = 0
    with conn.transaction(), conn.cursor() as cur:
        # Losing the very last commit on a crash is harmless for generated data.
        cur.execute("set local synchronous_commit = off")
        for ddl in _LABELS_DDL:
            cur.execute(ddl)
        if replace:
            cur.execute("delete from segmentation.player_activity where game_id = %s", (game_id,))
            deleted = max(cur.rowcount, 0)
            cur.execute(
                "delete from segmentation_lab.planted_labels where game_id = %s", (game_id,)
            )
        t_copy = time.perf_counter()
        with cur.copy(
            "copy segmentation.player_activity (game_id, player_id, activity_date, metrics)"
            " from stdin",
            writer=QueuedLibpqWriter(cur),
        ) as copy:
            for chunk in population.iter_chunks():
                if chunk.n_rows:
                    # 1-D byte view: psycopg slices buffers by len(), i.e. by bytes
                    block = _format_block(game_id, population, chunk, omit_zeros=omit_zeros)
                    copy.write(memoryview(block))
                rows += chunk.n_rows
        t_labels = time.perf_counter()
        with cur.copy(
            "copy segmentation_lab.planted_labels (game_id, player_id, archetype, mixture)"
            " from stdin"
        ) as copy:
            copy.write(_format_labels(game_id, population))
    t_end = time.perf_counter()
    seconds = t_end - t0
    return {
        "game_id": game_id,
        "rows": rows,
        "players": population.n_players,
        "labels": population.n_players,
        "deleted_rows": deleted,
        "seconds": seconds,
        "delete_seconds": t_copy - t0,
        "copy_seconds": t_labels - t_copy,
        "rows_per_second": rows / seconds if seconds > 0 else float("inf"),
    }
