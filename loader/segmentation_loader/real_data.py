"""Import the real public data sets (SkillCraft1, Cookie Cats, Steam) into PostgreSQL.

Each data set is parsed with the :mod:`csv` module under the rules of
``docs/real-data.md`` and bulk-loaded with psycopg 3 ``COPY`` into the schema
``segmentation_data``: one table per data set (labels and other non-behavioural
columns included) and one ``*_features`` view holding only the player id and the
behavioural columns, ready for ``segmentation.register_feature_source``.

Every rule has a counter; :func:`load_real_dataset` returns them (rows read,
accepted, repaired by kind, rejected by reason, outliers kept, tables, seconds).
An import replaces the tables' content in one transaction, so re-running it is
idempotent, and it keeps the tables' and views' identity (a feature source
registered on a view stays valid).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import psycopg
from psycopg import sql

from segmentation_loader.errors import LoaderError

SCHEMA = "segmentation_data"
#: Advisory lock key (with 0) serialising imports into one database: the DDL
#: (CREATE SCHEMA/TABLE IF NOT EXISTS) is not safe against a concurrent twin.
IMPORT_LOCK = 7_301_010
#: Missing-value markers (after stripping blanks): UCI's "?" and an empty field.
MISSING_MARKERS = frozenset({"?", ""})
#: A plain decimal number, optionally in E-notation. Stricter than ``float()``,
#: which would also accept "nan", "inf", "1_000" and surrounding blanks.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_E_NOTATION = re.compile(r"[eE]")
#: Player ids of all four files are decimal integers; a mangled id such as
#: Excel's "1.5E+08" is lossy and therefore rejected rather than guessed.
_KEY = re.compile(r"\d{1,30}")
_TRUE = frozenset({"true", "1"})  # compared lower-cased: TRUE, True, true
_FALSE = frozenset({"false", "0"})
#: A value is an "outlier kept" when it exceeds this multiple of the median of the
#: column's positive values. The data sets' legitimate heavy tails reach 164x (Cookie
#: Cats' second-highest player, 2,961 rounds), 341x (Steam hours per user) and 445x
#: (Steam mean hours per game); the two known entry errors are at 2,000x and 2,770x.
OUTLIER_FACTOR = 1000.0

Kind = Literal["key", "label", "float", "bool", "text"]


@dataclass(frozen=True)
class Column:
    """One named column of a source file and its table column.

    ``feature``: behavioural, so it goes into the ``*_features`` view.
    ``required``: a missing value rejects the row instead of becoming NULL.
    ``label_range``: inclusive integer range of a ``label`` column.
    ``check_outliers``: counted by the outlier rule (non-negative volume columns).
    """

    source: str
    name: str
    kind: Kind
    feature: bool = False
    required: bool = False
    label_range: tuple[int, int] | None = None
    check_outliers: bool = False

    @property
    def sql_type(self) -> str:
        return {"key": "text", "label": "integer", "float": "double precision",
                "bool": "boolean", "text": "text"}[self.kind]


@dataclass(frozen=True)
class Dataset:
    """A data set: its file under the shared data directory and its tables."""

    name: str
    relative_path: str
    table: str
    view: str
    columns: tuple[Column, ...]
    description: str
    #: "player": one row per player, a repeated key is rejected. "playtime": one
    #: row per (player, game), repeats are merged and players are aggregated.
    shape: Literal["player", "playtime"] = "player"


def _skillcraft_columns() -> tuple[Column, ...]:
    # Age is self-reported demographics, not behaviour: kept in the table, not a feature.
    # LeagueIndex is the label the taxonomy is later compared with.
    behaviour = [
        ("HoursPerWeek", "hours_per_week"), ("TotalHours", "total_hours"), ("APM", "apm"),
        ("SelectByHotkeys", "select_by_hotkeys"), ("AssignToHotkeys", "assign_to_hotkeys"),
        ("UniqueHotkeys", "unique_hotkeys"), ("MinimapAttacks", "minimap_attacks"),
        ("MinimapRightClicks", "minimap_right_clicks"), ("NumberOfPACs", "number_of_pacs"),
        ("GapBetweenPACs", "gap_between_pacs"), ("ActionLatency", "action_latency"),
        ("ActionsInPAC", "actions_in_pac"), ("TotalMapExplored", "total_map_explored"),
        ("WorkersMade", "workers_made"), ("UniqueUnitsMade", "unique_units_made"),
        ("ComplexUnitsMade", "complex_units_made"),
        ("ComplexAbilitiesUsed", "complex_abilities_used"),
    ]
    return (
        Column("GameID", "player_id", "key"),
        Column("LeagueIndex", "league_index", "label", label_range=(1, 8)),
        Column("Age", "age", "float"),
        *(Column(src, name, "float", feature=True, check_outliers=True)
          for src, name in behaviour),
    )


_SKILLCRAFT = _skillcraft_columns()

DATASETS: dict[str, Dataset] = {
    "skillcraft1": Dataset(
        "skillcraft1", "skillcraft1/SkillCraft1_Dataset.csv", "skillcraft1",
        "skillcraft1_features", _SKILLCRAFT,
        "SkillCraft1 (UCI, StarCraft II replays), original formatting, 3,394 players"),
    "skillcraft1_messy": Dataset(
        "skillcraft1_messy", "skillcraft1/SkillCraft1_Dataset_excel_resaved_full.csv",
        "skillcraft1_messy", "skillcraft1_messy_features", _SKILLCRAFT,
        "SkillCraft1 resaved through Excel: all 3,395 players, messy formatting"),
    "cookie_cats": Dataset(
        "cookie_cats", "cookie-cats/cookie_cats.csv", "cookie_cats", "cookie_cats_features",
        (Column("userid", "player_id", "key"),
         Column("version", "version", "text"),  # the A/B arm assigned: not behaviour
         Column("sum_gamerounds", "sum_gamerounds", "float", feature=True,
                check_outliers=True),
         Column("retention_1", "retention_1", "bool", feature=True),
         Column("retention_7", "retention_7", "bool", feature=True)),
        "Cookie Cats A/B test: rounds in 14 days and day-1/day-7 retention per player"),
    "steam": Dataset(
        "steam", "steam-200k-playonly-derivative/steam-200k.csv", "steam_playtime",
        "steam_features",
        (Column("user-id", "player_id", "key"),
         Column("game-title", "game_title", "text", required=True),
         Column("value", "hours", "float", required=True)),
        "Steam play hours per user and game (steam-200k play rows), aggregated per user",
        shape="playtime"),
}

#: Per-user Steam features, computed from the merged (user, game) rows.
STEAM_USERS_TABLE = "steam_users"
STEAM_USER_COLUMNS: tuple[Column, ...] = (
    Column("player_id", "player_id", "key"),
    Column("total_hours", "total_hours", "float", feature=True, check_outliers=True),
    Column("games_played", "games_played", "float", feature=True, check_outliers=True),
    Column("max_game_hours", "max_game_hours", "float", feature=True, check_outliers=True),
    Column("mean_game_hours", "mean_game_hours", "float", feature=True, check_outliers=True),
    Column("top_game_share", "top_game_share", "float", feature=True),
    Column("games_under_1h_share", "games_under_1h_share", "float", feature=True),
)


def shared_data_dir() -> Path:
    """The shared read-only data directory ``.../shared/data/real``.

    ``$SEGMENTATION_SHARED_DATA`` when set; otherwise ``../shared/data/real``
    next to the repository checkout (where CI and the development machine put it).
    """
    override = os.environ.get("SEGMENTATION_SHARED_DATA")
    if override:
        return Path(override)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real").resolve()


def dataset_path(name: str) -> Path:
    """Default file of data set ``name`` under :func:`shared_data_dir`."""
    return shared_data_dir() / _dataset(name).relative_path


def _dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise LoaderError(f"unknown data set {name!r}",
                          f"choose one of: {', '.join(DATASETS)}") from None


# ------------------------------------------------------------------------------ parsing


class _Reject(Exception):
    """A row is rejected; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.column = column


@dataclass
class _Tally:
    """Counters of one import (see :func:`load_real_dataset` for their meaning)."""

    rows_read: int = 0
    accepted: int = 0
    blank_lines: int = 0
    repaired: Counter[str] = field(default_factory=Counter)
    repaired_rows: int = 0
    missing_values: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_examples: list[dict[str, Any]] = field(default_factory=list)
    parsed: Counter[str] = field(default_factory=Counter)

    def reject(self, line: int | None, exc: _Reject, key: str | None) -> None:
        self.rejected[exc.reason] += 1
        if len(self.rejected_examples) < 20:  # enough to see the pattern, bounded output
            self.rejected_examples.append(
                {"line": line, "reason": exc.reason, "column": exc.column, "key": key})


def _parse_key(text: str, column: Column) -> str:
    value = text.strip()
    if value in MISSING_MARKERS:
        raise _Reject("missing key", column.source)
    if not _KEY.fullmatch(value):
        raise _Reject("invalid key", column.source)
    return value


def _parse_value(text: str, column: Column, parsed: Counter[str]) -> Any:
    """The typed value of one cell, ``None`` for a missing marker; raises :class:`_Reject`."""
    value = text.strip()
    if value in MISSING_MARKERS:
        if column.required:
            raise _Reject(f"missing {column.name}", column.source)
        return None
    if column.kind == "text":
        if "\x00" in text:
            raise _Reject("invalid text", column.source)  # PostgreSQL text cannot hold NUL
        # Verbatim: in Steam a trailing blank is significant ("Universe Sandbox " is
        # Universe Sandbox², its "²" lost upstream; both titles occur for 3 users).
        return text
    if column.kind == "bool":
        low = value.lower()
        if low in _TRUE or low in _FALSE:
            parsed["booleans"] += 1
            return low in _TRUE
        raise _Reject("invalid boolean", column.source)
    if not _NUMBER.fullmatch(value):
        raise _Reject("non-numeric value", column.source)
    if _E_NOTATION.search(value):
        parsed["e_notation"] += 1
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise _Reject("non-numeric value", column.source)  # 1e999 overflows to inf
    if column.kind == "label":
        lo, hi = column.label_range or (-(2**31), 2**31 - 1)
        if not number.is_integer() or not lo <= number <= hi:
            raise _Reject("invalid label", column.source)
        return int(number)
    if number < 0:
        # Every numeric column of these data sets is a count, rate, duration or age.
        raise _Reject("negative value", column.source)
    return number


def _open_rows(path: Path) -> tuple[list[str], Any, TextIO, str]:
    """Header (names stripped), ``csv.reader``, open handle (the caller closes it) and
    line-ending label ("CRLF" or "LF", from the first 64 KiB) of a CSV file."""
    with path.open("rb") as raw:
        head = raw.read(65536)
    line_endings = "CRLF" if b"\r\n" in head else "LF"
    # newline="" lets csv see \r\n itself (and quoted newlines); utf-8-sig drops a BOM.
    handle = path.open("r", encoding="utf-8-sig", newline="")
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise LoaderError(f"{path} is empty", "pass the data set's CSV file") from None
    except UnicodeDecodeError as exc:
        handle.close()
        raise LoaderError(f"{path} is not UTF-8 text: {exc}", "re-save it as UTF-8") from exc
    return [h.strip() for h in header], reader, handle, line_endings


@dataclass
class _Parsed:
    """Accepted rows of a file in table column order, and the tally."""

    columns: tuple[Column, ...]
    rows: list[list[Any]]
    tally: _Tally
    line_endings: str
    dropped_columns: list[str]
    ignored_columns: list[str]


def _parse_file(ds: Dataset, path: Path) -> _Parsed:
    """Accepted rows of ``path``; with ``ds.shape == "player"`` a repeated key is
    rejected here, so a rejected row's repairs are never counted."""
    header, reader, handle, line_endings = _open_rows(path)
    named = [h for h in header if h]
    twice = sorted({h for h in named if named.count(h) > 1})
    if twice:
        handle.close()
        raise LoaderError(f"{path} names the columns {twice} more than once",
                          "remove the repeated columns; which one is meant is ambiguous")
    index = {h: i for i, h in enumerate(header) if h}
    missing = [c.source for c in ds.columns if c.source not in index]
    if missing:
        handle.close()
        raise LoaderError(f"{path} lacks the columns {missing} of data set {ds.name!r}",
                          f"header found: {header}")
    positions = [index[c.source] for c in ds.columns]
    unnamed = [i for i, h in enumerate(header) if not h]
    known = {c.source for c in ds.columns}
    ignored = [h for h in header if h and h not in known]
    dropped = [f"column {i + 1} (unnamed)" for i in unnamed]
    needed = max(positions) + 1  # fields after the last named column may be absent
    tally = _Tally()
    rows: list[list[Any]] = []
    key_col = ds.columns[0]
    seen: set[str] | None = set() if ds.shape == "player" else None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields:
                tally.blank_lines += 1  # an empty line is not a data row
                continue
            tally.rows_read += 1
            key = fields[positions[0]].strip() if len(fields) > positions[0] else None
            try:
                if not needed <= len(fields) <= len(header):
                    raise _Reject("wrong number of fields")
                values = [_parse_key(fields[positions[0]], key_col)]
                nulls: list[str] = []
                kinds: Counter[str] = Counter()
                for col, pos in zip(ds.columns[1:], positions[1:], strict=True):
                    value = _parse_value(fields[pos], col, kinds)
                    if value is None:
                        nulls.append(col.name)
                    values.append(value)
                if seen is not None:
                    if values[0] in seen:
                        raise _Reject("duplicate key", key_col.source)  # the first one stays
                    seen.add(values[0])
            except _Reject as exc:
                tally.reject(line, exc, key)
                continue
            tally.parsed.update(kinds)
            stray = sum(1 for i in unnamed if i < len(fields) and fields[i].strip())
            if stray:
                tally.repaired["stray_value_in_unnamed_column"] += stray
            if nulls:
                tally.repaired["missing_to_null"] += 1
                tally.missing_values.update(nulls)
            if stray or nulls:
                tally.repaired_rows += 1
            rows.append(values)
    except UnicodeDecodeError as exc:
        raise LoaderError(f"{path} is not UTF-8 text after line {reader.line_num}: {exc}",
                          "re-save it as UTF-8") from exc
    finally:
        handle.close()
    return _Parsed(ds.columns, rows, tally, line_endings, dropped, ignored)


def _merge_playtime(parsed: _Parsed) -> list[list[Any]]:
    """One row per (player, game): the hours of repeated pairs are summed.

    596 of the Steam file's 598 repeated pairs carry different hours (mostly Dota 2
    and Counter-Strike), i.e. separate play records under one title rather than a
    copied line, so their sum is the player's time in that title.
    """
    merged: dict[tuple[str, str], list[Any]] = {}
    for player, title, hours in parsed.rows:
        row = merged.get((player, title))
        if row is None:
            merged[(player, title)] = [player, title, hours]
        else:
            row[2] += hours
            parsed.tally.repaired["merged_duplicates"] += 1
            parsed.tally.repaired_rows += 1
    return list(merged.values())


def _steam_users(playtime: list[list[Any]]) -> list[list[Any]]:
    """Per-user features (hours are hours; shares are fractions in [0, 1])."""
    by_user: dict[str, list[float]] = defaultdict(list)
    for player, _title, hours in playtime:
        by_user[player].append(float(hours))
    users = []
    for player, hours in by_user.items():
        total = sum(hours)
        top = max(hours)
        users.append([
            player, total, float(len(hours)), top, total / len(hours),
            top / total if total > 0 else 1.0,  # a single 0-hour game is all of the time
            sum(1 for h in hours if h < 1.0) / len(hours),
        ])
    return users


def _outliers(columns: tuple[Column, ...], rows: list[list[Any]]) -> list[dict[str, Any]]:
    """Values above ``OUTLIER_FACTOR`` x the median of the column's positive values."""
    found: list[dict[str, Any]] = []
    for j, col in enumerate(columns):
        if not col.check_outliers:
            continue
        positive = [r[j] for r in rows if r[j] is not None and r[j] > 0]
        if not positive:
            continue
        median = statistics.median(positive)
        for r in rows:
            if r[j] is not None and r[j] > OUTLIER_FACTOR * median:
                found.append({"player_id": r[0], "column": col.name, "value": r[j],
                              "median": median, "ratio": round(r[j] / median, 1)})
    return found


# ----------------------------------------------------------------------------- loading


def _qualified(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(name))


def _ensure_table(cur: psycopg.Cursor[Any], table: str, columns: list[tuple[str, str]],
                  primary_key: list[str], comment: str) -> None:
    """Create the table when missing; refuse one whose columns differ (no silent drop)."""
    existing = cur.execute(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum", (f"{SCHEMA}.{table}",)).fetchall()
    if existing and [tuple(r) for r in existing] != columns:
        raise LoaderError(
            f"{SCHEMA}.{table} exists with other columns than this import writes",
            f"drop it first (DROP TABLE {SCHEMA}.{table} CASCADE), then import again; "
            "register its feature view again afterwards")
    if not existing:
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns)
        pk = sql.SQL(", ").join(sql.Identifier(c) for c in primary_key)
        cur.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
            _qualified(table), cols, pk))
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
        _qualified(table), sql.Literal(comment)))


def _copy_rows(cur: psycopg.Cursor[Any], table: str, names: list[str],
               rows: list[list[Any]]) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    # Replacing the content (not the table) keeps its oid, and so the views and a
    # feature source registered on them, valid across re-imports.
    cur.execute(sql.SQL("TRUNCATE {}").format(_qualified(table)))
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(_qualified(table), cols)) as copy:
        for row in rows:
            copy.write_row(row)
    cur.execute(sql.SQL("ANALYZE {}").format(_qualified(table)))


def _create_view(cur: psycopg.Cursor[Any], view: str, table: str, columns: list[str],
                 comment: str) -> None:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    cur.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {}").format(
        _qualified(view), cols, _qualified(table)))
    cur.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(_qualified(view), sql.Literal(comment)))


def _grant_readers(cur: psycopg.Cursor[Any], relations: list[str]) -> None:
    """Let the system's app role (and so admin) read the data, when the roles exist:
    calibration and categorization run with the caller's privileges."""
    if cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'segmentation_app'").fetchone():
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO segmentation_app").format(
            sql.Identifier(SCHEMA)))
        for rel in relations:
            cur.execute(sql.SQL("GRANT SELECT ON {} TO segmentation_app").format(_qualified(rel)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_real_dataset(conn: psycopg.Connection[Any], name: str,
                      path: Path | None = None) -> dict[str, Any]:
    """Load one real data set into ``segmentation_data`` with COPY; return its counts.

    Args:
        conn: psycopg 3 connection. The import runs in one ``conn.transaction()``:
            committed at the end on an autocommit connection (or one without an
            open transaction), a savepoint the caller commits otherwise.
        name: ``skillcraft1``, ``skillcraft1_messy``, ``cookie_cats`` or ``steam``.
        path: the CSV file; default :func:`dataset_path` (the shared data directory).

    Returns:
        ``dataset``, ``path``, ``sha256``, ``line_endings``; ``rows_read`` (data rows,
        blank lines excepted: ``blank_lines``); ``accepted`` (rows whose data is in
        the tables; ``rows_read == accepted + sum(rejected)``); ``repaired`` by kind
        (``missing_to_null``: rows with a missing marker stored as NULL;
        ``stray_value_in_unnamed_column``: non-empty values of a dropped unnamed
        column; ``merged_duplicates``: Steam rows merged into an earlier row of the
        same (user, game)); ``repaired_rows``; ``missing_values`` (NULLs per column);
        ``rejected`` by reason and ``rejected_examples`` (line, reason, column, key);
        ``parsed`` (``e_notation`` numbers, ``booleans``); ``outliers_kept``, the
        ``outliers`` themselves and the ``outlier_rule``; ``dropped_columns``,
        ``ignored_columns``; ``tables`` (qualified name: rows), ``feature_view``,
        ``features`` (its columns); ``seconds`` (wall time, parsing included).

    Raises:
        LoaderError: unknown data set, missing file, a header without the data
            set's columns, or an existing table with other columns.
    """
    t0 = time.perf_counter()
    ds = _dataset(name)
    file = Path(path) if path is not None else dataset_path(name)
    if not file.is_file():
        raise LoaderError(f"data file {file} not found",
                          "set SEGMENTATION_SHARED_DATA to the shared data/real directory "
                          "or pass --path")
    parsed = _parse_file(ds, file)
    tally = parsed.tally
    if ds.shape == "player":
        tables = {ds.table: (ds.columns, parsed.rows)}
        feature_table, feature_cols = ds.table, ds.columns
    else:
        playtime = _merge_playtime(parsed)
        tables = {ds.table: (ds.columns, playtime),
                  STEAM_USERS_TABLE: (STEAM_USER_COLUMNS, _steam_users(playtime))}
        feature_table, feature_cols = STEAM_USERS_TABLE, STEAM_USER_COLUMNS
    tally.accepted = tally.rows_read - sum(tally.rejected.values())
    outliers = _outliers(feature_cols, tables[feature_table][1])
    sha = _sha256(file)
    features = [c.name for c in feature_cols if c.feature]
    checked = ", ".join(c.name for c in feature_cols if c.check_outliers)
    comment = (f"{ds.description}. Imported by segmentation_loader.real_data from {file.name}"
               f" (sha256 {sha[:16]}...) under docs/real-data.md.")

    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", (IMPORT_LOCK,))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        for table, (cols, rows) in tables.items():
            keys = [c.name for c in cols if c.kind == "key"]
            if ds.shape == "playtime" and table == ds.table:
                keys = ["player_id", "game_title"]
            _ensure_table(cur, table, [(c.name, c.sql_type) for c in cols], keys, comment)
            _copy_rows(cur, table, [c.name for c in cols], rows)
        _create_view(cur, ds.view, feature_table, ["player_id", *features],
                     f"Behavioural features of {ds.name} (player id + features only; labels "
                     "and non-behavioural columns excluded) for register_feature_source.")
        _grant_readers(cur, [*tables, ds.view])

    return {
        "dataset": ds.name,
        "path": str(file),
        "sha256": sha,
        "line_endings": parsed.line_endings,
        "rows_read": tally.rows_read,
        "blank_lines": tally.blank_lines,
        "accepted": tally.accepted,
        "repaired": dict(tally.repaired),
        "repaired_rows": tally.repaired_rows,
        "missing_values": dict(tally.missing_values),
        "rejected": dict(tally.rejected),
        "rejected_examples": tally.rejected_examples,
        "parsed": dict(tally.parsed),
        "outliers_kept": len(outliers),
        "outliers": outliers,
        "outlier_rule": f"value > {OUTLIER_FACTOR:g} x the median of the column's positive "
                        f"values, in {checked}",
        "dropped_columns": parsed.dropped_columns,
        "ignored_columns": parsed.ignored_columns,
        "tables": {f"{SCHEMA}.{t}": len(rows) for t, (_c, rows) in tables.items()},
        "feature_view": f"{SCHEMA}.{ds.view}",
        "features": features,
        "seconds": time.perf_counter() - t0,
    }
