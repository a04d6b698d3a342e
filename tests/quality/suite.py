"""Measurements of the quality suite, shared by ``make quality`` and tests/db/test_quality.py.

Everything is measured on the real system in a database where it is installed: populations
from the project's generator are written with ``write_population`` (planted labels go to
``segmentation_lab.planted_labels``, which the system never reads), and the taxonomy is
built and applied only through SQL (``calibrate_taxonomy``, ``categorize_all``,
``categorize_player``, ``export_taxonomy``/``import_taxonomy``). The labels are read back
here, client-side, after the system has answered. See docs/quality.md for what each figure
means and which bar applies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from scipy.optimize import linear_sum_assignment
from segmentation.quality import ari, matched_accuracy, nmi
from segmentation_loader import install
from segmentation_loader.generator import (
    ARCHETYPES,
    MIXED_LABEL,
    SHAPES,
    simulate,
    write_population,
)
from sklearn.metrics.cluster import contingency_matrix

AS_OF = date(2026, 6, 30)

# Bars (minimums). Accuracy is stricter on the default shape, the one the generator was
# tuned on; the other shapes stress the pipeline (rare whales, near-duplicate columns).
ACCURACY_BAR_DEFAULT = 0.97
ACCURACY_BAR = 0.94
STABILITY_BAR = 0.90
CONTINUITY_BAR = 1.0

Log = Callable[[str], None]

# write_population creates the label table with CREATE ... IF NOT EXISTS, which races
# when two shapes load at once in a fresh database; loads are serialised.
_LOAD_LOCK = threading.Lock()


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of one run. ``resamples`` end-to-end bootstrap recalibrations per shape;
    ``mixture_rate`` share of blended players in the separate soft-membership game;
    ``single_player_sample`` players re-scored one by one with ``categorize_player``."""

    players: int = 20_000
    seed: int = 0
    shapes: tuple[str, ...] = SHAPES
    resamples: int = 3
    mixture_rate: float = 0.10
    single_player_sample: int = 200
    days: int = 90
    as_of: date = AS_OF


@dataclass(frozen=True)
class Figure:
    """One measured figure; ``bar`` is the minimum it must reach, None = reported only."""

    shape: str
    key: str
    label: str
    value: float
    bar: float | None = None
    count: bool = False  # printed as an integer (axes, segments)

    @property
    def passed(self) -> bool | None:
        if self.bar is None:
            return None
        # A NaN (e.g. a missing stability figure) fails rather than passes silently.
        return bool(np.isfinite(self.value) and self.value >= self.bar - 1e-12)

    @property
    def verdict(self) -> str:
        return {None: "report", True: "PASS", False: "FAIL"}[self.passed]


@dataclass
class ShapeReport:
    """Figures of one shape plus wall-clock timings (seconds) of its steps."""

    shape: str
    figures: list[Figure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float, bar: float | None = None,
            count: bool = False) -> None:
        self.figures.append(Figure(self.shape, key, label, float(value), bar, count))

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)


# ----------------------------------------------------------------------- database


def server_url() -> str:
    """The server: DATABASE_URL, else the project cluster on SEG_PGPORT (as tests do)."""
    return os.environ.get("DATABASE_URL") or (
        f"postgresql://postgres@localhost:{os.environ.get('SEG_PGPORT', '55432')}/postgres"
    )


def lib_dir() -> Path:
    """Server-side library directory, by the same rule as tests/conftest.py."""
    return Path(os.environ.get("SEG_LIB_DIR", "/usr/local/lib/segmentation"))


def dsn_for(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextmanager
def scratch_database(url: str, name: str, *, keep: bool = False,
                     log: Log = _quiet) -> Iterator[str]:
    """Create database ``name``, install the system with the real loader, yield its DSN,
    drop it afterwards unless ``keep``."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = dsn_for(url, name)
    try:
        t0 = time.perf_counter()
        install.install(dsn, lib_base=lib_dir())
        log(f"installed into {name} in {time.perf_counter() - t0:.1f}s")
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(url, autocommit=True) as admin:
                # FORCE: a failed run may leave a backend of ours behind on this database.
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))


def _analyze(conn: psycopg.Connection[Any]) -> None:
    # As after any bulk load. Without it a game loaded since the last (auto)analyze looks
    # rare to the planner, and categorize_player's per-player aggregate may take the
    # (game_id, activity_date) index and filter the whole window: ~0.9 s a call at 20k
    # players instead of ~0.3 ms.
    conn.execute("ANALYZE segmentation.player_activity")


def _calibrate(conn: psycopg.Connection[Any], game: str, as_of: date) -> dict[str, Any]:
    row = conn.execute("SELECT segmentation.calibrate_taxonomy(%s, as_of => %s)",
                       (game, as_of)).fetchone()
    assert row is not None
    return row[0]


def _categorize_all(conn: psycopg.Connection[Any], game: str, as_of: date) -> dict[str, Any]:
    row = conn.execute("SELECT segmentation.categorize_all(%s, %s)", (game, as_of)).fetchone()
    assert row is not None
    return row[0]


@dataclass
class Assignment:
    """Current categorisation of a game's players, sorted by player id.

    ``segment_id`` (n,) primary segment; ``memberships`` (n, k) degrees, columns in
    ``segment_order`` (segment ids).
    """

    player_ids: np.ndarray
    segment_id: np.ndarray
    memberships: np.ndarray
    segment_order: list[int]


def _assignment(conn: psycopg.Connection[Any], game: str) -> Assignment:
    # The history table itself (what the views read): the player_current_segment view
    # would rebuild every player's membership jsonb by name, which is not needed here.
    rows = conn.execute(
        "SELECT m.player_id, m.segment_id, m.memberships, t.segment_order"
        " FROM segmentation.player_segment_memberships m"
        " JOIN segmentation.game_behavioral_taxonomy t USING (taxonomy_id)"
        " WHERE m.game_id = %s AND m.valid_to IS NULL ORDER BY m.player_id", (game,)).fetchall()
    if not rows:
        raise RuntimeError(f"no current memberships for game {game!r}")
    orders = {tuple(r[3]) for r in rows}
    if len(orders) != 1:
        raise RuntimeError(f"game {game!r} is categorised by several taxonomies")
    return Assignment(
        player_ids=np.array([r[0] for r in rows]),
        segment_id=np.array([r[1] for r in rows], dtype=np.int64),
        memberships=np.array([r[2] for r in rows], dtype=np.float64),
        segment_order=[int(s) for s in rows[0][3]],
    )


def _planted(conn: psycopg.Connection[Any], game: str,
             player_ids: np.ndarray) -> tuple[np.ndarray, list[dict[str, float] | None]]:
    """Planted label and mixture of each of ``player_ids`` (all must be labelled)."""
    rows = conn.execute("SELECT player_id, archetype, mixture FROM segmentation_lab.planted_labels"
                        " WHERE game_id = %s", (game,)).fetchall()
    by_id = {r[0]: (r[1], r[2]) for r in rows}
    picked = [by_id[p] for p in player_ids.tolist()]
    return np.array([p[0] for p in picked]), [p[1] for p in picked]


def _match(labels: np.ndarray, segments: np.ndarray) -> dict[str, int]:
    """Archetype -> segment id under the optimal one-to-one matching (contingency table)."""
    arche, a_idx = np.unique(labels, return_inverse=True)
    segs, s_idx = np.unique(segments, return_inverse=True)
    table = contingency_matrix(a_idx, s_idx)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {str(arche[r]): int(segs[c]) for r, c in zip(rows, cols, strict=True)}


# ------------------------------------------------------------------------ measures


def _resample_game(conn: psycopg.Connection[Any], source: str, target: str,
                   player_ids: np.ndarray, rng: np.random.Generator) -> int:
    """Write a bootstrap resample of ``source``'s players as game ``target``.

    n players drawn with replacement; the c-th copy of a player gets id ``<id>~<c>`` (the
    table's key is per player and day). Copied server-side from the rows already loaded.
    Returns the number of distinct players drawn.
    """
    n = len(player_ids)
    counts = np.bincount(rng.integers(0, n, n), minlength=n)
    drawn = counts > 0
    with conn.transaction():
        conn.execute("DELETE FROM segmentation.player_activity WHERE game_id = %s", (target,))
        conn.execute(
            "INSERT INTO segmentation.player_activity (game_id, player_id, activity_date, metrics)"
            " SELECT %s, a.player_id || '~' || c, a.activity_date, a.metrics"
            "   FROM unnest(%s::text[], %s::int[]) r(player_id, copies)"
            "   JOIN segmentation.player_activity a"
            "     ON a.game_id = %s AND a.player_id = r.player_id"
            "  CROSS JOIN LATERAL generate_series(1, r.copies) c",
            (target, player_ids[drawn].tolist(), counts[drawn].tolist(), source))
    return int(drawn.sum())


def _single_player_agreement(conn: psycopg.Connection[Any], game: str, as_of: date,
                             batch: Assignment, sample: int, seed: int) -> tuple[float, float]:
    """Share of sampled players whose ``categorize_player`` segment equals the batch one,
    and the largest difference of the primary degree between the two paths."""
    if sample <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(batch.player_ids), min(sample, len(batch.player_ids)),
                             replace=False))
    rows = conn.execute(
        "SELECT c.segment_id, c.membership FROM unnest(%s::text[]) WITH ORDINALITY p(id, i),"
        " LATERAL segmentation.categorize_player(%s, p.id, %s) c ORDER BY p.i",
        (batch.player_ids[idx].tolist(), game, as_of)).fetchall()
    single = np.array([r[0] for r in rows], dtype=np.int64)
    degree = np.array([r[1] for r in rows], dtype=np.float64)
    batch_degree = batch.memberships.max(axis=1)[idx]
    return (float(np.mean(single == batch.segment_id[idx])),
            float(np.max(np.abs(degree - batch_degree))))


def measure_shape(conn: psycopg.Connection[Any], shape: str, config: SuiteConfig,
                  log: Log = _quiet) -> ShapeReport:
    """All figures of one shape. ``conn`` is an autocommit connection to a database with the
    system installed; games ``q_<shape>*`` in it are replaced."""
    report = ShapeReport(shape)
    t = report.timings
    game = f"q_{shape}"
    as_of = config.as_of

    def step(name: str, t0: float) -> None:
        t[name] = t.get(name, 0.0) + time.perf_counter() - t0
        log(f"  [{shape}] {name}: {t[name]:.1f}s")

    # --- accuracy against planted archetypes --------------------------------------
    t0 = time.perf_counter()
    population = simulate(config.players, days=config.days, seed=config.seed, as_of=as_of,
                          shape=shape)
    with _LOAD_LOCK:
        loaded = write_population(conn, game, population)
        _analyze(conn)
    step("load", t0)
    t0 = time.perf_counter()
    first = _calibrate(conn, game, as_of)
    step("calibrate", t0)
    t0 = time.perf_counter()
    _categorize_all(conn, game, as_of)
    step("categorize_all", t0)
    base = _assignment(conn, game)
    truth, _ = _planted(conn, game, base.player_ids)
    report.add("accuracy", "matched accuracy, primary segment vs planted archetype",
               matched_accuracy(truth, base.segment_id),
               ACCURACY_BAR_DEFAULT if shape == "default" else ACCURACY_BAR)
    report.add("ari", "adjusted Rand index vs planted", ari(truth, base.segment_id))
    report.add("nmi", "normalised mutual information vs planted", nmi(truth, base.segment_id))
    quality = first["quality"]
    report.add("n_axes", "behavioral axes kept (PCA to 70%)", quality["n_axes"], count=True)
    report.add("n_segments", "segments", quality["n_segments"], count=True)
    t0 = time.perf_counter()
    agree, degree_gap = _single_player_agreement(
        conn, game, as_of, base, config.single_player_sample, config.seed)
    step("categorize_player", t0)
    report.add("single_agree", "categorize_player = categorize_all segment (sample)", agree)
    report.add("single_gap", "categorize_player vs categorize_all, max degree gap", degree_gap)

    # --- stability -------------------------------------------------------------------
    stored = quality.get("stability_ari")
    report.add("stability_system",
               f"stability ARI, system (GMM refits, {quality.get('stability_sample', 0)} rows)",
               float("nan") if stored is None else stored, STABILITY_BAR)

    # --- continuity: recalibrate the unchanged population ----------------------------
    t0 = time.perf_counter()
    second = _calibrate(conn, game, as_of)
    step("calibrate", t0)
    t0 = time.perf_counter()
    _categorize_all(conn, game, as_of)
    step("categorize_all", t0)
    again = _assignment(conn, game)
    if not np.array_equal(again.player_ids, base.player_ids):
        raise RuntimeError("recategorisation returned a different set of players")
    report.add("continuity", "continuity: players keeping their segment id",
               float(np.mean(again.segment_id == base.segment_id)), CONTINUITY_BAR)
    kept = {s["segment_id"] for s in second["segments"]} & {
        s["segment_id"] for s in first["segments"]}
    report.add("continuity_ids", "continuity: segment ids carried over",
               len(kept) / max(1, len(first["segments"])))

    # --- end-to-end bootstrap: recalibrate on resampled players ---------------------
    # Each resample is a game of its own; its taxonomy is exported and imported into the
    # full game, and categorize_all assigns the full population with it.
    aris: list[float] = []
    for b in range(config.resamples):
        boot = f"{game}_boot{b + 1}"
        rng = np.random.default_rng([config.seed, 0xB007, b])
        t0 = time.perf_counter()
        _resample_game(conn, game, boot, base.player_ids, rng)
        step("resample", t0)
        t0 = time.perf_counter()
        boot_tax = _calibrate(conn, boot, as_of)
        step("calibrate", t0)
        doc = conn.execute("SELECT segmentation.export_taxonomy(%s)",
                           (boot_tax["taxonomy_id"],)).fetchone()
        assert doc is not None
        conn.execute("SELECT segmentation.import_taxonomy(%s, %s)", (Jsonb(doc[0]), game))
        t0 = time.perf_counter()
        _categorize_all(conn, game, as_of)
        step("categorize_all", t0)
        other = _assignment(conn, game)
        if not np.array_equal(other.player_ids, base.player_ids):
            raise RuntimeError("resample taxonomy scored a different set of players")
        aris.append(ari(base.segment_id, other.segment_id))
        conn.execute("DELETE FROM segmentation.player_activity WHERE game_id = %s", (boot,))
    if aris:
        report.add("stability_e2e",
                   f"stability ARI, end-to-end (mean of {len(aris)} resample calibrations)",
                   float(np.mean(aris)), STABILITY_BAR)
        report.add("stability_e2e_min", "stability ARI, end-to-end, worst resample",
                   float(np.min(aris)))

    # --- soft memberships: a population with blended players ------------------------
    if config.mixture_rate > 0:
        _soft_memberships(conn, report, shape, config, step)
    t["rows"] = float(loaded["rows"])
    return report


def _soft_memberships(conn: psycopg.Connection[Any], report: ShapeReport, shape: str,
                      config: SuiteConfig, step: Callable[[str, float], None]) -> None:
    """Calibrate a game where ``mixture_rate`` of the players blend two archetypes.

    Segments are matched to archetypes on the pure players of that game (optimal
    one-to-one matching); a mixed player is "split right" when its two largest degrees
    are the segments matched to its two source archetypes.
    """
    game = f"q_{shape}_mixed"
    t0 = time.perf_counter()
    population = simulate(config.players, days=config.days, seed=config.seed + 1,
                          as_of=config.as_of, shape=shape, mixture_rate=config.mixture_rate)
    with _LOAD_LOCK:
        write_population(conn, game, population)
        _analyze(conn)
    step("load", t0)
    t0 = time.perf_counter()
    _calibrate(conn, game, config.as_of)
    step("calibrate", t0)
    t0 = time.perf_counter()
    _categorize_all(conn, game, config.as_of)
    step("categorize_all", t0)
    got = _assignment(conn, game)
    labels, mixtures = _planted(conn, game, got.player_ids)
    mixed = labels == MIXED_LABEL
    pure = np.isin(labels, ARCHETYPES)
    ordered = np.sort(got.memberships, axis=1)
    first, second = ordered[:, -1], ordered[:, -2]
    seg_of = _match(labels[pure], got.segment_id[pure])
    column = {s: i for i, s in enumerate(got.segment_order)}
    top2 = np.argsort(-got.memberships, axis=1)[:, :2]
    split_right, primary_is_source, source_mass = [], [], []
    for i in np.flatnonzero(mixed):
        sources = {seg_of.get(a) for a in mixtures[i] or {}}
        wanted = {column[s] for s in sources if s is not None}
        split_right.append(set(top2[i].tolist()) == wanted)
        primary_is_source.append(column[int(got.segment_id[i])] in wanted)
        source_mass.append(float(got.memberships[i, sorted(wanted)].sum()))
    report.add("soft_accuracy_pure",
               f"with {config.mixture_rate:.0%} mixed: matched accuracy of pure players",
               matched_accuracy(labels[pure], got.segment_id[pure]))
    report.add("soft_primary_pure", "mean primary degree, pure players", first[pure].mean())
    report.add("soft_primary_mixed", "mean primary degree, mixed players", first[mixed].mean())
    report.add("soft_second_pure", "mean 2nd-largest degree, pure players", second[pure].mean())
    report.add("soft_second_mixed", "mean 2nd-largest degree, mixed players",
               second[mixed].mean())
    report.add("soft_split_right", "mixed: two largest degrees = their two archetypes' segments",
               float(np.mean(split_right)))
    report.add("soft_primary_source", "mixed: primary segment is one of their archetypes'",
               float(np.mean(primary_is_source)))
    report.add("soft_source_mass", "mixed: mean degree on their two archetypes' segments",
               float(np.mean(source_mass)))


def run_suite(dsn: str, config: SuiteConfig, log: Log = _quiet,
              jobs: int = 1) -> list[ShapeReport]:
    """Measure every shape of ``config`` in the database ``dsn`` (system installed).

    ``jobs`` shapes run at once, each on its own connection: the work is in the server
    backends (one per connection), so two jobs use both cores of a 2-core machine. Shapes
    write disjoint games, and the system serialises what the games share.
    """
    unknown = [s for s in config.shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; expected some of {SHAPES}")

    def one(shape: str) -> ShapeReport:
        t0 = time.perf_counter()
        log(f"shape {shape}: {config.players} players x {config.days} days")
        with psycopg.connect(dsn, autocommit=True) as conn:
            report = measure_shape(conn, shape, config, log)
        report.timings["total"] = time.perf_counter() - t0
        log(f"shape {shape} done in {report.timings['total']:.1f}s")
        return report

    if jobs <= 1:
        return [one(shape) for shape in config.shapes]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, config.shapes))


# ------------------------------------------------------------------------- output


def _fmt(figure: Figure) -> str:
    if not np.isfinite(figure.value):
        return "n/a"
    return str(round(figure.value)) if figure.count else f"{figure.value:.4f}"


def format_table(reports: Sequence[ShapeReport]) -> str:
    """Every figure with its bar and PASS/FAIL ("report" when it has no bar)."""
    header = ("shape", "figure", "value", "bar", "result")
    rows = [(f.shape, f.label, _fmt(f), "" if f.bar is None else f">= {f.bar:.2f}",
             f.verdict) for r in reports for f in r.figures]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {2}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def failures(reports: Sequence[ShapeReport]) -> list[Figure]:
    return [f for r in reports for f in r.figures if f.passed is False]
