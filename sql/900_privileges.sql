-- Privileges, applied last on every install. Nothing is granted to PUBLIC.
--   segmentation_reader: views, summaries, the model tables, health
--   segmentation_app:    + categorize_player (and what it reads)
--   segmentation_admin:  + calibrate, activate, categorize_all, import/export, sources,
--                          detect_anomalies, taxonomy_drift (full-window scans)
-- The matrix and its reasons: docs/security.md.
-- Roles are nested (reader < app < admin) by the loader.
-- All functions have a pinned search_path and are SECURITY INVOKER, except
-- _record_failed_run (SECURITY DEFINER, justified in 050_run_log.sql; admin only) and
-- the window cache's trigger function, _empty_window_cache and _index_window_cache
-- (justified in 150_window_cache.sql; the last two admin only).

REVOKE ALL ON SCHEMA segmentation FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA segmentation FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA segmentation FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA segmentation FROM PUBLIC;
GRANT USAGE ON SCHEMA segmentation TO segmentation_reader, segmentation_app, segmentation_admin;

GRANT SELECT ON segmentation.player_current_segment, segmentation.player_memberships_long,
                segmentation.player_anomalies,
                segmentation.segment_summary, segmentation.segment_transitions,
                segmentation.settings, segmentation.game_behavioral_taxonomy,
                segmentation.behavioral_axes, segmentation.segment_definitions,
                segmentation.runs, segmentation.metrics
   TO segmentation_reader;
GRANT EXECUTE ON FUNCTION segmentation.version(), segmentation.health(), segmentation.ready(),
                          segmentation.live(), segmentation.python_runtime(),
                          segmentation._python_bootstrap(), segmentation.setting_definitions(),
                          segmentation.setting_value(text), segmentation.taxonomy_history(text)
   TO segmentation_reader;
DO $$
BEGIN
    IF pg_catalog.to_regprocedure('segmentation._native_version()') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION segmentation._native_version() TO segmentation_reader;
    END IF;
END
$$;

GRANT SELECT ON segmentation.player_activity, segmentation.feature_sources
   TO segmentation_app;
-- categorize_player(player_id) reads a player's window through the window cache: the
-- same information as the player's activity rows, which this role reads anyway.
GRANT SELECT ON segmentation.window_cache, segmentation.window_cache_state,
                segmentation.activity_changes
   TO segmentation_app;
-- Partitions do not inherit their parent's privileges (new ones get them from
-- _empty_window_cache, sql/150_window_cache.sql).
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i
                 WHERE i.inhparent = 'segmentation.window_cache'::regclass
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO segmentation_app', part);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION segmentation.categorize_player(text, text, date),
                          segmentation.categorize_player(text, jsonb)
   TO segmentation_app;
-- The C categorize_player(text, jsonb) loads a taxonomy through this one, as the caller.
-- (Its PL/Python twin, _categorize_player_plpython, it calls through fmgr, which checks
-- no privilege: admins alone may call that one directly.)
GRANT EXECUTE ON FUNCTION segmentation._scoring_kernel(bigint) TO segmentation_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA segmentation TO segmentation_admin;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA segmentation TO segmentation_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA segmentation TO segmentation_admin;
-- The grant above also covers views and the migration bookkeeping: views stay read-only,
-- and only the installer touches the yoyo tables (a forged migration log would make the
-- next upgrade skip or repeat migrations).
DO $$
DECLARE
    rel record;
BEGIN
    FOR rel IN SELECT c.oid::regclass AS name, c.relkind FROM pg_catalog.pg_class c
                WHERE c.relnamespace = 'segmentation'::regnamespace
                  AND (c.relkind = 'v' OR (c.relkind = 'r' AND (c.relname LIKE '\_yoyo%'
                                                              OR c.relname = 'yoyo_lock')))
    LOOP
        IF rel.relkind = 'v' THEN
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM segmentation_admin', rel.name);
        ELSE
            EXECUTE format('REVOKE ALL ON %s FROM segmentation_reader, segmentation_app,'
                           ' segmentation_admin', rel.name);
        END IF;
    END LOOP;
END
$$;
-- A standalone type is usable by PUBLIC unless revoked.
REVOKE ALL ON TYPE segmentation.categorization FROM PUBLIC;
GRANT USAGE ON TYPE segmentation.categorization TO segmentation_app;
-- categorize_all refreshes the materialized views, which needs ownership.
ALTER MATERIALIZED VIEW segmentation.segment_summary OWNER TO segmentation_admin;
ALTER MATERIALIZED VIEW segmentation.segment_transitions OWNER TO segmentation_admin;
