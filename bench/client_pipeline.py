"""The pipeline a user would otherwise write: COPY features out, score in a client
process with scikit-learn, COPY memberships back. Same data, same model.

Two ways to finish, timed separately after one shared export and scoring:

* minimal: player, segment, primary degree and memberships into an UNLOGGED table;
* same outputs: everything categorize_all stores per player (axis scores and the anomaly
  score and flag too, from the taxonomy's own anomaly model) into a logged table keyed
  by player - what a job whose results must survive a crash and be looked up writes.
  Neither keeps history or refreshes views.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import psycopg
from segmentation.features import FeatureRecipe, activity_aggregate_sql, features_from_aggregates
from segmentation.model import Taxonomy
from sklearn.mixture import GaussianMixture


def _sklearn_mixture(tax: Taxonomy) -> GaussianMixture:
    seg = tax.segments
    gm = GaussianMixture(n_components=seg.n_segments, covariance_type="full")
    gm.weights_ = seg.weights
    gm.means_ = seg.means
    gm.covariances_ = seg.covariances
    gm.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(seg.covariances))
    return gm


def run(dsn: str, game_id: str, as_of: str) -> dict[str, Any]:
    """Time each step of the client-side pipeline; returns seconds per step and rows."""
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        tid = conn.execute("SELECT taxonomy_id FROM segmentation.game_behavioral_taxonomy"
                           " WHERE game_id = %s AND is_active", (game_id,)).fetchone()[0]
        doc = conn.execute("SELECT segmentation.export_taxonomy(%s)", (tid,)).fetchone()[0]
        tax = Taxonomy.from_dict(doc)
        recipe = FeatureRecipe.from_dict(doc["feature_recipe"])
        m = len(recipe.metrics)
        query = activity_aggregate_sql(m, player_filter=False, with_invalid=False)
        # COPY cannot take parameters: inline them as literals (trusted values here).
        metrics = "ARRAY[" + ",".join(conn.execute("SELECT quote_literal(%s)", (k,)).fetchone()[0]
                                      for k in recipe.metrics) + "]::text[]"
        query = (query.replace("$1", conn.execute("SELECT quote_literal(%s)", (game_id,))
                               .fetchone()[0])
                 .replace("$2", f"'{as_of}'").replace("$3", str(recipe.lookback_days))
                 .replace("$4", f"({metrics})"))
        ids: list[str] = []
        rows: list[list[float]] = []
        with conn.cursor().copy(f"COPY ({query}) TO STDOUT") as copy:
            for row in copy.rows():
                ids.append(row[0])
                rows.append([float(v) for v in row[1:]])
        t1 = time.perf_counter()
        X = features_from_aggregates(np.asarray(rows, dtype=np.float64))
        Z, _ = tax.preparation.transform(X, recipe.feature_names)
        S = tax.axes.scores(Z)
        post = _sklearn_mixture(tax).predict_proba(S)
        primary = post.argmax(axis=1)
        seg_ids = np.asarray(tax.segment_ids)[primary]
        t2 = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS bench_client_memberships")
        conn.execute("CREATE UNLOGGED TABLE bench_client_memberships (player_id text,"
                     " segment_id int, membership float8, memberships float8[])")
        with conn.cursor().copy("COPY bench_client_memberships FROM STDIN") as copy:
            for i, pid in enumerate(ids):
                copy.write_row((pid, int(seg_ids[i]), float(post[i, primary[i]]),
                                post[i].tolist()))
        t3 = time.perf_counter()
        # The second finish: the extra outputs, then all of them into a keyed table.
        anomaly = tax.anomaly.classify(tax.anomaly.residual_scores(Z, primary),
                                       tax.anomaly.outlier_scores(S, tax.membership))
        t5 = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS bench_client_current")
        conn.execute("CREATE TABLE bench_client_current (player_id text PRIMARY KEY,"
                     " segment_id int NOT NULL, membership float8 NOT NULL,"
                     " memberships float8[] NOT NULL, axis_scores float8[] NOT NULL,"
                     " anomaly_score float8 NOT NULL, is_anomaly bool NOT NULL)")
        with conn.cursor().copy("COPY bench_client_current FROM STDIN") as copy:
            for i, pid in enumerate(ids):
                copy.write_row((pid, int(seg_ids[i]), float(post[i, primary[i]]),
                                post[i].tolist(), S[i].tolist(), float(anomaly.score[i]),
                                bool(anomaly.is_anomaly[i])))
        t6 = time.perf_counter()
    return {"players": len(ids), "copy_out_s": t1 - t0, "score_s": t2 - t1,
            "copy_back_s": t3 - t2, "total_s": t3 - t0,
            "score_full_s": (t2 - t1) + (t5 - t3), "copy_back_full_s": t6 - t5,
            "total_full_s": (t2 - t0) + (t6 - t3)}
