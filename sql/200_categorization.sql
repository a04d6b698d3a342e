-- Player categorization: one player (by id or by an ad-hoc feature vector) and the
-- whole population in one set-based batch.

DO $$
BEGIN
    IF to_regtype('segmentation.categorization') IS NULL THEN
        CREATE TYPE segmentation.categorization AS (
            taxonomy_id      bigint,
            taxonomy_version integer,
            segment_id       integer,
            segment_name     text,
            membership       double precision,
            memberships      jsonb,
            axis_scores      jsonb,
            anomaly_score    double precision,
            is_anomaly       boolean,
            explanation      jsonb
        );
    END IF;
END
$$;
COMMENT ON TYPE segmentation.categorization IS
    'Answer of categorize_player: primary segment and degree, every segment''s degree (sums to 1), axis scores, anomaly score and flag, and an explanation.';

-- Both categorize_player functions are PARALLEL UNSAFE (the default), not SAFE: PL/Python
-- runs every plpy.execute in a subtransaction, and PostgreSQL allows none in a parallel
-- operation ("Functions ... must be marked PARALLEL UNSAFE if they ... change the
-- transaction state even temporarily", docs on parallel safety). Marked SAFE, a call in
-- a query with a parallel plan - any LATERAL call over a big enough table - failed with
-- "cannot start subtransactions during a parallel operation", and here the backend then
-- crashed (signal 11; the server restarted every session). tests/db/test_categorization.py
-- forces such a plan.
CREATE OR REPLACE FUNCTION segmentation.categorize_player(
    game_id text, player_id text, as_of date DEFAULT current_date)
RETURNS segmentation.categorization
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
-- The per-player aggregate must always use the primary key; a custom plan built from
-- stale statistics right after a bulk load once chose the date index (1000x slower).
SET plan_cache_mode = force_generic_plan
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].categorize_player(plpy, GD, game_id, player_id, as_of)
$$;
COMMENT ON FUNCTION segmentation.categorize_player(text, text, date) IS
    'Categorize one player from their activity in the active taxonomy''s window up to as_of: fuzzy memberships, axis scores, anomaly score. Read-only.';

-- No SET search_path here, on purpose: a function-level SET costs about a fifth of this
-- function's throughput (GUC save/restore and a search-path recomputation per call;
-- measured here with pgbench, 4 clients: a no-op PL/Python function returning this
-- record fell from 49.7k to 40.8k calls/s with the clause). What would need it is pinned
-- otherwise: the one query of every call is schema-qualified, its operator and parameter
-- type included (taxonomy_store.active_taxonomy_id), and a cache miss loads the taxonomy
-- under search_path = pg_catalog, pg_temp (sql_api._pinned_search_path).
-- tests/db/test_roles.py calls it under a hostile search_path.
CREATE OR REPLACE FUNCTION segmentation.categorize_player(game_id text, features jsonb)
RETURNS segmentation.categorization
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].categorize_features(plpy, GD, game_id, features)
$$;
COMMENT ON FUNCTION segmentation.categorize_player(text, jsonb) IS
    'Categorize an ad-hoc feature vector: keys are feature names (sessions_total, sessions_per_day, active_days, ...) or raw metric totals (sessions, ...) with active_days. Missing features are imputed with the calibration median.';

-- The same function under its own name: what categorize_player(text, jsonb) runs when
-- it is the C function of sql/210_native_scorer.sql and the input is anything but known
-- keys with finite numbers (NULLs, unknown keys, non-numbers, no active taxonomy), so
-- every error keeps one definition. Only those rare paths reach it: the SET is cheap here.
CREATE OR REPLACE FUNCTION segmentation._categorize_player_plpython(game_id text, features jsonb)
RETURNS segmentation.categorization
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].categorize_features(plpy, GD, game_id, features)
$$;
COMMENT ON FUNCTION segmentation._categorize_player_plpython(text, jsonb) IS
    'categorize_player(game_id, features) in PL/Python: the C implementation hands it every input it does not answer itself.';

-- A taxonomy's scorer as flat arrays (sql_api.scoring_kernel): what the C
-- categorize_player(text, jsonb) loads once per backend and taxonomy.
CREATE OR REPLACE FUNCTION segmentation._scoring_kernel(
    taxonomy bigint,
    OUT format integer, OUT taxonomy_id bigint, OUT taxonomy_version integer,
    OUT ttl_seconds double precision, OUT sizes integer[], OUT keys text[],
    OUT key_feature integer[], OUT metric_key integer[], OUT metric_total_key integer[],
    OUT metric_rate_key integer[], OUT active_key integer, OUT gather integer[],
    OUT fill double precision[], OUT lo double precision[], OUT hi double precision[],
    OUT logged boolean[], OUT product double precision[], OUT log_norm double precision[],
    OUT segment_offsets double precision[], OUT segment_scales double precision[],
    OUT tail_start integer[], OUT tail_axis integer[], OUT tail_direction double precision[],
    OUT tail_mean double precision[], OUT tail_chol double precision[],
    OUT residual_threshold double precision, OUT outlier_threshold double precision,
    OUT segment_ids integer[], OUT segment_names text[], OUT axis_names text[])
LANGUAGE plpython3u STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].scoring_kernel(plpy, GD, taxonomy)
$$;
COMMENT ON FUNCTION segmentation._scoring_kernel(bigint) IS
    'A taxonomy''s scorer as flat arrays (the precomputed products of the Python scorer), read by the C categorize_player(text, jsonb). See native/categorize_features.c.';

CREATE OR REPLACE FUNCTION segmentation.categorize_all(game_id text, as_of date DEFAULT current_date)
RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].categorize_all(plpy, GD, game_id, as_of)
$$;
COMMENT ON FUNCTION segmentation.categorize_all(text, date) IS
    'Categorize every player active in the window with the active taxonomy, in vectorized chunks; writes player_segment_memberships (history) and refreshes segment_summary and segment_transitions. Returns counts and timings.';
