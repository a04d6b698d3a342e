-- Health and probes, shaped like the deployment guide's /health answer.

CREATE OR REPLACE FUNCTION segmentation.python_runtime() RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
if GD.get("segmentation.version") != "@VERSION@":
    plpy.execute("SELECT segmentation._python_bootstrap()")
    if "segmentation.unavailable" in GD:
        GD["segmentation.unavailable"]()
return GD["segmentation.api"].python_runtime(plpy, GD)
$$;
COMMENT ON FUNCTION segmentation.python_runtime() IS
    'Server-side Python runtime: Python, numpy, scipy and scikit-learn versions and the library directory.';

CREATE OR REPLACE FUNCTION segmentation.health() RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    runtime jsonb;
    runtime_status text := 'healthy';
    taxonomies jsonb;
    overall text;
    err_state text;
    err_msg text;
    err_hint text;
BEGIN
    BEGIN
        runtime := segmentation.python_runtime();
        runtime := jsonb_build_object('status', 'healthy') || runtime;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT, err_hint = PG_EXCEPTION_HINT;
        runtime_status := 'unhealthy';
        runtime := jsonb_build_object('status', 'unhealthy', 'error', err_msg,
                                      'sqlstate', err_state, 'hint', nullif(err_hint, ''));
    END;

    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'game_id', t.game_id,
               'taxonomy_id', t.taxonomy_id,
               'version', t.version,
               'calibrated_at', t.calibrated_at,
               'population', t.population,
               'n_segments', t.n_segments,
               'last_categorized_at', lr.finished_at,
               'players_categorized', (lr.result ->> 'players')::bigint,
               'anomalies', (lr.result ->> 'anomalies')::bigint,
               'drift_verdict', coalesce(lr.result -> 'drift' ->> 'verdict', 'unknown'),
               'drift_reasons', lr.result -> 'drift' -> 'reasons',
               'window_cache', lr.result -> 'window_cache')
               ORDER BY t.game_id), '[]'::jsonb)
      INTO taxonomies
      FROM segmentation.game_behavioral_taxonomy t
      LEFT JOIN LATERAL (
            -- the drift verdict of the latest batch run with this taxonomy
            SELECT r.finished_at, r.result FROM segmentation.runs r
             WHERE r.game_id = t.game_id AND r.kind = 'categorize_all'
               AND r.status = 'succeeded' AND r.taxonomy_id = t.taxonomy_id
             ORDER BY r.finished_at DESC LIMIT 1) lr ON true
     WHERE t.is_active;

    overall := CASE WHEN runtime_status = 'healthy' THEN 'healthy' ELSE 'unhealthy' END;
    RETURN jsonb_build_object(
        'status', overall,
        'timestamp', to_jsonb(clock_timestamp()),
        'version', segmentation.version(),
        'components', jsonb_build_object(
            'database', jsonb_build_object(
                'status', 'healthy',
                'server_version', current_setting('server_version'),
                'database', current_database(),
                'invalid_settings', (SELECT coalesce(jsonb_agg(s.name), '[]'::jsonb)
                                       FROM segmentation.settings s WHERE NOT s.is_valid)),
            'python_runtime', runtime,
            'taxonomies', jsonb_build_object(
                'status', CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(taxonomies) g
                                             WHERE g ->> 'drift_verdict' = 'recalibrate')
                               THEN 'degraded' ELSE 'healthy' END,
                'active', taxonomies)));
END
$$;
COMMENT ON FUNCTION segmentation.health() IS
    'System health as jsonb: status, timestamp, version and components (database, python_runtime, taxonomies). Never raises for a broken runtime: reports it as unhealthy.';

CREATE OR REPLACE FUNCTION segmentation.ready() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM segmentation.python_runtime();
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RETURN false;
END
$$;
COMMENT ON FUNCTION segmentation.ready() IS 'Readiness probe: true when the server-side Python library loads.';

CREATE OR REPLACE FUNCTION segmentation.live() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT true $$;
COMMENT ON FUNCTION segmentation.live() IS 'Liveness probe: true when the database answers.';
