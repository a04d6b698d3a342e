"""`make demo`: install into a demo database, load a synthetic game, segment it, show it."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from segmentation_loader import install
from segmentation_loader.generator import simulate, write_population


def _table(conn: psycopg.Connection, query: str, params: tuple = ()) -> None:
    cur = conn.execute(query, params)
    names = [d.name for d in cur.description or []]
    rows = [[("" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
             for v in r] for r in cur.fetchall()]
    widths = [max(len(n), *(len(r[i]) for r in rows)) if rows else len(n)
              for i, n in enumerate(names)]
    print("  " + " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    print("  " + "-+-".join("-" * w for w in widths))
    for r in rows:
        print("  " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster-url", required=True)
    parser.add_argument("--db", default="segmentation_demo")
    parser.add_argument("--players", type=int, default=20000)
    parser.add_argument("--lib-dir", default=None)
    args = parser.parse_args()

    with psycopg.connect(args.cluster_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (args.db,)).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db)))
    params = conninfo_to_dict(args.cluster_url)
    params["dbname"] = args.db
    dsn = make_conninfo(**params)  # type: ignore[arg-type]

    print(f"== installing Unified Segmentation into {args.db}")
    install.install(dsn, lib_base=Path(args.lib_dir) if args.lib_dir else None, log=print)
    today = date.today()
    with psycopg.connect(dsn, autocommit=True) as conn:
        print(f"== generating {args.players} players x 90 days (game 'demo', 1% planted anomalies)")
        pop = simulate(args.players, days=90, seed=42, as_of=today, anomaly_rate=0.01)
        loaded = write_population(conn, "demo", pop)
        print(f"   {loaded['rows']} activity rows at {loaded['rows_per_second']:.0f} rows/s")

        health = conn.execute("SELECT segmentation.health()").fetchone()[0]  # type: ignore[index]
        runtime = health["components"]["python_runtime"]
        print(f"== health: {health['status']} (numpy {runtime.get('numpy')}, "
              f"scikit-learn {runtime.get('scikit_learn')})")

        print("== calibrating the taxonomy: SELECT segmentation.calibrate_taxonomy('demo')")
        summary = conn.execute("SELECT segmentation.calibrate_taxonomy('demo')").fetchone()[0]  # type: ignore[index]
        q = summary["quality"]
        print(f"   taxonomy {summary['taxonomy_id']} v{summary['version']}: "
              f"{summary['population']['calibrated_on']} players, "
              f"{len(summary['features']['used'])} features, variance explained "
              f"{q['variance_explained']:.3f}, silhouette {q.get('silhouette', 0):.3f}, "
              f"stability ARI {q.get('stability_ari') or 0:.3f}, "
              f"{summary['timings']['total']:.1f}s")
        print("\n   behavioral axes:")
        _table(conn, "SELECT a.axis_index AS axis, a.name, round(a.variance_explained::numeric, 3)"
               " AS variance_explained, (SELECT string_agg(f->>'feature', ', ')"
               " FROM jsonb_array_elements(a.top_features) WITH ORDINALITY e(f, i) WHERE i <= 3)"
               " AS top_features FROM segmentation.behavioral_axes a JOIN"
               " segmentation.game_behavioral_taxonomy t USING (taxonomy_id)"
               " WHERE t.game_id = 'demo' AND t.is_active ORDER BY axis_index")

        print("\n== categorizing everyone: SELECT segmentation.categorize_all('demo')")
        result = conn.execute("SELECT segmentation.categorize_all('demo')").fetchone()[0]  # type: ignore[index]
        print(f"   {result['players']} players, {result['anomalies']} anomalies, "
              f"{result['timings']['total']:.1f}s")
        print("\n   segment_summary:")
        _table(conn, "SELECT segment_id AS id, segment_name, players, round(fuzzy_size) AS"
               " fuzzy_size, round(share::numeric, 3) AS share, anomalies,"
               " round((feature_medians->>'minutes_played_per_day')::numeric, 1) AS"
               " med_minutes_per_day, round((feature_medians->>'spend_usd_total')::numeric, 2)"
               " AS med_spend_total FROM segmentation.segment_summary"
               " WHERE game_id = 'demo' AND is_active ORDER BY players DESC")
        print("\n   SELECT * FROM segmentation.categorize_player('demo', player_id) for three"
              " players,\n   then for the three whose primary degree is lowest (fuzzy: the"
              " degrees sum to 1):")
        _table(conn, "SELECT p.player_id, c.segment_name, round(c.membership::numeric, 3) AS"
               " membership, c.explanation->>'runner_up' AS runner_up,"
               " round((c.memberships->>(c.explanation->>'runner_up'))::numeric, 3) AS"
               " runner_up_degree, round(c.anomaly_score::numeric, 2) AS anomaly_score,"
               " c.is_anomaly FROM ((SELECT player_id, 1 AS k FROM"
               " segmentation.player_current_segment WHERE game_id = 'demo'"
               " ORDER BY player_id LIMIT 3) UNION ALL (SELECT player_id, 2 FROM"
               " segmentation.player_current_segment WHERE game_id = 'demo'"
               " ORDER BY membership, player_id LIMIT 3)) p,"
               " LATERAL segmentation.categorize_player('demo', p.player_id) c"
               " ORDER BY p.k, p.player_id")
        scorer = conn.execute("SELECT segmentation.python_runtime() ->> 'feature_scorer'"
                              ).fetchone()[0]  # type: ignore[index]
        print("\n   SELECT * FROM segmentation.categorize_player('demo', features jsonb) for"
              " three made-up players\n   (the request path: "
              + ("in C, the native library" if scorer == "c" else "in PL/Python") + "):")
        _table(conn, "SELECT f.v::text AS features, c.segment_name, round(c.membership::numeric, 3)"
               " AS membership, round(c.anomaly_score::numeric, 2) AS anomaly_score,"
               " c.is_anomaly FROM (VALUES"
               " ('{\"sessions\": 60, \"minutes_played\": 2400, \"active_days\": 28}'::jsonb),"
               " ('{\"sessions\": 4, \"minutes_played\": 40, \"active_days\": 3}'),"
               " ('{\"spend_usd\": 900, \"purchases\": 30, \"sessions\": 40,"
               " \"active_days\": 30}')) f(v),"
               " LATERAL segmentation.categorize_player('demo', f.v) c")
        print("\n   top anomalies:")
        if _has_function(conn, "detect_anomalies"):
            _table(conn, "SELECT player_id, round(anomaly_score::numeric, 2) AS score, kind,"
                   " nearest_segment, (SELECT string_agg(format('%%s %%s (z %%s)', r->>'feature',"
                   " r->>'direction', round((r->>'z')::numeric, 1)), ', ')"
                   " FROM jsonb_array_elements(reasons) r) AS reasons"
                   " FROM segmentation.detect_anomalies('demo') LIMIT 5")
            drift = conn.execute("SELECT segmentation.taxonomy_drift('demo')").fetchone()[0]  # type: ignore[index]
            print(f"\n   drift verdict: {drift['verdict']} {json.dumps(drift.get('reasons', []))}")
        else:
            _table(conn, "SELECT player_id, segment_name, round(anomaly_score::numeric, 2) AS"
                   " anomaly_score FROM segmentation.player_current_segment WHERE game_id ="
                   " 'demo' AND is_anomaly ORDER BY anomaly_score DESC LIMIT 5")
    host, port = params.get("host", "localhost"), params.get("port", "5432")
    user = params.get("user", "postgres")
    print(f"\nThe server keeps running. Connect with:\n  psql -h {host} -p {port} -U {user}"
          f" {args.db}\nand try: SELECT segmentation.health();")
    return 0


def _has_function(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_proc WHERE proname = %s AND pronamespace ="
                        " 'segmentation'::regnamespace", (name,)).fetchone() is not None


if __name__ == "__main__":
    raise SystemExit(main())
