"""The real public data sets through the import path and the system (docs/real-data.md).

Needs the shared read-only data (``../shared/data/real`` next to the checkout, or
``$SEGMENTATION_SHARED_DATA``); the module is skipped when it is absent. ``pytest -s``
shows the import counts and the figures compared with baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from segmentation_loader import real_data
from segmentation_loader.errors import LoaderError
from segmentation_loader.real_data import load_real_dataset

pytestmark = pytest.mark.db

DATA = real_data.shared_data_dir()
# A marker, not a fixture: it skips before the session's template database is built.
needs_data = pytest.mark.skipif(
    not all(real_data.dataset_path(n).is_file() for n in real_data.DATASETS),
    reason=f"shared real data not found under {DATA} (set SEGMENTATION_SHARED_DATA)")


def _show(counts: dict[str, Any]) -> None:
    """Print the counters of one import as a two-column table."""
    rows = [
        ("rows_read", counts["rows_read"]), ("accepted", counts["accepted"]),
        *((f"repaired: {k}", v) for k, v in counts["repaired"].items()),
        ("repaired_rows", counts["repaired_rows"]),
        *((f"rejected: {k}", v) for k, v in counts["rejected"].items()),
        ("outliers_kept", counts["outliers_kept"]),
        *((f"  outlier {o['player_id']}", f"{o['column']} = {o['value']:g}"
           f" ({o['ratio']:g} x median {o['median']:g})") for o in counts["outliers"]),
        *((f"parsed: {k}", v) for k, v in counts["parsed"].items()),
        ("line_endings", counts["line_endings"]),
        ("dropped_columns", ", ".join(counts["dropped_columns"]) or "-"),
        *((f"table {t}", n) for t, n in counts["tables"].items()),
        ("feature_view", counts["feature_view"]), ("seconds", f"{counts['seconds']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n== import {counts['dataset']}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def _import(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    counts = load_real_dataset(conn, name)
    _show(counts)
    assert counts["rows_read"] == counts["accepted"] + sum(counts["rejected"].values())
    return counts


def _segment(conn: psycopg.Connection, game: str, view: str) -> tuple[dict, dict]:
    """Register ``view``, calibrate with the default settings, categorize everyone."""
    conn.execute("SELECT segmentation.register_feature_source(%s, %s::regclass, 'player_id')",
                 (game, view))
    summary = conn.execute("SELECT segmentation.calibrate_taxonomy(%s)", (game,)).fetchone()[0]
    batch = conn.execute("SELECT segmentation.categorize_all(%s)", (game,)).fetchone()[0]
    feats = summary["features"]
    print(f"== {game}: {len(summary['segments'])} segments on {len(summary['axes'])} axes, "
          f"{len(feats['used'])} features ({len(feats['log_transformed'])} log-transformed), "
          f"NULLs imputed {feats['non_finite_replaced']}; calibration "
          f"{summary['timings']['total']:.1f} s, categorize_all {batch['timings']['total']:.1f} s"
          f", anomalies {batch['anomalies']} of {batch['players']}")
    return summary, batch


def _segments_of(conn: psycopg.Connection, game: str) -> dict[str, int]:
    return dict(conn.execute("SELECT player_id, segment_id FROM segmentation.player_current_segment"
                             " WHERE game_id = %s", (game,)).fetchall())


@needs_data
def test_skillcraft1_segments_relate_to_league(conn: psycopg.Connection) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.preprocessing import StandardScaler

    counts = _import(conn, "skillcraft1")
    assert (counts["rows_read"], counts["accepted"], counts["rejected"]) == (3394, 3394, {})
    assert counts["repaired"] == {"missing_to_null": 57} and counts["outliers_kept"] == 0
    assert counts["missing_values"] == {"age": 55, "hours_per_week": 56, "total_hours": 57}
    assert "league_index" not in counts["features"] and "age" not in counts["features"]
    summary, batch = _segment(conn, "skillcraft1", "segmentation_data.skillcraft1_features")
    assert batch["players"] == 3394
    assert "league_index" not in summary["features"]["used"]

    segments = _segments_of(conn, "skillcraft1")
    features = counts["features"]
    cols = ", ".join(["f.player_id", "s.league_index", *(f"f.{c}" for c in features)])
    rows = conn.execute(f"SELECT {cols} FROM segmentation_data.skillcraft1_features f"
                        " JOIN segmentation_data.skillcraft1 s USING (player_id)"
                        " ORDER BY f.player_id").fetchall()
    league = np.array([r[1] for r in rows])
    system = np.array([segments[r[0]] for r in rows])
    X = np.array([[np.nan if v is None else v for v in r[2:]] for r in rows], dtype=float)
    X = np.where(np.isnan(X), np.nanmedian(X, axis=0), X)
    k = len(summary["segments"])
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(
        StandardScaler().fit_transform(X))
    nmi_system = normalized_mutual_info_score(league, system)
    nmi_kmeans = normalized_mutual_info_score(league, kmeans)
    print(f"SkillCraft1 NMI with LeagueIndex: system {nmi_system:.3f}, "
          f"KMeans baseline {nmi_kmeans:.3f} (k = {k}, {len(rows)} players)")
    assert nmi_system > 0.05


@needs_data
def test_skillcraft1_messy_copy_matches_clean(conn: psycopg.Connection) -> None:
    from sklearn.metrics import adjusted_rand_score

    counts = _import(conn, "skillcraft1_messy")
    assert (counts["rows_read"], counts["accepted"], counts["rejected"]) == (3395, 3395, {})
    assert counts["repaired"] == {"missing_to_null": 57} and counts["repaired_rows"] == 57
    assert counts["dropped_columns"] == ["column 21 (unnamed)"]
    assert counts["parsed"]["e_notation"] > 0
    assert [(o["player_id"], o["column"], o["value"]) for o in counts["outliers"]] == [
        ("5140", "total_hours", 1_000_000.0)]
    _import(conn, "skillcraft1")
    # Same values up to Excel's rounding: at 7 decimals for the tiny per-tick rates (an
    # absolute error up to 5e-8, 0.5% of a 1e-5 rate), to ~9 significant digits otherwise.
    cols = [*counts["features"], "age"]
    worst = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE m.league_index IS DISTINCT FROM c.league_index"
        " OR " + " OR ".join(f"abs(m.{c} - c.{c}) > 5e-8 + 1e-8 * abs(c.{c})"
                             f" OR (m.{c} IS NULL) <> (c.{c} IS NULL)" for c in cols) + "),"
        " max(greatest(" + ", ".join(f"abs(m.{c} - c.{c})" for c in cols) + "))"
        " FROM segmentation_data.skillcraft1_messy m"
        " JOIN segmentation_data.skillcraft1 c USING (player_id)").fetchone()
    print(f"messy vs clean: {worst[0]} shared players, {worst[1]} differ beyond rounding, "
          f"largest absolute difference {worst[2]:.2e}")
    assert worst[:2] == (3394, 0)

    _segment(conn, "skillcraft1_messy", "segmentation_data.skillcraft1_messy_features")
    _segment(conn, "skillcraft1", "segmentation_data.skillcraft1_features")
    messy, clean = _segments_of(conn, "skillcraft1_messy"), _segments_of(conn, "skillcraft1")
    shared = sorted(set(messy) & set(clean))
    ari = adjusted_rand_score([clean[p] for p in shared], [messy[p] for p in shared])
    outlier = conn.execute(
        "SELECT segment_name, is_anomaly, round(anomaly_score::numeric, 2)"
        " FROM segmentation.player_current_segment"
        " WHERE game_id = 'skillcraft1_messy' AND player_id = '5140'").fetchone()
    print(f"SkillCraft1 clean vs messy taxonomy on {len(shared)} shared players: ARI {ari:.3f};"
          f" the 1,000,000-hour player 5140 in the messy taxonomy: {outlier}")
    assert len(shared) == 3394
    assert ari > 0.75


@needs_data
def test_cookie_cats_outlier_is_kept_and_flagged(conn: psycopg.Connection) -> None:
    counts = _import(conn, "cookie_cats")
    assert (counts["rows_read"], counts["accepted"], counts["rejected"]) == (90189, 90189, {})
    assert counts["line_endings"] == "CRLF" and counts["parsed"] == {"booleans": 2 * 90189}
    assert counts["repaired"] == {} and counts["features"] == [
        "sum_gamerounds", "retention_1", "retention_7"]
    assert [(o["player_id"], o["value"]) for o in counts["outliers"]] == [("6390605", 49854.0)]
    facts = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE retention_1), count(*) FILTER (WHERE retention_7),"
        " count(*) FILTER (WHERE version = 'gate_30'), count(*) FILTER (WHERE sum_gamerounds = 0),"
        " max(sum_gamerounds) FROM segmentation_data.cookie_cats").fetchone()
    assert facts == (90189, 40153, 16781, 44700, 3994, 49854.0)

    summary, batch = _segment(conn, "cookie_cats", "segmentation_data.cookie_cats_features")
    assert batch["players"] == 90189
    print(f"Cookie Cats anomaly rate at calibration {summary['quality']['anomaly_rate']:.4f}"
          f" (contamination setting 0.01; the gross-outlier cap is 5x that)")
    assert "version" not in summary["features"]["used"]
    current = conn.execute(
        "SELECT segment_name, is_anomaly, anomaly_score FROM segmentation.player_current_segment"
        " WHERE game_id = 'cookie_cats' AND player_id = '6390605'").fetchone()
    found = conn.execute(
        "SELECT kind, anomaly_score, reasons FROM segmentation.detect_anomalies('cookie_cats')"
        " WHERE player_id = '6390605'").fetchone()
    rank = conn.execute(
        "SELECT count(*) FROM segmentation.player_current_segment WHERE game_id = 'cookie_cats'"
        " AND anomaly_score >= %s", (current[2],)).fetchone()[0]
    print(f"Cookie Cats outlier 6390605 (49,854 rounds): segment {current[0]!r}, "
          f"is_anomaly {current[1]}, anomaly_score {current[2]:.3f} (rank {rank} of 90189), "
          f"detect_anomalies {found}")
    assert current[1] and found is not None


@needs_data
def test_steam_users(conn: psycopg.Connection) -> None:
    counts = _import(conn, "steam")
    assert (counts["rows_read"], counts["accepted"], counts["rejected"]) == (70489, 70489, {})
    assert counts["repaired"] == {"stray_value_in_unnamed_column": 1, "merged_duplicates": 598}
    assert counts["dropped_columns"] == ["column 4 (unnamed)"]
    assert counts["tables"] == {"segmentation_data.steam_playtime": 70489 - 598,
                                "segmentation_data.steam_users": 9418}
    facts = conn.execute(
        "SELECT (SELECT round(sum(hours)::numeric, 1) FROM segmentation_data.steam_playtime),"
        " (SELECT round(sum(total_hours)::numeric, 1) FROM segmentation_data.steam_users),"
        " (SELECT count(DISTINCT game_title) FROM segmentation_data.steam_playtime),"
        " (SELECT count(*) FROM segmentation_data.steam_playtime"
        "   WHERE game_title = 'Papers, Please'),"
        " (SELECT min(hours) FROM segmentation_data.steam_playtime),"
        " (SELECT max(hours) FROM segmentation_data.steam_playtime)").fetchone()
    print(f"steam: hours {facts[0]} (users {facts[1]}), {facts[2]} titles, "
          f"'Papers, Please' rows {facts[3]}, hours {facts[4]}..{facts[5]}")
    assert facts[0] == facts[1] and facts[2] == 3600 and facts[3] > 0
    assert facts[4] == 0.1 and facts[5] == 11754.0

    _summary, batch = _segment(conn, "steam", "segmentation_data.steam_features")
    assert batch["players"] == 9418


@needs_data
def test_reimport_is_idempotent(conn: psycopg.Connection) -> None:
    volatile = ("seconds",)
    for name in real_data.DATASETS:
        first = load_real_dataset(conn, name)
        if name == "skillcraft1":
            conn.execute("SELECT segmentation.register_feature_source('sc', "
                         "'segmentation_data.skillcraft1_features'::regclass)")
        second = load_real_dataset(conn, name)
        assert {k: v for k, v in first.items() if k not in volatile} == {
            k: v for k, v in second.items() if k not in volatile}, name
        for table, n in second["tables"].items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n
        print(f"re-import {name}: same counts, {second['tables']}, "
              f"{first['seconds']:.2f} s then {second['seconds']:.2f} s")
    # The registered view survived the re-import (same relation): calibration still works.
    summary = conn.execute("SELECT segmentation.calibrate_taxonomy('sc', n_segments => 3)"
                           ).fetchone()[0]
    assert summary["population"]["players_in_window"] == 3394


def _write(path: Path, text: str, newline: str) -> Path:
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def test_rules_on_crafted_player_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    """Every per-player rule and counter of docs/real-data.md on a small CRLF file."""
    path = _write(tmp_path / "cookie.csv", (
        "userid,version,sum_gamerounds,retention_1,retention_7\n"
        "1,gate_30,3,FALSE,TRUE\n"
        '2,"gate,40",4.5E+01,True,0\n'
        "3,gate_30,?,true,false\n"
        "1,gate_40,9,TRUE,TRUE\n"          # duplicate key: the first row stays
        ",gate_30,1,TRUE,TRUE\n"
        "1.5E+08,gate_30,1,TRUE,TRUE\n"    # an id Excel mangled: lossy, rejected
        "5,gate_30,abc,TRUE,TRUE\n"
        "6,gate_30,-2,TRUE,TRUE\n"
        "7,gate_30,1,maybe,TRUE\n"
        "8,gate_30,1,TRUE\n"
        "\n"
        "9,gate_30,nan,TRUE,TRUE\n"
        "10,,1000000,,TRUE\n"), "\r\n")
    counts = load_real_dataset(conn, "cookie_cats", path)
    _show(counts)
    assert (counts["rows_read"], counts["accepted"], counts["blank_lines"]) == (12, 4, 1)
    assert counts["rejected"] == {"duplicate key": 1, "missing key": 1, "invalid key": 1,
                                  "non-numeric value": 2, "negative value": 1,
                                  "invalid boolean": 1, "wrong number of fields": 1}
    assert counts["repaired"] == {"missing_to_null": 2} and counts["repaired_rows"] == 2
    assert counts["missing_values"] == {"sum_gamerounds": 1, "version": 1, "retention_1": 1}
    assert counts["parsed"] == {"e_notation": 1, "booleans": 7}
    assert counts["line_endings"] == "CRLF" and counts["outliers_kept"] == 1
    rows = conn.execute("SELECT player_id, version, sum_gamerounds, retention_1, retention_7"
                        " FROM segmentation_data.cookie_cats ORDER BY player_id").fetchall()
    assert rows == [("1", "gate_30", 3.0, False, True), ("10", None, 1e6, None, True),
                    ("2", "gate,40", 45.0, True, False), ("3", "gate_30", None, True, False)]
    with pytest.raises(LoaderError, match="lacks the columns"):
        load_real_dataset(conn, "cookie_cats", _write(tmp_path / "x.csv", "userid,v\n1,2\n",
                                                      "\n"))


def test_rules_on_crafted_playtime_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    """Steam rules: stray unnamed values, merged pairs, verbatim titles, user features."""
    path = _write(tmp_path / "steam.csv", (
        "user-id,game-title,value,\n"
        '1,"Papers, Please",2,1\n'
        '1,"Papers, Please",3,\n'
        "1,Dota 2,0.5,\n"
        "2,Dota 2,?,\n"
        "2,Universe Sandbox ,1.5,\n"
        "2,Universe Sandbox,2.5,\n"), "\n")
    counts = load_real_dataset(conn, "steam", path)
    _show(counts)
    assert (counts["rows_read"], counts["accepted"]) == (6, 5)
    assert counts["rejected"] == {"missing hours": 1}
    assert counts["repaired"] == {"stray_value_in_unnamed_column": 1, "merged_duplicates": 1}
    assert counts["tables"] == {"segmentation_data.steam_playtime": 4,
                                "segmentation_data.steam_users": 2}
    assert conn.execute("SELECT hours FROM segmentation_data.steam_playtime WHERE player_id = '1'"
                        " AND game_title = 'Papers, Please'").fetchone() == (5.0,)
    users = conn.execute("SELECT * FROM segmentation_data.steam_features ORDER BY player_id"
                         ).fetchall()
    assert users == [("1", 5.5, 2.0, 5.0, 2.75, 5.0 / 5.5, 0.5), ("2", 4.0, 2.0, 2.5, 2.0,
                                                                   0.625, 0.0)]
